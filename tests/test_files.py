"""Atomic writes: whole files with the usual mode, and nothing left behind when writing fails."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from pixelforge.files import FILE_MODE, atomic_target
from pixelforge.images import read_settings, save_png
from pixelforge.train.checkpoint import atomic_write_text


def test_finished_files_get_the_mode_open_would_give_not_owner_only(tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("x")  # what open() gives under this process's umask
    png = save_png(Image.new("L", (4, 4)), tmp_path / "a.png", {"seed": 1})
    atomic_write_text(tmp_path / "b.json", "{}")
    expected = stat.S_IMODE(probe.stat().st_mode)
    assert expected == FILE_MODE
    for path in (png, tmp_path / "b.json"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert read_settings(png) == {"seed": 1}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_target(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["data.txt"]
