"""Pruning methods. Specs (torch-free) live in :mod:`audit.pruning.specs`; each
implementation module imports torch and is loaded only when its method runs.
"""
