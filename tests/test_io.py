"""Atomic file writes."""

from __future__ import annotations


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os
    import stat

    from llm_features.io import write_text_atomic

    target = tmp_path / "out.txt"
    write_text_atomic(target, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    import pytest

    from llm_features.io import atomic_path

    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
