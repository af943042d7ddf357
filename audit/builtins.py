"""Registers the built-in plugins through the same API third parties use.

Importing a spec module registers its specs; implementations load lazily.
"""

from __future__ import annotations

import audit.deploy.spec  # noqa: F401
import audit.models  # noqa: F401
import audit.pruning.specs  # noqa: F401
import reports  # noqa: F401
import suites.adversarial  # noqa: F401
import suites.bbq  # noqa: F401
import suites.bias  # noqa: F401
import suites.compute  # noqa: F401
import suites.lm  # noqa: F401
import suites.ood  # noqa: F401
import suites.performance  # noqa: F401
import suites.stereotype  # noqa: F401
