"""CLI operating-system errors (issue #14 item 6): one clear line, a non-zero exit, no traceback.

Tests run as root, so read-only folders and full disks are simulated in-process by patching the
writer a command calls to raise the ``OSError`` the system would raise.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scene.rasters import write_raster
from zoomearth.cli import SYNTH_MIN_SIZE, main


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"zoomearth {command}: error: ")
    return lines[-1]


def _raise(exc: BaseException):
    def fake(*args, **kwargs):
        raise exc

    return fake


def test_view_read_only_output_folder(tmp_path, monkeypatch, capsys):
    import zoomearth.scene.writing as writing

    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    out = tmp_path / "ro" / "v.png"
    exc = OSError(errno.EROFS, "Read-only file system", str(out))
    monkeypatch.setattr(writing, "write_png", _raise(exc))
    assert main(["view", str(tif), "-o", str(out)]) == 2
    line = _one_error_line(capsys, "view")
    assert "Read-only file system" in line and str(out) in line and "write elsewhere" in line


def test_view_permission_denied(tmp_path, monkeypatch, capsys):
    import zoomearth.scene.writing as writing

    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    out = tmp_path / "v.png"
    monkeypatch.setattr(writing, "write_png", _raise(PermissionError(errno.EACCES, "denied", out)))
    assert main(["view", str(tif), "-o", str(out)]) == 2
    assert "fix its permissions" in _one_error_line(capsys, "view")


def test_view_disk_full(tmp_path, monkeypatch, capsys):
    import zoomearth.scene.writing as writing

    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    exc = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(writing, "write_png", _raise(exc))
    assert main(["view", str(tif), "-o", str(tmp_path / "v.png")]) == 2
    assert "free space" in _one_error_line(capsys, "view")


def test_view_output_is_existing_directory(tmp_path, capsys):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    (tmp_path / "d").mkdir()
    assert main(["view", str(tif), "-o", str(tmp_path / "d")]) == 2
    line = _one_error_line(capsys, "view")
    assert "is a folder" in line and "give a file name" in line


def test_view_output_under_a_file_real_error(tmp_path, capsys):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    (tmp_path / "f.txt").write_text("x")
    assert main(["view", str(tif), "-o", str(tmp_path / "f.txt" / "v.png")]) == 2
    line = _one_error_line(capsys, "view")
    assert "f.txt" in line and ("already exists" in line or "not a folder" in line)


def test_synth_read_only_and_disk_full(tmp_path, monkeypatch, capsys):
    import zoomearth.scene.synth as synth

    out = str(tmp_path / "s.tif")
    monkeypatch.setattr(synth, "generate_scene", _raise(OSError(errno.EROFS, "Read-only", out)))
    assert main(["synth", out, "--size", "64"]) == 2
    assert "read-only" in _one_error_line(capsys, "synth")
    monkeypatch.setattr(synth, "generate_scene", _raise(OSError(errno.ENOSPC, "No space", out)))
    assert main(["synth", out, "--size", "64"]) == 2
    assert "no space left" in _one_error_line(capsys, "synth")


def test_synth_output_is_existing_directory(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--size", "64"]) == 2
    assert "is a folder" in _one_error_line(capsys, "synth")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--size", "0", f"at least {SYNTH_MIN_SIZE}"),
        ("--size", "-5", f"at least {SYNTH_MIN_SIZE}"),
        ("--size", "1", f"at least {SYNTH_MIN_SIZE}"),
        ("--size", "big", "whole number"),
        ("--clouds", "5", "from 0 to 1"),
        ("--clouds", "nan", "from 0 to 1"),
        ("--clouds", "inf", "from 0 to 1"),
        ("--clouds", "-0.1", "from 0 to 1"),
        ("--seed", "-1", ">= 0"),
    ],
)
def test_synth_argument_validation(tmp_path, capsys, option, value, needle):
    argv = ["synth", str(tmp_path / "s.tif"), "--size", "64", f"{option}={value}"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and needle in err and "Traceback" not in err
    assert not (tmp_path / "s.tif").exists()


def test_synth_min_size_matches_generator():
    from zoomearth.scene.synth import MIN_SIZE

    assert SYNTH_MIN_SIZE == MIN_SIZE


def test_tool_read_only_and_disk_full(tmp_path, monkeypatch, capsys):
    import zoomearth.tools as tools
    import zoomearth.tools.base as base

    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    out = str(tmp_path / "run")
    monkeypatch.setattr(base, "absolute_dir", _raise(OSError(errno.EROFS, "Read-only", out)))
    assert main(["tool", "denoise", str(tif), "--out", out]) == 2
    assert "read-only" in _one_error_line(capsys, "tool")
    monkeypatch.undo()
    monkeypatch.setattr(tools, "run_tool", _raise(OSError(errno.ENOSPC, "No space", out)))
    assert main(["tool", "denoise", str(tif), "--out", out]) == 2
    assert "no space left" in _one_error_line(capsys, "tool")


def test_ask_read_only_data_dir_sqlite(tmp_path, monkeypatch, capsys):
    import zoomearth.api as api

    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    exc = sqlite3.OperationalError("attempt to write a readonly database")
    monkeypatch.setattr(api, "Agent", _raise(exc))
    argv = [
        "--set",
        f"data_dir={tmp_path}",
        "ask",
        str(tif),
        "how many ships",
        "--planner",
        "rules",
    ]
    assert main(argv) == 2
    line = _one_error_line(capsys, "ask")
    assert "readonly database" in line and "data_dir" in line


def test_ask_read_only_out_folder(tmp_path, monkeypatch, capsys):
    import zoomearth.api as api

    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    monkeypatch.setattr(api, "Agent", _raise(PermissionError(errno.EACCES, "denied", "/ro")))
    assert main(["ask", str(tif), "q", "--planner", "rules", "--out", "/ro"]) == 2
    assert "/ro" in _one_error_line(capsys, "ask")


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    import zoomearth.api as api
    import zoomearth.scene.synth as synth

    out = str(tmp_path / "s.tif")
    monkeypatch.setattr(synth, "generate_scene", _raise(OSError(errno.ECONNRESET, "reset")))
    with pytest.raises(OSError):
        main(["synth", out, "--size", "64"])
    monkeypatch.setattr(api, "Agent", _raise(sqlite3.OperationalError("no such table: x")))
    with pytest.raises(sqlite3.OperationalError):
        main(["--set", f"data_dir={tmp_path}", "ask", out, "q", "--planner", "rules"])


@pytest.mark.parametrize("command", ["view", "ask"])
def test_non_utf8_file_name(tmp_path, capsys, command):
    name = str(tmp_path) + "/n\udcff.tif"
    argv = (
        ["view", name, "-o", str(tmp_path / "v.png")] if command == "view" else ["ask", name, "q"]
    )
    assert main(argv) == 2
    line = _one_error_line(capsys, command)
    assert "not valid UTF-8" in line and "\\udcff" in line


def test_non_utf8_question(tmp_path, capsys):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    assert main(["ask", str(tif), "ships \udcff?", "--planner", "rules"]) == 2
    assert "argument question is not valid UTF-8" in _one_error_line(capsys, "ask")


def test_non_utf8_met_by_an_encoder(tmp_path, monkeypatch, capsys):
    import zoomearth.scene.synth as synth

    exc = UnicodeEncodeError("utf-8", "a\udcff", 1, 2, "surrogates not allowed")
    monkeypatch.setattr(synth, "generate_scene", _raise(exc))
    assert main(["synth", str(tmp_path / "s.tif"), "--size", "64"]) == 2
    assert "not valid UTF-8" in _one_error_line(capsys, "synth")


# ----------------------------------------------------------------------------------------------
# temporaries: cache list/clear, sweeps at start, names in error lines, empty run folders
# ----------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _cache_temporaries(tmp_path):
    """A stale (dead owner) and a live (the test runner's parent) temporary in the scene cache."""
    import os

    from zoomearth.temporaries import HOST_TAG

    root = tmp_path / "cache" / "scenes"
    root.mkdir(parents=True)
    stale = root / f".k1.tif.tmp-{HOST_TAG}-{_dead_pid()}-0123456789ab.tif"
    live = root / f".k2.tif.tmp-{HOST_TAG}-{os.getppid()}-0123456789ab.tif"
    stale.write_bytes(b"s" * 1000)
    live.write_bytes(b"l" * 300)
    return stale, live


def test_cache_list_shows_temporaries_and_clear_removes_the_stale_ones(tmp_path, capsys):
    import json

    stale, live = _cache_temporaries(tmp_path)
    flags = ["--set", f"cache_dir={tmp_path / 'cache'}"]
    assert main([*flags, "cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "temporaries: 2 file(s), 1,300 bytes: 1 stale (1,000 bytes, their process is gone" in out
    assert "1 being written by a running process (300 bytes)" in out
    assert stale.exists() and live.exists()  # listing changes nothing

    assert main([*flags, "cache", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # the entries, as scripts read them

    assert main([*flags, "cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 stale temporary file(s) (1,000 bytes) left by processes that are gone" in out
    assert "kept 1 temporary file(s) (300 bytes) of running processes" in out
    assert not stale.exists() and live.exists()


def test_commands_that_write_sweep_the_scene_cache_first(tmp_path, capsys):
    stale, live = _cache_temporaries(tmp_path)
    argv = ["--set", f"cache_dir={tmp_path / 'cache'}", "--set", f"data_dir={tmp_path / 'd'}"]
    assert main([*argv, "synth", str(tmp_path / "s.tif"), "--size", "64"]) == 0
    err = capsys.readouterr().err
    assert "zoomearth synth: removed 1 stale temporary file(s) (1,000 bytes) left in " in err
    assert not stale.exists() and live.exists()
    # Nothing left to sweep: no note the second time.
    assert main([*argv, "synth", str(tmp_path / "s.tif"), "--size", "64"]) == 0
    assert "stale temporary" not in capsys.readouterr().err


def test_error_lines_name_the_output_not_its_temporary(tmp_path, monkeypatch, capsys):
    import zoomearth.scene.synth as synth

    out = tmp_path / "s.tif"
    hidden = tmp_path / ".s.tif.tmp-0a7c9cdf-4242-d0b75cede5a5.tif"
    exc = OSError(errno.EACCES, "Permission denied", str(hidden))
    monkeypatch.setattr(synth, "generate_scene", _raise(exc))
    assert main(["synth", str(out), "--size", "64"]) == 2
    line = _one_error_line(capsys, "synth")
    assert f"({out})" in line and ".tmp" not in line


def test_failed_tool_removes_the_run_folder_it_made(tmp_path, capsys):
    import numpy as np

    tif = write_raster(tmp_path / "empty.tif", 64, 48, 3, data=np.zeros((3, 48, 64), np.uint8),
                       nodata=0)  # fmt: skip
    run = tmp_path / "run"
    assert main(["tool", "denoise", str(tif), "--out", str(run)]) == 2
    assert "no valid" in _one_error_line(capsys, "tool").lower()
    assert not run.exists()
    # A folder the user already had stays, even when the call leaves nothing in it.
    run.mkdir()
    assert main(["tool", "denoise", str(tif), "--out", str(run)]) == 2
    capsys.readouterr()
    assert run.is_dir() and list(run.iterdir()) == []


def test_a_reader_that_goes_away_is_not_a_traceback(tmp_path: Path) -> None:
    # `zoomearth info X | head -c 10`: the pipe closes early. Unix tools stop quietly (141).
    from zoomearth.scene.synth import generate_scene

    scene = generate_scene(tmp_path / "s.tif", 600, seed=1).image_path
    for command in (["tools", "--json"], ["info", str(scene)]):
        proc = subprocess.Popen([sys.executable, "-m", "zoomearth.cli", *command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.close()  # gone before the command (still importing) prints anything
        _, err = proc.communicate(timeout=120)
        assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
        assert proc.returncode == 141
