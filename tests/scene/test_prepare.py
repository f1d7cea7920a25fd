"""Preparing scenes: the work budget, the worker process, progress, cancellation and kills.

The big inputs are sparse tiled TIFFs without overviews (one written block, the rest implicit
zeros): 50 KB on disk for 40,000 x 40,000 px, which is what made preparing stall the server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio

from tests.scene.rasters import pattern, write_raster
from zoomearth.config import load_settings
from zoomearth.errors import (
    ScenePrepareBudgetError,
    ScenePrepareCancelled,
    ScenePrepareError,
    SceneReadError,
    SceneTooLargeError,
)
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.scene.cache import SceneCache, build_tiled_copy
from zoomearth.synth.sparse import sparse_tiff
from zoomearth.temporaries import is_temporary_name

REPO = Path(__file__).resolve().parents[2]
HANG_S = 120  # only to detect a hang, never a speed assertion


def settings_for(tmp_path: Path, **flags):
    return load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache", **flags},
        environ={},
    )


def temporaries_in(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if is_temporary_name(p.name))


def worker_children(pid: int) -> list[psutil.Process]:
    """Preparation workers started by process ``pid``."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            if "_worker_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, what: str, timeout: float = HANG_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"hang: {what} after {timeout} s")
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# the work budget
# ----------------------------------------------------------------------------------------------
def test_budget_refuses_the_40k_sparse_tiff_before_any_work(tmp_path):
    src = sparse_tiff(tmp_path / "sparse40k.tif", 40_000)
    assert src.stat().st_size < 100_000  # the attack: tiny file, 1.6 Gpx declared
    settings = settings_for(tmp_path)  # default budget: 1e9 px
    scene = Scene.open(src, settings=settings)
    info = scene.info()  # header-only operations still work
    assert info["width"] == 40_000 and info["needs_preparation"] is True
    with pytest.raises(ScenePrepareBudgetError) as caught:
        scene.render()
    err = caught.value
    assert isinstance(err, SceneTooLargeError) and err.code == "prepare_budget_exceeded"
    text = str(err)
    assert "\n" not in text
    for needed in (
        str(src),
        "40,000 x 40,000 = 1,600,000,000 px",
        "no overviews",
        "1,000,000,000 px",
        "gdal_translate -of COG -co BLOCKSIZE=512 -co OVERVIEWS=AUTO",
        "--set max_prepare_pixels=10000000000",
    ):
        assert needed in text, needed
    cache_dir = settings.scene_cache_dir
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []  # nothing was written


def test_budget_names_the_reason(tmp_path):
    png = write_raster(tmp_path / "wide.png", 1200, 500, 3, driver="PNG", georef=False)
    strips = write_raster(tmp_path / "strips.tif", 1200, 500, 3, tiled=False)
    settings = settings_for(tmp_path, prepare_min_side=256, max_prepare_pixels=100_000)
    with pytest.raises(ScenePrepareBudgetError, match="PNG images have no internal tiles"):
        Scene.open(png, settings=settings).render()
    with pytest.raises(ScenePrepareBudgetError, match="no internal tiles or overviews"):
        Scene.open(strips, settings=settings).render(PixelBox(0, 0, 10, 10))


def test_cached_copy_is_used_whatever_the_budget(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 3000)
    roomy = settings_for(tmp_path, prepare_min_side=256)
    tight = settings_for(tmp_path, prepare_min_side=256, max_prepare_pixels=1_000_000)
    with pytest.raises(ScenePrepareBudgetError):
        Scene.open(src, settings=tight).render(max_side=64)
    built = Scene.open(src, settings=roomy, progress=False).pixel_path()
    scene = Scene.open(src, settings=tight)
    scene.check_prepare_budget()  # no error: a copy is cached
    assert scene.pixel_path() == built
    view = scene.render(PixelBox(0, 0, 600, 600), max_side=600)
    assert (view.rgb[:512, :512] == 100).all() and (view.rgb[512:, 512:] == 0).all()


def test_explicit_prepare_may_bypass_the_budget(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 3000)
    tight = settings_for(tmp_path, prepare_min_side=256, max_prepare_pixels=1_000_000)
    scene = Scene.open(src, settings=tight, progress=False)
    with pytest.raises(ScenePrepareBudgetError):
        scene.prepare(progress=False)
    copy = scene.prepare(progress=False, enforce_budget=False)
    assert copy.exists() and scene.pixel_path() == copy


def test_small_or_windowable_scenes_ignore_the_budget(tmp_path):
    tif = write_raster(tmp_path / "cog.tif", 1024, 1024, 3, block=256, overviews=[2, 4])
    settings = settings_for(tmp_path, prepare_min_side=256, max_prepare_pixels=1)
    scene = Scene.open(tif, settings=settings)
    scene.check_prepare_budget()
    assert scene.render(max_side=32).rgb.shape == (32, 32, 3)


# ----------------------------------------------------------------------------------------------
# the worker process
# ----------------------------------------------------------------------------------------------
def test_worker_builds_the_same_copy_as_in_process(tmp_path):
    src = write_raster(tmp_path / "strip.tif", 1500, 1100, 3, tiled=False, nodata=0)
    inproc, worker = tmp_path / "a" / "inproc.tif", tmp_path / "b" / "worker.tif"
    build_tiled_copy(src, inproc, progress=False, isolate=False)
    build_tiled_copy(src, worker, progress=False, isolate=True)
    with rasterio.open(inproc) as a, rasterio.open(worker) as b, rasterio.open(src) as s:
        assert a.profile == b.profile
        assert a.overviews(1) == b.overviews(1) == [2, 4, 8]
        assert np.array_equal(a.read(), b.read())
        assert np.array_equal(b.read(), s.read())
        assert np.array_equal(a.read(1, out_shape=(137, 187)), b.read(1, out_shape=(137, 187)))
        assert b.crs == s.crs and b.transform == s.transform and b.nodata == 0
    assert temporaries_in(tmp_path / "b") == []


def test_worker_does_the_work_out_of_process_and_reports_progress(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 4000)
    calls: list[tuple[int, int, str]] = []
    workers: list[int] = []

    def progress(done: int, total: int, message: str) -> None:
        calls.append((done, total, message))
        if message != "done":
            workers.extend(p.pid for p in worker_children(os.getpid()))

    settings = settings_for(tmp_path, prepare_min_side=256)
    cache = SceneCache.from_settings(settings)
    copy = cache.get_or_build(src, progress=progress, isolate=True)
    assert workers and os.getpid() not in workers  # the rows were copied by another process
    assert all(total == 8000 for _, total, _ in calls)
    done = [d for d, _, _ in calls]
    assert done == sorted(done) and done[-1] == 8000
    messages = [m for _, _, m in calls]
    assert "copying rows" in messages and "building overviews" in messages
    assert messages[-1] == "done"
    assert worker_children(os.getpid()) == []  # reaped
    with rasterio.open(copy) as ds:
        assert ds.block_shapes[0] == (512, 512) and ds.overviews(1)
    assert [t for t in cache.temporaries()] == []


@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "worker"])
def test_read_errors_come_back_with_the_same_type_and_message(tmp_path, isolate):
    png = write_raster(tmp_path / "big.png", 900, 700, 3, driver="PNG", georef=False)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 3])
    settings = settings_for(tmp_path, prepare_min_side=256)
    cache = SceneCache.from_settings(settings)
    with pytest.raises(SceneReadError) as caught:
        cache.get_or_build(png, progress=False, isolate=isolate)
    text = str(caught.value)
    assert text.startswith(f"Preparing a tiled copy of {png} failed while reading rows 0-512")
    assert "re-download or re-export it" in text
    assert cache.entries() == [] and cache.temporaries() == []


def test_unwritable_cache_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    settings = settings_for(tmp_path, prepare_min_side=256, scene_cache_dir=blocker / "scenes")
    png = write_raster(tmp_path / "big.png", 600, 400, 3, driver="PNG", georef=False)
    with pytest.raises(ScenePrepareError) as caught:
        Scene.open(png, settings=settings, progress=False).render()
    text = str(caught.value)
    assert str(blocker / "scenes") in text and "scene_cache_dir" in text and "\n" not in text


# ----------------------------------------------------------------------------------------------
# cancellation
# ----------------------------------------------------------------------------------------------
def test_cancel_callable_terminates_the_worker_and_removes_its_file(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 40_000)  # tens of seconds of work
    cache = SceneCache(tmp_path / "cache", 10**12)
    seen: list[int] = []

    def progress(done: int, total: int, message: str) -> None:
        seen.extend(p.pid for p in worker_children(os.getpid()))

    with pytest.raises(ScenePrepareCancelled, match="was cancelled; nothing was cached"):
        cache.get_or_build(src, progress=progress, isolate=True, cancel=lambda: bool(seen))
    assert seen
    assert all(not psutil.pid_exists(pid) or gone(psutil.Process(pid)) for pid in set(seen))
    assert worker_children(os.getpid()) == []
    assert cache.entries() == [] and cache.temporaries() == []


def test_a_raising_progress_callback_cancels_and_propagates(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 40_000)
    cache = SceneCache(tmp_path / "cache", 10**12)

    class Stop(Exception):
        pass

    def progress(done: int, total: int, message: str) -> None:
        if worker_children(os.getpid()):
            raise Stop("client went away")

    with pytest.raises(Stop):
        cache.get_or_build(src, progress=progress, isolate=True)
    assert worker_children(os.getpid()) == []
    assert cache.temporaries() == []


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from zoomearth.scene.cache import SceneCache

    def announce(done, total, message):  # tells the test which phase the worker is in
        print(message, flush=True)

    cache = SceneCache(Path(sys.argv[2]), 10**12)
    try:
        cache.get_or_build(
            Path(sys.argv[1]), progress=True if sys.argv[3] == "console" else announce,
            isolate=True,
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    """
)


def start_parent(tmp_path: Path, src: Path, progress: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(src), str(tmp_path / "cache"), progress],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )


def test_ctrl_c_stops_the_worker_and_leaves_nothing(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 40_000)
    parent = start_parent(tmp_path, src, "console")
    try:
        wait_until(lambda: worker_children(parent.pid), "no worker started")
        worker = worker_children(parent.pid)[0]
        os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        _, err = parent.communicate(timeout=HANG_S)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed test leaves no process behind
            os.killpg(parent.pid, signal.SIGKILL)
    assert parent.returncode == 130, err
    assert "Preparing a tiled copy of sparse.tif (40,000 x 40,000 px, one-time" in err
    assert "Traceback" not in err
    assert gone(worker)
    assert temporaries_in(tmp_path / "cache") == []


@pytest.mark.parametrize("phase", ["copying rows", "building overviews"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_caller_takes_its_worker_along_and_the_next_build_sweeps(tmp_path, sig, phase):
    # "building overviews" is one long GDAL call that holds the worker's GIL: only the kernel
    # (PR_SET_PDEATHSIG) can stop the worker then.
    src = sparse_tiff(tmp_path / "sparse.tif", 40_000)
    cache_dir = tmp_path / "cache"
    parent = start_parent(tmp_path, src, "announce")
    try:
        for line in parent.stdout:
            if line.strip() == phase:
                break
        (worker,) = worker_children(parent.pid)
        wait_until(lambda: temporaries_in(cache_dir), "the worker wrote no temporary")
        os.kill(parent.pid, sig)  # only the caller, as `kill PID` or the OOM killer would
        parent.communicate(timeout=HANG_S)
        wait_until(lambda: gone(worker), "the orphaned worker kept running")
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed test leaves no process behind
            os.killpg(parent.pid, signal.SIGKILL)
    cache = SceneCache(cache_dir, 10**12)
    left = cache.temporaries()
    if sys.platform.startswith("linux"):
        # Killed by the kernel at once, mid-write: its partial file stays, owned by the dead
        # caller. (Elsewhere the worker notices later, removes it and exits.)
        assert len(left) == 1 and left[0].stale and str(parent.pid) in left[0].path.name
    other = write_raster(tmp_path / "other.png", 600, 400, 3, driver="PNG", georef=False)
    cache.get_or_build(other, progress=False)  # what the next process does first
    assert temporaries_in(cache_dir) == []


def test_killed_in_process_build_leaves_a_stale_temporary_that_is_swept(tmp_path):
    src = write_raster(tmp_path / "strip.tif", 2000, 1600, 3, tiled=False)
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from zoomearth.scene.cache import SceneCache

        def progress(done, total, message):
            if done >= 512:  # a strip is on disk: stop here until killed
                print("started", flush=True)
                time.sleep(3600)

        SceneCache(Path(sys.argv[2]), 10**12).get_or_build(
            Path(sys.argv[1]), progress=progress, isolate=False)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(src), str(cache_dir)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "started"
    finally:
        proc.kill()
        proc.wait()
    cache = SceneCache(cache_dir, 10**12)
    (left,) = cache.temporaries()
    assert left.stale and left.size_bytes > 0 and str(proc.pid) in left.path.name
    # The next build in this folder sweeps it (start-up of a later process).
    other = write_raster(tmp_path / "other.png", 600, 400, 3, driver="PNG", georef=False)
    cache.get_or_build(other, progress=False)
    assert cache.temporaries() == [] and not left.path.exists()


# ----------------------------------------------------------------------------------------------
# progress reporting
# ----------------------------------------------------------------------------------------------
def test_cli_view_says_what_it_prepares_when_stderr_is_not_a_terminal(tmp_path):
    png = write_raster(tmp_path / "big.png", 1200, 700, 3, driver="PNG", georef=False)
    cache = tmp_path / "cache"
    run = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "--set", "prepare_min_side=256",
         "--set", f"cache_dir={cache}", "view", str(png), "-o", str(tmp_path / "v.png")],
        cwd=REPO, capture_output=True, text=True, timeout=HANG_S,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[0] == (
        f"Preparing a tiled copy of big.png (1,200 x 700 px, one-time; cached in "
        f"{cache / 'scenes'}) ..."
    )
    assert lines[1].startswith("Prepared big.png in ") and lines[1].endswith(" s.")
    assert (tmp_path / "v.png").exists()


def test_cli_view_refuses_over_budget_in_one_line_and_info_still_works(tmp_path):
    src = sparse_tiff(tmp_path / "sparse40k.tif", 40_000)
    base = [sys.executable, "-m", "zoomearth.cli", "--set", f"cache_dir={tmp_path / 'cache'}"]
    view = subprocess.run(
        [*base, "view", str(src), "-o", str(tmp_path / "v.png")],
        cwd=REPO, capture_output=True, text=True, timeout=HANG_S,
    )
    assert view.returncode != 0
    assert view.stderr.count("\n") == 1 and "Traceback" not in view.stderr
    assert "max_prepare_pixels" in view.stderr and "gdal_translate -of COG" in view.stderr
    assert not (tmp_path / "v.png").exists()
    info = subprocess.run(
        [*base, "info", str(src)], cwd=REPO, capture_output=True, text=True, timeout=HANG_S
    )
    assert info.returncode == 0 and "40000" in info.stdout.replace(",", "")


def test_cli_prepare_is_explicit_so_the_budget_does_not_apply(tmp_path):
    src = sparse_tiff(tmp_path / "sparse.tif", 3000)
    base = [sys.executable, "-m", "zoomearth.cli", "--set", f"cache_dir={tmp_path / 'cache'}",
            "--set", "max_prepare_pixels=1000000", "--set", "prepare_min_side=256"]
    view = [*base, "view", str(src), "-o", str(tmp_path / "v.png")]
    refused = subprocess.run(view, cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert refused.returncode != 0 and "zoomearth prepare IMAGE" in refused.stderr
    prepared = subprocess.run([*base, "prepare", str(src)], cwd=REPO, capture_output=True,
                              text=True, timeout=HANG_S)
    assert prepared.returncode == 0, prepared.stderr
    assert "prepared copy:" in prepared.stdout
    # The cached copy now serves requests under the same budget.
    again = subprocess.run(view, cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runtime_sends_prepare_events(tmp_path):
    from zoomearth.graphs.runtime import GraphRuntime

    png = write_raster(tmp_path / "big.png", 900, 600, 3, driver="PNG", georef=False)
    events: list[dict] = []
    runtime = GraphRuntime(settings_for(tmp_path, prepare_min_side=256), on_event=events.append)
    ref = runtime.scene_ref(png)
    view = runtime.scene(ref).render(PixelBox(0, 0, 300, 200), max_side=300)
    assert np.array_equal(np.moveaxis(view.rgb, -1, 0), pattern(900, 600, 3)[:, :200, :300])
    prepare = [e for e in events if e["event"] == "prepare"]
    assert prepare and {e["scene"] for e in prepare} == {"big.png"}
    assert prepare[-1]["done"] == prepare[-1]["total"] == 1200
    assert prepare[-1]["message"] == "done"
    runtime.close()


def test_prepare_events_reach_the_facade_during_a_real_run(tmp_path):
    """The scene's copy is built inside a graph node: its events go on the run's stream."""
    from langgraph.checkpoint.memory import InMemorySaver

    from tests.graphs.fakes import ScriptedPlanner
    from zoomearth.api import Agent

    png = write_raster(tmp_path / "big.png", 900, 600, 3, driver="PNG", georef=False)
    events: list[dict] = []
    agent = Agent(
        settings_for(tmp_path, prepare_min_side=256),
        planner=ScriptedPlanner(["<think>plain</think><answer>a field</answer>"]),
        checkpointer=InMemorySaver(),
        on_event=events.append,
    )
    try:
        result = agent.ask(png, "what is this?")
    finally:
        agent.close()
    assert result.status == "answered"
    prepare = [e for e in events if e["event"] == "prepare"]
    assert prepare and {e["scene"] for e in prepare} == {"big.png"}
    assert prepare[-1]["done"] == prepare[-1]["total"]
