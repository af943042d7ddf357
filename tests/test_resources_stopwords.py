"""`prune-audit resources` provisions NLTK's own English stop-word list, from the package, offline.

TextAttack's recipes read the list through ``StopwordModification()``: a word in it is never
attacked. Before, scikit-learn's 318-word list was written in its place, which protected
"never", "nothing" and "without" and left "don't" and "isn't" open to attack.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit import resources

ROOT = Path(__file__).resolve().parent.parent
# The last line of ../shared/data/nltk_stopwords_english/PROVENANCE.md (the list's recorded sha256).
NLTK_ENGLISH_SHA256 = "019f104ba2ed07436d05f9cdd3383034ad66014edc27fc651f837e1a038b6451"
# In scikit-learn's ENGLISH_STOP_WORDS but not in NLTK's list, and the other way round.
ONLY_SKLEARN = ("never", "nothing", "without", "however", "whereas")
ONLY_NLTK = ("don't", "isn't", "won't", "shouldn't", "doesn't")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_list_is_nltks_english_list() -> None:
    assert resources.STOPWORDS_SHA256 == NLTK_ENGLISH_SHA256
    assert _sha(resources.STOPWORDS_FILE) == NLTK_ENGLISH_SHA256
    words = resources.STOPWORDS_FILE.read_text(encoding="utf-8").splitlines()
    assert len(words) == 179 and len(set(words)) == 179
    assert (resources.STOPWORDS_FILE.parent / "NLTK_STOPWORDS.md").is_file()  # its attribution ships with it
    assert "resources_data/*" in (ROOT / "pyproject.toml").read_text()  # and is package data


def test_shipped_list_matches_the_shared_provenance_record(shared_data: Path) -> None:
    d = shared_data / "nltk_stopwords_english"
    recorded = (d / "PROVENANCE.md").read_text(encoding="utf-8").strip().splitlines()[-1].strip()
    assert recorded == NLTK_ENGLISH_SHA256
    assert _sha(d / "english") == recorded
    assert resources.STOPWORDS_FILE.read_bytes() == (d / "english").read_bytes()


def test_cli_provisions_the_list_offline_and_replaces_a_wrong_one(tmp_path: Path) -> None:
    root = tmp_path / "nltk_data"
    stop = root / "corpora" / "stopwords" / "english"
    stop.parent.mkdir(parents=True)
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop.write_text("\n".join(sorted(ENGLISH_STOP_WORDS)) + "\n", encoding="utf-8")  # what older versions wrote
    assert resources.status(root)["stopwords"] is False  # a wrong list counts as missing
    wn = resources.default_dir() / "corpora" / "wordnet"
    if not resources.status(resources.default_dir())["wordnet"]:
        pytest.fail("WordNet was not provisioned by the set-up step (prune-audit resources)")
    code = (
        "import socket, sys\n"
        "def refuse(self, *a, **k): raise SystemExit('network attempted: %r' % (a,))\n"
        "socket.socket.connect = refuse\n"
        "from audit.cli import main\n"
        "sys.exit(main(['resources']))\n"
    )
    # WordNet already present under root (copied), so only the stop words are (re)written
    resources._install_wordnet(root, wn)
    env = {**os.environ, "PRUNE_AUDIT_NLTK_DATA": str(root), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stopwords: NLTK's English list (179 words) written from the package data" in r.stdout
    assert "wordnet: present" in r.stdout
    assert _sha(stop) == NLTK_ENGLISH_SHA256
    assert resources.status(root) == {"stopwords": True, "wordnet": True}
    again = subprocess.run(
        [sys.executable, "-m", "audit", "resources", "--check"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert again.returncode == 0 and "stopwords: present" in again.stdout


def test_textattack_stopword_constraint_sees_nltks_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk
    from nltk.corpus.reader import WordListCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    from suites.adversarial.offline import import_textattack

    import_textattack()  # offline, before the search path is narrowed below
    from textattack.constraints.pre_transformation import StopwordModification
    from textattack.shared import AttackedText

    root = tmp_path / "nltk_data"
    (root / "corpora").mkdir(parents=True)
    resources._write_stopwords(root)
    # a fresh corpus loader on a search path that holds only the provisioned directory
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    monkeypatch.setattr(
        nltk.corpus, "stopwords", LazyCorpusLoader("stopwords", WordListCorpusReader, r"(?!README|\.).*")
    )
    c = StopwordModification()  # TextAttack's constraint, no list given: reads NLTK's corpus
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    nltk_words = set(resources.STOPWORDS_FILE.read_text(encoding="utf-8").split())
    assert c.stopwords == nltk_words
    for w in ONLY_SKLEARN:
        assert w in ENGLISH_STOP_WORDS and w not in c.stopwords
    for w in ONLY_NLTK:
        assert w not in ENGLISH_STOP_WORDS and w in c.stopwords
    # what a recipe may modify: "never" and "without" are open to attack, "the" is not
    text = AttackedText("the plot never works without the actors")
    allowed = {text.words[i] for i in c._get_modifiable_indices(text)}
    assert allowed == {"plot", "never", "works", "without", "actors"}
