"""Offline provisioning of the NLTK corpora that TextAttack and the synonym corruptions need.

Nothing here uses NLTK's downloader. ``prune-audit resources`` (run by ``make`` during
set-up) writes an ``nltk_data`` directory with:

* ``corpora/stopwords/english``: NLTK's own 179-word English stop-word list, shipped with
  this package (``audit/resources_data/nltk_stopwords_english``, attribution in
  ``NLTK_STOPWORDS.md`` next to it) and copied byte for byte. TextAttack's recipes read
  it through ``StopwordModification()``: words in it are never attacked, so it must be
  NLTK's list (scikit-learn's 318-word list, for one, protects "never", "nothing" and
  "without" and leaves "don't" and "isn't" open). A stop-word file with another content
  counts as missing and is rewritten.
* ``corpora/wordnet/``: the WordNet 3.0 database from Debian's ``wordnet-base`` and
  ``wordnet-sense-index`` packages: taken from ``/usr/share/wordnet`` when they are
  installed, from ``.deb`` files given with ``--wordnet-deb``, or fetched with
  ``apt-get download`` (Debian's package registry, no root needed) and unpacked with
  ``dpkg-deb``. Debian's packages lack the ``lexnames`` table NLTK's reader needs; it
  is written from the WordNet 3.0 specification (``lexnames(5WN)``).

The directory is ``<sys.prefix>/share/nltk_data`` (inside the virtual environment, where
NLTK looks by default) when writable, else ``<cache>/nltk_data``;
:func:`activate` puts it on NLTK's search path either way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from audit.atomic import atomic_dir
from audit.errors import UsageError

log = logging.getLogger(__name__)

WORDNET_FILES = (
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc", "index.sense",
)  # fmt: skip
OPTIONAL_WORDNET_FILES = ("cntlist.rev", "sentidx.vrb", "sents.vrb")
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")

# WordNet 3.0 lexicographer files: number, name, syntactic category (lexnames(5WN)).
LEXNAMES = [
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1",
    "noun.artifact 1", "noun.attribute 1", "noun.body 1", "noun.cognition 1",
    "noun.communication 1", "noun.event 1", "noun.feeling 1", "noun.food 1", "noun.group 1",
    "noun.location 1", "noun.motive 1", "noun.object 1", "noun.person 1", "noun.phenomenon 1",
    "noun.plant 1", "noun.possession 1", "noun.process 1", "noun.quantity 1", "noun.relation 1",
    "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1", "verb.body 2",
    "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2",
    "adj.ppl 3",
]  # fmt: skip

STOPWORDS_FILE = Path(__file__).resolve().parent / "resources_data" / "nltk_stopwords_english"
"""NLTK's English stop-word list as shipped in this package."""
STOPWORDS_SHA256 = "019f104ba2ed07436d05f9cdd3383034ad66014edc27fc651f837e1a038b6451"
"""sha256 of that file (NLTK data ``corpora/stopwords/english``, 179 words; see NLTK_STOPWORDS.md)."""

HOW_TO_PROVIDE = (
    "run `prune-audit resources` (or `make install`); it needs Debian's wordnet-base and "
    "wordnet-sense-index packages (apt-get install them, or pass their .deb files with --wordnet-deb)"
)


def default_dir() -> Path:
    """Where provisioned NLTK data lives (see module docstring)."""
    env = os.environ.get("PRUNE_AUDIT_NLTK_DATA")
    if env:
        return Path(env).expanduser()
    venv_dir = Path(sys.prefix) / "share" / "nltk_data"
    if sys.prefix != sys.base_prefix or venv_dir.exists():
        return venv_dir
    from audit.cache import cache_root

    return cache_root() / "nltk_data"


def status(root: Path | None = None) -> dict[str, bool]:
    """Which resources are present under ``root``."""
    root = root or default_dir()
    wn = root / "corpora" / "wordnet"
    return {
        "stopwords": _sha256(root / "corpora" / "stopwords" / "english") == STOPWORDS_SHA256,
        "wordnet": all((wn / f).is_file() for f in (*WORDNET_FILES, "lexnames")),
    }


def activate(root: Path | None = None) -> Path:
    """Put the provisioned directory first on NLTK's search path; returns it."""
    root = root or default_dir()
    os.environ.setdefault("NLTK_DATA", str(root))
    try:
        import nltk
    except ImportError:  # pragma: no cover - nltk comes with textattack
        return root
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def require(*names: str) -> Path:
    """Activate and check resources; a missing one is a clear :class:`UsageError`."""
    root = activate()
    have = status(root)
    missing = [n for n in names if not have.get(n, False)]
    if missing:
        raise UsageError(
            f"missing NLTK resource(s) {', '.join(missing)} under {root}",
            hint=HOW_TO_PROVIDE,
        )
    return root


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def shipped_stopwords() -> bytes:
    """The shipped NLTK English stop-word list, checked against :data:`STOPWORDS_SHA256`."""
    data = STOPWORDS_FILE.read_bytes()
    if hashlib.sha256(data).hexdigest() != STOPWORDS_SHA256:
        raise UsageError(
            f"{STOPWORDS_FILE} is not NLTK's English stop-word list (sha256 differs)",
            hint="reinstall prune-audit; the package's data file was changed",
        )
    return data


def _write_stopwords(root: Path) -> None:
    data = shipped_stopwords()
    d = root / "corpora" / "stopwords"
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".english-", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, d / "english")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    (d / "README").write_text(
        "NLTK's English stop-word list (nltk_data corpora/stopwords/english, 179 words, sha256 "
        f"{STOPWORDS_SHA256}), copied offline from prune-audit's package data. Cite NLTK: Bird, Klein & Loper "
        "(2009), Natural Language Processing with Python.\n",
        encoding="utf-8",
    )


def _wordnet_from_debs(debs: list[Path], work: Path) -> Path:
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        raise UsageError("dpkg-deb is needed to unpack the WordNet packages", hint=HOW_TO_PROVIDE)
    for deb in debs:
        out = subprocess.run([dpkg, "-x", str(deb), str(work / "x")], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise UsageError(f"cannot unpack {deb}: {out.stderr.strip()}", hint=HOW_TO_PROVIDE)
    return work / "x" / "usr" / "share" / "wordnet"


def _download_debs(work: Path) -> list[Path]:
    apt = shutil.which("apt-get")
    if apt is None:
        raise UsageError("WordNet is not installed and apt-get is not available", hint=HOW_TO_PROVIDE)
    out = subprocess.run(
        [apt, "download", *DEBIAN_PACKAGES], cwd=work, capture_output=True, text=True, timeout=300, check=False
    )
    debs = sorted(work.glob("*.deb"))
    if out.returncode != 0 or len(debs) != len(DEBIAN_PACKAGES):
        raise UsageError(
            f"apt-get download {' '.join(DEBIAN_PACKAGES)} failed: {out.stderr.strip()[-300:]}", hint=HOW_TO_PROVIDE
        )
    return debs


def _install_wordnet(root: Path, source: Path) -> None:
    missing = [f for f in WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise UsageError(f"{source} is not a WordNet 3.0 database (missing {missing})", hint=HOW_TO_PROVIDE)
    dest = root / "corpora" / "wordnet"
    with atomic_dir(dest, prefix=".wordnet-") as tmp:
        for f in (*WORDNET_FILES, *OPTIONAL_WORDNET_FILES):
            if (source / f).is_file():
                shutil.copyfile(source / f, tmp / f)
        (tmp / "lexnames").write_text(
            "".join(f"{i:02d}\t{name.split()[0]}\t{name.split()[1]}\n" for i, name in enumerate(LEXNAMES)),
            encoding="utf-8",
        )
        (tmp / "README").write_text(f"WordNet 3.0 from {source}, provisioned by prune-audit.\n")


def provision(
    root: Path | None = None, *, wordnet_debs: list[Path] | None = None, force: bool = False
) -> dict[str, str]:
    """Write stopwords and WordNet under ``root``; returns what was done per resource."""
    root = root or default_dir()
    (root / "corpora").mkdir(parents=True, exist_ok=True)
    have = status(root)
    done: dict[str, str] = {}
    if force or not have["stopwords"]:
        _write_stopwords(root)
        done["stopwords"] = "NLTK's English list (179 words) written from the package data"
    else:
        done["stopwords"] = "present"
    if force or not have["wordnet"]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if wordnet_debs:
                source = _wordnet_from_debs(list(wordnet_debs), work)
                how = f"unpacked from {', '.join(str(d) for d in wordnet_debs)}"
            elif all(Path("/usr/share/wordnet", f).is_file() for f in ("data.noun", "index.sense")):
                source = Path("/usr/share/wordnet")
                how = "copied from /usr/share/wordnet"
            else:
                debs = _download_debs(work)
                source = _wordnet_from_debs(debs, work)
                how = f"unpacked from Debian's {', '.join(d.name for d in debs)}"
            _install_wordnet(root, source)
        done["wordnet"] = how
    else:
        done["wordnet"] = "present"
    return done
