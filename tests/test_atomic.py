"""Atomic saves: the old content survives a failed write, the new one replaces it whole, and the
result has the permissions of an ordinary write (readable by a server running as another user)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adapterkit.atomic import atomic_directory, write_json


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary or old copies left


def test_a_failed_write_leaves_the_previous_directory_untouched(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("complete")
    with pytest.raises(RuntimeError, match="disk full"), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_saved_files_and_folders_follow_the_umask_not_tempfiles_private_modes(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "adapter") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "adapter.safetensors"))  # safetensors writes 0600
            (tmp / "sub").mkdir(mode=0o700)
        write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(previous)
    assert mode(tmp_path / "adapter") == 0o755 and mode(tmp_path / "adapter" / "sub") == 0o755
    assert mode(tmp_path / "adapter" / "adapter.safetensors") == 0o644
    assert mode(tmp_path / "results.json") == 0o644
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}
