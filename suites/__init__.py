"""Built-in evaluation suites. Each sub-package's ``__init__`` holds the suite's spec
(params and metric declarations, torch-free); the implementation is imported only
when the suite runs.
"""
