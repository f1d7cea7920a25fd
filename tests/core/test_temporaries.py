"""Owner-named temporaries: a sweep removes exactly those whose owner process is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from zoomearth.temporaries import (
    HOST_TAG,
    LEGACY_STALE_AFTER_S,
    is_temporary_name,
    owner_alive,
    stale_temporaries,
    sweep_stale_temporaries,
    temporary_sibling,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_sibling_names_host_and_pid(tmp_path: Path) -> None:
    tmp = temporary_sibling(tmp_path / "mask.tif")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(f".mask.tif.tmp-{HOST_TAG}-{os.getpid()}-")
    assert tmp.suffix == ".tif"
    assert is_temporary_name(tmp.name)
    assert not is_temporary_name("mask.tif")
    assert temporary_sibling(tmp_path / "a.tif") != temporary_sibling(tmp_path / "a.tif")


def test_sweep_removes_dead_owner_keeps_live_foreign_and_real_files(tmp_path: Path) -> None:
    dead = _dead_pid()
    assert not owner_alive(dead)
    dead_tmp = tmp_path / f".out.tif.tmp-{HOST_TAG}-{dead}-abcdef123456.tif"
    dead_side = tmp_path / f".out.tif.tmp-{HOST_TAG}-{dead}-abcdef123456.tif.aux.xml"
    live_tmp = temporary_sibling(tmp_path / "live.tif")
    foreign = tmp_path / f".out.tif.tmp-00000000-{dead}-abcdef123456.tif"
    if HOST_TAG == "00000000":  # pragma: no cover - astronomically unlikely
        foreign = tmp_path / f".out.tif.tmp-11111111-{dead}-abcdef123456.tif"
    real = tmp_path / "out.tif"
    for p in (dead_tmp, dead_side, live_tmp, foreign, real):
        p.write_bytes(b"x" * 10)
    assert stale_temporaries(tmp_path) == sorted([dead_tmp, dead_side])
    swept = sweep_stale_temporaries(tmp_path)
    assert (swept.files, swept.bytes) == (2, 20)
    assert not dead_tmp.exists() and not dead_side.exists()
    assert live_tmp.exists() and foreign.exists() and real.exists()


def test_sweep_recursive_and_legacy_age(tmp_path: Path) -> None:
    sub = tmp_path / "run-1"
    sub.mkdir()
    dead = _dead_pid()
    nested = sub / f".x.png.tmp-{HOST_TAG}-{dead}-0123456789ab.png"
    old_legacy = sub / ".x.png.tmp-0123456789ab.png"
    new_legacy = sub / ".y.png.tmp-0123456789ab.png"
    for p in (nested, old_legacy, new_legacy):
        p.write_bytes(b"1")
    past = time.time() - LEGACY_STALE_AFTER_S - 60
    os.utime(old_legacy, (past, past))
    assert sweep_stale_temporaries(tmp_path).files == 0  # not recursive
    assert sweep_stale_temporaries(tmp_path, recursive=True).files == 2
    assert not nested.exists() and not old_legacy.exists() and new_legacy.exists()


def test_sweep_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert sweep_stale_temporaries(tmp_path / "nope").files == 0
