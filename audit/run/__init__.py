"""The audit pipeline's parts, split along its seams (:func:`audit.runner.run_audit` drives them).

* :mod:`audit.run.session`: the torch-free pre-flight (policy, model, data, the sweep plan,
  computed once) and the :class:`~audit.run.session.Session` prepared once per run;
* :mod:`audit.run.point`: one sweep point (prune, deploy, every suite; units reused from the store);
* :mod:`audit.run.finish`: the points assembled into the run's result, its limitations, verdict and reports.
"""
