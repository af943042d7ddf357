"""Causal-LM suites (issue 16): the scoring building blocks live in :mod:`suites.lm.scoring`.

No suite is registered yet; the spec and registration come with the model adapter.
"""
