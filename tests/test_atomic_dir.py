"""audit.atomic.atomic_dir: a directory is replaced whole or not at all."""

from __future__ import annotations

import pytest

from audit.atomic import atomic_dir


def test_a_finished_build_replaces_the_old_directory(tmp_path):
    dest = tmp_path / "entry"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (dest / "new.txt").exists()  # nothing shows at dest while building
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no temporary directory left behind


def test_a_failed_build_leaves_the_old_directory_and_no_debris(tmp_path):
    dest = tmp_path / "entry"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(dest) as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
