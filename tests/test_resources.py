from __future__ import annotations

from pathlib import Path

import pytest

from audit import resources
from audit.errors import UsageError


def test_missing_resources_name_what_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNE_AUDIT_NLTK_DATA", str(tmp_path / "empty"))
    assert resources.status() == {"stopwords": False, "wordnet": False}
    with pytest.raises(UsageError) as exc:
        resources.require("stopwords", "wordnet")
    assert "missing NLTK resource(s) stopwords, wordnet" in str(exc.value)
    assert "prune-audit resources" in exc.value.hint and "wordnet-base" in exc.value.hint


@pytest.mark.filterwarnings("ignore:The multilingual functions")
def test_provisioned_corpora_load_with_nltk_readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nltk
    from nltk.corpus.reader import WordListCorpusReader
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = tmp_path / "nltk_data"
    (root / "corpora").mkdir(parents=True)
    resources._write_stopwords(root)
    source = resources.default_dir() / "corpora" / "wordnet"  # provisioned by `make` from Debian's packages
    if not resources.status(resources.default_dir())["wordnet"]:
        pytest.fail("WordNet was not provisioned by the set-up step (prune-audit resources)")
    resources._install_wordnet(root, source)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.setenv("NLTK_DATA", str(root))
    assert resources.activate(root) == root and nltk.data.path[0] == str(root)
    assert resources.status(root) == {"stopwords": True, "wordnet": True}
    words = WordListCorpusReader(str(root / "corpora" / "stopwords"), ["english"]).words("english")
    assert "the" in words and "and" in words
    wn = WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)
    lemmas = {name for s in wn.synsets("happy") for name in s.lemma_names()}
    assert {"glad", "felicitous"} <= lemmas
    assert wn.synsets("dog")[0].lexname() == "noun.animal"  # the lexnames table we write is right


def test_not_a_wordnet_directory_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "corpora").mkdir()
    with pytest.raises(UsageError, match="not a WordNet 3.0 database"):
        resources._install_wordnet(tmp_path, tmp_path)
