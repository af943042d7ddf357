"""Shipped policies (``*.yaml``) and the published JSON Schema (``policy.schema.json``).

Load one by name with ``prune-audit check results.json --policy default``.
"""
