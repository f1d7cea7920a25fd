"""Tools under bad conditions: degenerate rasters, a full disk, failures, preflight checks.

* A region without a valid pixel (all NaN, all +-Inf, all nodata) is refused by ``denoise`` and
  ``cloud_removal`` with one clear message; Inf pixels among valid ones are kept, never computed.
* A full disk during a tool says "no space left on the device holding RUN_DIR; free space and
  resume", never "cannot read ... re-download it", and never shows an internal temporary name. The
  end-to-end test fills a real (size-limited) tmpfs, then frees space and resumes from the kept
  tiles.
* ``Tool.check`` runs before ``run`` in ``run_tool`` and alone in ``check_tool_call``.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.tools.helpers import write_array
from zoomearth.errors import OutputWriteError, SceneReadError
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.temporaries import temporary_sibling
from zoomearth.tools import (
    Tool,
    ToolContext,
    ToolFailure,
    ToolInputError,
    ToolResult,
    run_tool,
)
from zoomearth.tools.base import NO_SPACE_TEMPLATE, check_tool_call
from zoomearth.tools.cloud_removal import CloudRemoval
from zoomearth.tools.denoise import Denoise
from zoomearth.tools.edit import Edit
from zoomearth.tools.segmentation import Segmentation

ENTRY = "import sys; from zoomearth.cli import main; sys.exit(main())"
REPO = Path(__file__).resolve().parents[2]


_write = functools.partial(write_array, rgb=True)



def _zoomearth(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


# ----------------------------------------------------------------------------------------------
# Degenerate rasters
# ----------------------------------------------------------------------------------------------
FILLS = {
    "nan": (np.nan, None),
    "inf": (np.inf, None),
    "-inf": (-np.inf, None),
    "nodata": (-9999.0, -9999.0),
}


@pytest.mark.parametrize("fill", sorted(FILLS))
@pytest.mark.parametrize("tool", [Denoise, CloudRemoval, Segmentation, Edit])
def test_region_without_valid_pixels_is_refused_clearly(tmp_path, settings, tool, fill):
    value, nodata = FILLS[fill]
    path = _write(tmp_path / "in.tif", np.full((3, 64, 64), value, np.float32), nodata=nodata)
    before = path.read_bytes()
    run_dir = tmp_path / "run"
    args = {"instruction": "remove the car"} if tool is Edit else {}
    with Scene.open(path, settings=settings, progress=False) as scene:
        ctx = ToolContext(scene=scene, run_dir=run_dir, settings=settings)
        with pytest.raises(ToolInputError) as info:
            run_tool(tool, ctx, args)
    assert info.value.code == "no_valid_pixels"
    assert str(info.value) == (
        f"Tool '{tool.name}': the region [0, 0, 64, 64] has no valid pixels "
        "(all nodata/NaN/Inf); choose another region."
    )
    assert not run_dir.exists()  # the refused call left no (empty) folder
    assert path.read_bytes() == before


def test_infinite_pixels_among_valid_ones_are_kept_not_computed(tmp_path, settings):
    rng = np.random.default_rng(0)
    data = (0.3 + 0.05 * rng.standard_normal((3, 96, 96))).astype(np.float32)
    data[:, 40:60, 60:80] = 0.95  # a white cloud for cloud_removal to fill
    data[:, 10:14, 20:30] = np.inf
    data[1, 50, 50] = -np.inf
    path = _write(tmp_path / "in.tif", data)
    bad = ~np.isfinite(data).all(axis=0)
    with Scene.open(path, settings=settings, progress=False) as scene:
        for tool in (Denoise, CloudRemoval):
            ctx = ToolContext(scene=scene, run_dir=tmp_path / tool.name, settings=settings)
            outcome = run_tool(tool, ctx, {"preview": False})
            json.dumps(outcome.data, allow_nan=False)  # finite statistics
            raster = next(a for a in outcome.artifacts if a.kind == "raster")
            with rasterio.open(raster.path) as ds:
                out = ds.read()
            assert np.array_equal(out[:, bad], data[:, bad])  # source values kept
            assert np.isfinite(out[:, ~bad]).all()
            changed = (out != data).any(axis=0)
            assert changed.any() and not changed[bad].any()  # the rest was processed
    masks = [a for a in outcome.artifacts if a.path.endswith("cloudmask.tif")]
    with rasterio.open(masks[0].path) as ds:
        assert (ds.read(1)[bad] == 255).all()  # cloud_removal marks them nodata


def test_cli_all_inf_raster_is_one_clear_line(tmp_path):
    path = _write(tmp_path / "inf.tif", np.full((1, 32, 32), np.inf, np.float32))
    proc = _zoomearth("tool", "denoise", str(path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "zoomearth tool: error: Tool 'denoise': the region [0, 0, 32, 32] has no valid pixels "
        "(all nodata/NaN/Inf); choose another region."
    ]


# ----------------------------------------------------------------------------------------------
# Failures: full disk, writer errors, temporary names
# ----------------------------------------------------------------------------------------------
class _Breaks(Tool):
    """Writes a temporary beside its output, then fails the way ``how`` says (test tool)."""

    name = "breaks"
    description = "Fails on purpose (test tool)."
    how = "enospc"

    def run(self, ctx, args):
        out = ctx.output_path("out.tif")
        tmp = temporary_sibling(out)
        tmp.write_bytes(b"partial")
        try:
            if self.how == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
            if self.how == "read_after_enospc":
                try:
                    raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
                except OSError:
                    # What Scene.read says when GDAL's block cache flushes our output during a
                    # read of the input (the cause is kept as the context only).
                    raise SceneReadError(
                        f"Reading pixels of {ctx.scene.path} failed in window [0, 0, 8, 8] "
                        "(write failed). The file may be truncated or corrupt; re-download or "
                        "re-export it."
                    ) from None
            if self.how == "writer":
                raise OutputWriteError(
                    f"No space left on the device holding {ctx.run_dir}: free space and run "
                    f"again ({out} was not written)."
                )
            raise RuntimeError(f"GDAL could not finish {tmp}")
        finally:
            tmp.unlink()
        return ToolResult(text="never")


@pytest.fixture()
def small_scene(tmp_path, settings):
    from tests.scene.rasters import write_raster

    path = write_raster(tmp_path / "in.tif", 32, 32, 3)
    with Scene.open(path, settings=settings, progress=False) as scene:
        yield scene


@pytest.mark.parametrize("how", ["enospc", "read_after_enospc"])
def test_full_disk_says_no_space_and_resume(tmp_path, settings, small_scene, how, monkeypatch):
    monkeypatch.setattr(_Breaks, "how", how)
    run_dir = tmp_path / "run"
    ctx = ToolContext(scene=small_scene, run_dir=run_dir, settings=settings)
    with pytest.raises(ToolFailure) as info:
        run_tool(_Breaks, ctx)
    message = str(info.value)
    assert message == NO_SPACE_TEMPLATE.format(tool="breaks", run_dir=run_dir.resolve(), kept="")
    assert "no space left on the device holding" in message and "free space and resume" in message
    assert "re-download" not in message and ".tmp-" not in message


def test_writer_message_passes_through_unchanged(tmp_path, settings, small_scene, monkeypatch):
    monkeypatch.setattr(_Breaks, "how", "writer")
    run_dir = tmp_path / "run"
    ctx = ToolContext(scene=small_scene, run_dir=run_dir, settings=settings)
    with pytest.raises(ToolFailure) as info:
        run_tool(_Breaks, ctx)
    # Exactly the writer's message: not wrapped in "Tool 'breaks' failed: OutputWriteError: ".
    assert str(info.value) == str(info.value.__cause__)
    assert isinstance(info.value.__cause__, OutputWriteError)
    assert str(info.value).startswith(
        f"No space left on the device holding {run_dir.resolve()}: free space and run again ("
    )


def test_failure_messages_never_show_temporary_names(tmp_path, settings, small_scene, monkeypatch):
    monkeypatch.setattr(_Breaks, "how", "other")
    ctx = ToolContext(scene=small_scene, run_dir=tmp_path / "run", settings=settings)
    with pytest.raises(ToolFailure) as info:
        run_tool(_Breaks, ctx)
    message = str(info.value)
    assert ".tmp-" not in message
    assert message.startswith("Tool 'breaks' failed: RuntimeError: GDAL could not finish ")
    assert message.endswith("-breaks-out.tif")  # the output it was writing, by its final name


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm and tmpfs (user namespaces)")
def test_real_full_disk_then_free_space_and_resume_from_kept_tiles(tmp_path):
    """A 44 MB tmpfs fills during ``zoomearth tool denoise``; after growing it, the same command
    resumes from the finished tiles and writes the same output as a run on a roomy disk.

    float32 noise, so that neither the output (24 MB) nor the kept tiles (27 MB) compress: the
    free-space check before the run (about 41 MB needed) passes, and the disk fills during it.
    """
    rng = np.random.default_rng(0)
    image = _write(
        tmp_path / "big.tif", rng.normal(100, 50, (3, 1500, 1500)).astype(np.float32)
    )
    ref = _zoomearth(
        "tool", "denoise", str(image), "--out", str(tmp_path / "ref"), "--json",
        "--args", '{"preview": false}', "--set", "tool_tile_side=256",
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = mnt / "run"
    cmd = " ".join(
        [
            sys.executable, "-c", f"'{ENTRY}'", "tool", "denoise", str(image), "--out", str(run),
            "--args", "'{\"preview\": false}'", "--set", "tool_tile_side=256",
        ]
    )  # fmt: skip
    script = f"""
        mount -t tmpfs -o size=44m tmpfs {mnt} || exit 99
        {cmd} 2>{tmp_path}/first.err; echo "first=$?"
        ls -A {run}/.tiles/*/ | grep -c '^tile-' || true
        mount -o remount,size=128m {mnt}
        {cmd} --json 2>{tmp_path}/second.err > {tmp_path}/second.json; echo "second=$?"
        cp {run}/*-denoise-denoised.tif {tmp_path}/resumed.tif
        ls -A {run}
    """
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = proc.stdout.split()
    assert lines[0] == "first=2", (proc.stdout, proc.stderr)
    first = (tmp_path / "first.err").read_text()
    errors = [line for line in first.splitlines() if line.startswith("zoomearth tool: error:")]
    assert len(errors) == 1, first
    error = errors[0].lower()
    assert f"no space left on the device holding {run}".lower() in error, first
    assert "free space" in error
    assert "re-download" not in first and ".tmp-" not in first and "Traceback" not in first
    kept = int(lines[1])
    assert kept > 0  # finished tiles survived the failure
    assert lines[2] == "second=0", (tmp_path / "second.err").read_text()
    second = json.loads((tmp_path / "second.json").read_text())
    assert f"{kept} of 36 tiles were finished before and reused" in " ".join(second["warnings"])
    assert ".tiles" not in lines[3:]  # removed once the call succeeded
    with rasterio.open(tmp_path / "resumed.tif") as got:
        reference = json.loads(ref.stdout)["artifacts"][0]["path"]
        with rasterio.open(reference) as want:
            assert np.array_equal(got.read(), want.read())


# ----------------------------------------------------------------------------------------------
# Tool.check
# ----------------------------------------------------------------------------------------------
class _Picky(Tool):
    """Refuses in ``check`` when asked to (test tool)."""

    name = "picky"
    description = "Runs only when its check passes (test tool)."
    refuse = True
    runs = 0

    def check(self, ctx, args):
        if type(self).refuse:
            raise ToolInputError("Tool 'picky': not today; try tomorrow.", code="not_today")

    def run(self, ctx, args):
        type(self).runs += 1
        return ToolResult(text="ran")


def test_check_runs_before_run_and_alone(tmp_path, settings, small_scene, monkeypatch):
    run_dir = tmp_path / "run"
    ctx = ToolContext(scene=small_scene, run_dir=run_dir, settings=settings)
    monkeypatch.setattr(_Picky, "refuse", True)
    monkeypatch.setattr(_Picky, "runs", 0)
    for call in (check_tool_call, run_tool):
        with pytest.raises(ToolInputError, match="not today") as info:
            call(_Picky, ctx)
        assert info.value.code == "not_today"
    assert _Picky.runs == 0 and not run_dir.exists()
    monkeypatch.setattr(_Picky, "refuse", False)
    assert check_tool_call(_Picky, ctx) is None and not run_dir.exists()  # writes nothing
    assert run_tool(_Picky, ctx).text == "ran" and _Picky.runs == 1
    # The runner's own checks run first: a bad box is refused before the tool's check.
    monkeypatch.setattr(_Picky, "refuse", True)
    outside = ToolContext(scene=small_scene, run_dir=run_dir, region=PixelBox(90, 90, 99, 99))
    with pytest.raises(ToolInputError, match="outside") as info:
        check_tool_call(_Picky, outside)
    assert info.value.code == "box_outside_image"
