"""Disk space and failed writes (issue #14 item 6): refuse early, say "no space", leave nothing.

How a full disk is produced here (no small tmpfs without root, and tests may run as root):

* Refusals before writing use the real free space: the outputs asked for (terabytes) exceed any
  disk, so ``statvfs`` answers for real.
* The real GDAL and Python write paths are driven into failure in a subprocess with
  ``RLIMIT_FSIZE`` (SIGXFSZ ignored, so writes fail with EFBIG as on a full device): the writer
  must notice (GDAL only prints the failure), stop, remove its temporary and say so in one line.
* ENOSPC itself is injected in-process at the OS layer (a write that raises
  ``OSError(ENOSPC)``, a device whose free space drops to zero mid-write), to test the mapping
  to "No space left on the device holding DIR".
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio

from zoomearth.cli import main
from zoomearth.errors import OutputWriteError
from zoomearth.scene import writing
from zoomearth.scene.writing import (
    TiledRasterWriter,
    atomic_path,
    estimate_output_bytes,
    mask_temporary_names,
    tiff_block_problem,
    write_png,
)
from zoomearth.temporaries import is_temporary_name

HANG_S = 180.0
NOT_ENOUGH = re.compile(
    r"Not enough free space in (?P<dir>\S+): this output needs about (?P<need>[\d.]+ [kMG]B), "
    r"(?P<free>[\d.]+ [kMG]B) are free\. Free space or choose another output folder"
)


def _settings(tmp: Path) -> list[str]:
    return ["--set", f"data_dir={tmp / 'data'}", "--set", f"cache_dir={tmp / 'cache'}"]


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith(f"zoomearth {command}: error: "), err
    return lines[-1]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def _gb(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"kB": 1e-6, "MB": 1e-3, "GB": 1.0}[unit]


# ----------------------------------------------------------------------------------------------
# refused before anything is written
# ----------------------------------------------------------------------------------------------
def test_synth_above_max_image_pixels_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "out" / "big.tif"
    assert main([*_settings(tmp_path), "synth", str(out), "--size", "300000"]) == 2
    line = _one_error_line(capsys, "synth")
    assert "300,000 x 300,000 px scene has 90,000,000,000 pixels" in line
    assert "above the limit of 20,000,000,000 (setting max_image_pixels" in line
    assert "--set max_image_pixels=" in line
    assert not (tmp_path / "out").exists()


def test_synth_larger_than_the_free_space_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "out" / "big.tif"
    argv = [
        *_settings(tmp_path), "--set", "max_image_pixels=10000000000000",
        "synth", str(out), "--size", "3000000",
    ]  # fmt: skip
    assert main(argv) == 2
    line = _one_error_line(capsys, "synth")
    match = NOT_ENOUGH.search(line)
    assert match, line
    # The folder named is where the output goes; the figures are the estimate and statvfs.
    assert match["dir"] == str(out.parent)
    assert _gb(match["need"]) > _gb(match["free"])
    usage = shutil.disk_usage(tmp_path)
    assert _gb(match["free"]) <= usage.total / 1e9
    assert not (tmp_path / "out").exists()


def test_tiled_writer_refuses_an_output_larger_than_the_free_space(tmp_path):
    dest = tmp_path / "sub" / "huge.tif"
    writer = TiledRasterWriter(dest, width=2_000_000, height=2_000_000, count=3, dtype="uint8")
    assert writer.estimated_bytes > shutil.disk_usage(tmp_path).total
    with pytest.raises(OutputWriteError) as info, writer:
        pytest.fail("the writer must not open")
    assert NOT_ENOUGH.search(str(info.value)), info.value
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # not even the folder


@pytest.mark.parametrize("compress", ["deflate", "jpeg"])
def test_estimate_bounds_the_worst_case_of_each_codec(tmp_path, compress):
    # Uniform noise is what neither DEFLATE nor JPEG can compress: the estimate must still hold.
    data = np.random.default_rng(0).integers(0, 256, (3, 1024, 1024), dtype=np.uint8)
    out = tmp_path / f"noise-{compress}.tif"
    with TiledRasterWriter(out, width=1024, height=1024, count=3, dtype="uint8",
                           compress=compress) as w:  # fmt: skip
        w.write(data, (0, 0, 1024, 1024))
    size = out.stat().st_size
    estimate = estimate_output_bytes(1024, 1024, 3, "uint8", compress=compress)
    assert size <= estimate
    assert estimate <= 4 * size  # an upper estimate, not a wild one


# ----------------------------------------------------------------------------------------------
# ENOSPC while writing (injected at the OS layer)
# ----------------------------------------------------------------------------------------------
def test_enospc_in_an_atomic_write_names_the_output_and_leaves_the_old_one(tmp_path, monkeypatch):
    final = tmp_path / "preview.png"
    final.write_bytes(b"old")
    real_write_bytes = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[:10])  # a partial file, as a full device leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OutputWriteError) as info:
        write_png(final, np.zeros((8, 8, 3), np.uint8))
    text = str(info.value)
    assert text.startswith(f"No space left on the device holding {tmp_path}: free space and run")
    assert str(final) in text and ".tmp" not in text
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert final.read_bytes() == b"old"
    assert _files(tmp_path) == ["preview.png"]


def test_device_filling_up_mid_stream_stops_the_writer_at_once(tmp_path, monkeypatch):
    out = tmp_path / "out.tif"
    tile = np.full((1, 256, 256), 7, np.uint8)
    free = {"bytes": 10**12}
    monkeypatch.setattr(writing, "free_bytes", lambda directory: free["bytes"])
    writes = 0
    with pytest.raises(OutputWriteError) as info:
        with TiledRasterWriter(out, width=1024, height=1024, count=1, dtype="uint8") as w:
            for row in range(0, 1024, 256):
                w.write(tile, (0, row, 256, 256))
                writes += 1
                free["bytes"] = 0  # another process filled the disk
    assert writes == 1  # the write after the device filled up is refused
    assert str(info.value).startswith(f"No space left on the device holding {tmp_path}")
    assert ".tmp" not in str(info.value)
    assert _files(tmp_path) == []


def test_gdal_errors_name_the_output_not_the_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out.tif"

    def refuse(path, mode="r", **kwargs):
        raise rasterio.errors.RasterioIOError(f"{path}: Input/output error")

    monkeypatch.setattr(writing.rasterio, "open", refuse)
    with (
        pytest.raises(OutputWriteError) as info,
        TiledRasterWriter(out, width=64, height=64, count=1, dtype="uint8"),
    ):
        pass
    text = str(info.value)
    assert f"Writing {out} failed ({out}: Input/output error)" in text
    assert ".tmp" not in text
    assert _files(tmp_path) == []


def test_mask_temporary_names_is_linear_and_exact():
    tmp = f"/runs/t/.a b.tif.tmp-0a7c9cdf-{os.getpid()}-d0b75cede5a5.tif"
    assert mask_temporary_names(f"cannot write {tmp}: x") == "cannot write /runs/t/a b.tif: x"
    side = "/r/.m.tif.tmp-0a7c9cdf-12-d0b75cede5a5.tif.aux.xml and /r/.n.png.tmp-9b1c0e123456.png"
    assert mask_temporary_names(side) == "/r/m.tif and /r/n.png"
    assert mask_temporary_names("scene.tif.tmp.backup") == "scene.tif.tmp.backup"
    # Adversarial text: long runs of dots and near-misses, well within a hang-only bound.
    for text in ("." * 100_000, ".a.tmp-" * 15_000, ("." + "x" * 300 + ".tmp") * 300):
        assert mask_temporary_names(text) == text


# ----------------------------------------------------------------------------------------------
# the real write paths, driven into failure by RLIMIT_FSIZE in a subprocess
# ----------------------------------------------------------------------------------------------
def _limited(limit: int):
    def preexec() -> None:
        # SIGXFSZ would kill the process; ignored, a write past the limit fails with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return preexec


def _run_limited(argv: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=HANG_S, preexec_fn=_limited(limit)
    )


def _last_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_synth_hitting_the_file_size_limit_fails_cleanly(tmp_path):
    out = tmp_path / "scene.tif"
    argv = [sys.executable, "-m", "zoomearth.cli", *_settings(tmp_path), "synth", str(out),
            "--size", "4096", "--clouds", "0.3"]  # fmt: skip
    proc = _run_limited(argv, tmp_path, 1_000_000)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = _last_line(proc.stderr)
    # GDAL itself only prints "_tiffWriteProc: File too large." and goes on; the writer notices.
    assert line == (
        f"zoomearth synth: error: {out} reached this process's file size limit of 1 MB "
        "(ulimit -f): raise the limit or write a smaller output; it was not written."
    )
    assert [n for n in _files(tmp_path) if n.startswith("scene") or is_temporary_name(n)] == []


def test_tool_hitting_the_file_size_limit_says_so_not_reread(tmp_path):
    # The first file over the limit may be the output or the tool's tile cache (tools/base.py,
    # uncompressed tiles): either way one line that names the size limit, never "re-download".
    from zoomearth.scene.synth import generate_scene

    scene = generate_scene(tmp_path / "scene.tif", 1024, seed=2).image_path
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "zoomearth.cli", *_settings(tmp_path), "tool", "denoise",
            str(scene), "--out", str(run)]  # fmt: skip
    before = scene.read_bytes()
    proc = _run_limited(argv, tmp_path, 400_000)
    assert proc.returncode == 2, proc.stderr
    line = _last_line(proc.stderr)
    assert line.startswith("zoomearth tool: error: Tool 'denoise' failed: ")
    assert "file size limit" in line or "File too large" in line, line
    assert "re-download" not in line and ".tmp" not in line
    # No output and no temporary (the tile cache's own resumable state under .tiles may stay).
    assert not run.exists() or [p.name for p in run.iterdir() if p.is_file()] == []
    assert [n for n in _files(tmp_path) if is_temporary_name(n)] == []
    assert scene.read_bytes() == before


def test_python_writes_hitting_the_limit_become_one_output_error(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from zoomearth.errors import OutputWriteError
        from zoomearth.scene.writing import write_png
        rng = np.random.default_rng(0)
        try:
            write_png(sys.argv[1], rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
        except OutputWriteError as exc:
            print(exc.errno, exc)
        """
    )
    out = tmp_path / "noise.png"
    proc = _run_limited([sys.executable, "-c", code, str(out)], tmp_path, 100_000)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{errno.EFBIG} {out} reached this process's file size limit of 100 kB (ulimit -f): "
        "raise the limit or write a smaller output; it was not written."
    )
    assert _files(tmp_path) == []


def test_truncated_or_foreign_files_fail_the_block_check(tmp_path):
    good = tmp_path / "good.tif"
    noise = np.random.default_rng(1).integers(0, 256, (3, 512, 1024), np.uint8)
    with TiledRasterWriter(good, width=1024, height=512, count=3, dtype="uint8") as w:
        w.write(noise, (0, 0, 1024, 512))
    assert tiff_block_problem(good) is None
    data = good.read_bytes()
    # Cut where a full disk would have stopped the file: inside the tile data.
    for keep in (len(data) // 3, 2 * len(data) // 3):
        cut = tmp_path / f"cut{keep}.tif"
        cut.write_bytes(data[:keep])
        assert tiff_block_problem(cut) is not None
    png = tmp_path / "x.tif"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert tiff_block_problem(png) == "no TIFF header"


def test_atomic_rename_onto_a_folder_names_the_output(tmp_path):
    final = tmp_path / "out.png"
    final.mkdir()
    with pytest.raises(IsADirectoryError) as info, atomic_path(final) as tmp:
        tmp.write_bytes(b"x")
    assert info.value.filename == str(final) and info.value.filename2 is None
    assert ".tmp" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
