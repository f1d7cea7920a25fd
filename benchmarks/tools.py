"""Tool nodes end to end through ``run_tool``: wall time, peak RSS and the tiling overhead.

Three parts, each case in its own subprocess (so every peak RSS is that case's alone):

1. **view**: each built-in tool (``segmentation``, ``cloud_removal``, ``denoise``, ``edit``,
   looked up in the registry by name; a tool that is not registered yet is skipped with a
   message) with its default backend on a 2,048 x 2,048 px region of a synthetic scene.
2. **scene**: ``cloud_removal`` (single image) and ``denoise`` on a whole synthetic scene of
   ``--scene-size`` px (default 20,000; streamed tile by tile into a tiled GeoTIFF with
   overviews). Target: peak RSS under 1.5 GB.
3. **overhead**: the same tools on a 4,096 px region, streamed (tiles of the setting
   ``tool_tile_side``, with overlap) against the same operation on one in-memory array (a
   subclass of the tool whose one-piece limit is 4,096 px, so the region is read, processed and
   written in one piece). Target: streamed within 2x of one piece.

4. **parallel** (issue 18): ``denoise`` and ``cloud_removal`` on a whole scene of ``--side`` px
   (default 20,000; ``--quick``: 4,096): the tiled whole-scene throughput (Mpx/s, the whole call:
   statistics, tiles, the one writer) with ``--workers`` workers (default: the CPUs) against
   ``workers x`` the bare single-tile throughput of the same filter measured in the same run
   (the tool's own per-tile function, timed inside ``map_tiles`` on a serial run of
   ``--bare-tiles`` tiles at the scene's centre -- ``--bare-tiles 0``: every tile -- with OpenCV
   held to one thread: one core's worth; the mean per tile). The whole-scene figure is the median
   of ``--whole-runs`` runs (default 3). Target: ratio >= 0.75.
   Peak RSS of the whole-scene child (``getrusage`` max RSS, which is the kernel's VmHWM; the
   children's too). Target: < 1.5 GB. With ``--ray ADDRESS`` (e.g. ``local``) the same call also
   runs with its tiles as Ray tasks, side by side with the single-machine run.
5. **estimate** (``--estimate 200000 --machines N``): a paper estimate of a whole scene of that
   side on N machines of ``--cores-per-machine`` cores, from the per-tile seconds and the
   parallel efficiency measured by part 4 (run in the same command), with its arithmetic.

Scenes are generated once into ``--workdir`` with :func:`zoomearth.scene.synth.generate_scene`
(``synth_<N>.tif``, reused when present -- other benchmarks write the same files;
``synth_<N>_clouds.tif`` with 15 % clouds for cloud removal).

Usage::

    python benchmarks/tools.py [--parts view,scene,overhead,parallel] [--scene-size 20000]
                               [--tools denoise,edit] [--workdir ~/.cache/zoomearth-bench]
    python benchmarks/tools.py --parts parallel [--side 20000 | --quick] [--workers N]
                               [--ray local] [--estimate 200000 --machines 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
TOOLS = ("segmentation", "cloud_removal", "denoise", "edit")
#: Arguments of each tool's default call (the planner's minimal call).
DEFAULT_ARGS: dict[str, dict[str, Any]] = {
    "segmentation": {},
    "cloud_removal": {},
    "denoise": {},
    "edit": {"instruction": "remove the object"},
}
SCENE_TOOLS = ("cloud_removal", "denoise")
VIEW_SIDE = 2048
OVERHEAD_SIDE = 4096
RSS_TARGET_MB = 1536


# ----------------------------------------------------------------------------------------------
# child
# ----------------------------------------------------------------------------------------------
def _peak_rss_mb(who: int | None = None) -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF if who is None else who).ru_maxrss / 1024.0


def _time_tiles(times: list[float], writes: list[float]) -> None:
    """Time every ``map_tiles`` tile (bare mode): the tile function's seconds go to ``times``,
    the caller's seconds per yielded tile (the one writer writing it) to ``writes``."""
    from zoomearth.tools.context import ToolContext

    real = ToolContext.map_tiles

    def timed(self: Any, fn: Any, tiles: Any = None, **kw: Any) -> Any:
        def clocked(tile: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(tile)
            times.append(time.perf_counter() - t0)
            return out

        for item in real(self, clocked, tiles, **kw):
            t0 = time.perf_counter()
            yield item
            writes.append(time.perf_counter() - t0)

    ToolContext.map_tiles = timed  # type: ignore[method-assign]


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one tool call as described by ``spec``; return timings and memory."""
    from zoomearth.config import load_settings
    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene
    from zoomearth.tools import ToolContext, get_registry, run_tool

    cls = get_registry().get_class(spec["tool"])
    if spec.get("one_piece"):
        side = int(spec["one_piece"])
        caps = cls.capabilities.model_copy(update={"max_side": side})
        cls = type(cls.__name__ + "OnePiece", (cls,), {"capabilities": caps})
    settings = load_settings(
        flags={
            "data_dir": spec["tmp"] + "/data",
            "cache_dir": spec["tmp"] + "/cache",
            "tool_device": "cpu",
            **({"tool_tile_side": spec["tile_side"]} if spec.get("tile_side") else {}),
            **({"tool_workers": spec["workers"]} if spec.get("workers") else {}),
            "max_image_pixels": 10**12,
        }
    )
    tile_times: list[float] = []
    write_times: list[float] = []
    if spec.get("bare"):
        import cv2

        cv2.setNumThreads(1)  # one core's worth of the filter
        _time_tiles(tile_times, write_times)
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    with Scene.open(spec["image"], settings=settings, progress=False) as scene:
        region = PixelBox(*spec["box"]) if spec.get("box") else None
        ctx = ToolContext(
            scene=scene, run_dir=Path(spec["tmp"]) / "run", region=region, settings=settings
        )
        outcome = run_tool(cls(), ctx, spec.get("args", {}), ray_address=spec.get("ray"))
    seconds = time.perf_counter() - t0
    import resource

    return {
        "seconds": seconds,
        "tile_seconds": tile_times,
        "write_seconds": write_times,
        "peak_rss_mb": _peak_rss_mb(),
        "children_peak_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN),
        "baseline_rss_mb": base,
        "streamed": outcome.streamed,
        "text": outcome.text[:300],
        "data": {k: v for k, v in outcome.data.items() if k in ("backend", "tiles", "noise_sigma")},
    }


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="zoomearth-bench-tools-") as tmp:
        spec = {**spec, "tmp": tmp}
        cmd = [sys.executable, str(HERE), "--child", json.dumps(spec)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------
def ensure_scene(workdir: Path, size: int, clouds: float = 0.0) -> Path:
    """The synthetic scene of ``size`` px in ``workdir`` (generated once)."""
    from zoomearth.scene.synth import generate_scene

    name = f"synth_{size}.tif" if clouds == 0 else f"synth_{size}_clouds.tif"
    path = workdir / name
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        t0 = time.perf_counter()
        generate_scene(path, size, seed=1, clouds=clouds, progress=True)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def registered(names: list[str]) -> list[str]:
    from zoomearth.tools import get_registry

    reg = get_registry()
    out = []
    for name in names:
        try:
            reg.get_class(name)
        except Exception as exc:  # noqa: BLE001 - a tool being written may not import yet
            print(f"  {name:14s} skipped: not registered or not importable ({exc})")
            continue
        out.append(name)
    return out


def _fmt(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']}"
    extra = f" {res['data']}" if res.get("data") else ""
    return (
        f"{res['seconds']:8.1f} s  peak RSS {res['peak_rss_mb']:7.0f} MB "
        f"(after imports {res['baseline_rss_mb']:.0f} MB){' streamed' if res['streamed'] else ''}"
        f"{extra}"
    )


def centred_box(size: int, side: int) -> list[int]:
    x0 = max(0, (size - side) // 2)
    return [x0, x0, x0 + side, x0 + side]


def parallel_part(workdir: Path, name: str, side: int, ns: Any) -> dict[str, float] | None:
    """Part 4 for one tool; returns the figures the estimate needs (None on an error)."""
    image = ensure_scene(workdir, side, 0.15 if name == "cloud_removal" else 0.0)
    tile = 1024  # the setting tool_tile_side's default
    workers = ns.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)  # fmt: skip
    args = {**DEFAULT_ARGS[name], "preview": False}
    print(f"\n[parallel] {name} on the whole {side} px scene {image.name}, {workers} worker(s)")
    # The bare filter: the tool's own per-tile function on a serial run over a few tiles, OpenCV
    # on one thread -- what one core does per tile. Regions above the one-piece limit stream in
    # tiles of `tile` px, so the box below is cut exactly into bare_tiles tiles.
    # The block sits at the scene's centre, not its corner: a tool's cost per tile depends on
    # what the tile holds (cloud_removal inpaints only where there are clouds), and the corner
    # tiles of a synthetic scene need not be typical.
    # --bare-tiles 0 times every tile of a serial whole-scene run: the exact tile mix.
    box: list[int] | None = None
    if ns.bare_tiles > 0:
        n = ns.bare_tiles
        cols = min(n, max(1, side // tile))
        rows = max(1, -(-n // cols))
        x0 = max(0, (side // tile - cols) // 2) * tile
        y0 = max(0, (side // tile - rows) // 2) * tile
        box = [x0, y0, min(side, x0 + cols * tile), min(side, y0 + rows * tile)]
    spec = {"tool": name, "image": str(image), "args": args, "workers": 1, "bare": True}
    bare = run_child({**spec, "box": box} if box else spec)
    if "error" in bare or not bare.get("tile_seconds"):
        print(f"  bare           ERROR {bare.get('error', 'no tile timed')}")
        return None
    # The mean, not the median: throughput is pixels over total time, and a tool's cost per tile
    # can be skewed (cloud_removal's cloudy tiles cost several times its clear ones).
    tile_s = statistics.fmean(bare["tile_seconds"][1:] or bare["tile_seconds"])  # 1st warms up
    bare_mpxs = tile * tile / tile_s / 1e6
    where = f"in box {box}" if box else "of a serial whole-scene run"
    print(f"  bare filter    {tile_s:8.2f} s per {tile} px tile (mean of "
          f"{len(bare['tile_seconds'])} {where})")  # fmt: skip
    print(f"                 = {bare_mpxs:.3f} Mpx/s on one core")
    # The whole-scene call is the figure with the most run-to-run noise (a shared machine): the
    # median of --whole-runs runs, each printed.
    wholes = []
    for _ in range(max(1, ns.whole_runs)):
        whole = run_child({"tool": name, "image": str(image), "args": args, "workers": workers})
        if "error" in whole:
            print(f"  whole scene    ERROR {whole['error']}")
            return None
        wholes.append(whole)
    runs_s = [w["seconds"] for w in wholes]
    seconds = statistics.median(runs_s)
    whole = max(wholes, key=lambda w: w["peak_rss_mb"] + w["children_peak_rss_mb"])
    mpxs = side * side / seconds / 1e6
    ratio = mpxs / (workers * bare_mpxs)
    rss = whole["peak_rss_mb"] + whole["children_peak_rss_mb"]
    each = ", ".join(f"{s:.1f}" for s in runs_s)
    print(f"  whole scene    {seconds:8.1f} s = {mpxs:.3f} Mpx/s with {workers} workers "
          f"(median of {len(runs_s)}: {each} s)")  # fmt: skip
    print(f"  ratio          {mpxs:.3f} / ({workers} x {bare_mpxs:.3f}) = {ratio:.2f}  "
          f"[{'OK' if ratio >= 0.75 else 'BELOW'} target 0.75]")  # fmt: skip
    print(f"  peak RSS       {rss:7.0f} MB (process {whole['peak_rss_mb']:.0f} MB, children "
          f"{whole['children_peak_rss_mb']:.0f} MB)  "
          f"[{'OK' if rss < RSS_TARGET_MB else 'ABOVE'} target {RSS_TARGET_MB} MB]")  # fmt: skip
    if ns.ray:
        on_ray = run_child({"tool": name, "image": str(image), "args": args, "ray": ns.ray})
        if "error" in on_ray:
            print(f"  Ray ({ns.ray})    ERROR {on_ray['error']}")
        else:
            print(f"  Ray ({ns.ray}) {on_ray['seconds']:8.1f} s = "
                  f"{side * side / on_ray['seconds'] / 1e6:.3f} Mpx/s; single machine / Ray = "
                  f"{seconds / on_ray['seconds']:.2f}x")  # fmt: skip
    driver_s = statistics.median(bare["write_seconds"] or [0.0])
    return {"tile_s": tile_s, "tile": tile, "efficiency": ratio, "driver_s": driver_s}


def print_estimate(name: str, fig: dict[str, float], side: int, machines: int, cores: int) -> None:
    """The paper estimate of a ``side`` px scene on ``machines`` x ``cores`` from measured figures.

    Workers: tiles x (seconds per tile on one core) / (machines x cores x the parallel efficiency
    measured on this machine). The driver (one process: receives each tile's result, writes it
    in order) does not get faster with machines: its seconds per tile are the median time the
    tool's own loop spent on a yielded tile in the bare run (the writer's compression; the
    overviews built at the end and the transfer of results are not included). The two overlap
    (tiles are written while others compute), so the run takes about the larger.
    """
    tile = int(fig["tile"])
    tiles = math.ceil(side / tile) ** 2
    eff = min(1.0, max(0.05, fig["efficiency"]))
    compute = tiles * fig["tile_s"] / (machines * cores * eff)
    driver = tiles * fig["driver_s"]
    one = tiles * fig["tile_s"] / (cores * eff)
    print(f"\n[estimate] {name}, {side} px scene on {machines} machine(s) x {cores} cores")
    print(f"  tiles          ceil({side} / {tile})^2 = {tiles:,}")
    print(
        f"  workers        {tiles:,} x {fig['tile_s']:.2f} s / ({machines} x {cores} x "
        f"efficiency {eff:.2f}) = {compute:,.0f} s"
    )
    print(
        f"  driver         {tiles:,} x {fig['driver_s']:.3f} s per tile = {driver:,.0f} s "
        "(one writer: not divided by machines)"
    )
    total = max(compute, driver)
    print(
        f"  total          ~max of the two = {total:,.0f} s = {total / 3600:.1f} h "
        f"(one machine: ~{max(one, driver) / 3600:.1f} h)"
    )
    print(
        "  assumes: the scene readable by every machine, tiles as independent as here, "
        "max_image_pixels raised above the scene's pixels"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="view,scene,overhead,parallel")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--scene-size", type=int, default=20_000)
    parser.add_argument("--view-scene-size", type=int, default=5_000)
    parser.add_argument("--workdir", default="~/.cache/zoomearth-bench")
    parser.add_argument("--side", type=int, default=None, help="parallel: scene side (px)")
    parser.add_argument("--quick", action="store_true", help="parallel: a 4,096 px scene")
    parser.add_argument("--workers", type=int, default=None, help="parallel: tool_workers")
    parser.add_argument(
        "--bare-tiles",
        type=int,
        default=8,
        help="parallel: tiles timed bare, at the scene's centre (0: every tile, a serial run)",
    )
    parser.add_argument(
        "--whole-runs", type=int, default=3, help="parallel: whole-scene runs (the median)"
    )
    parser.add_argument("--ray", default=None, help="parallel: also run on Ray (e.g. local)")
    parser.add_argument("--estimate", type=int, default=None, help="paper estimate: scene side")
    parser.add_argument("--machines", type=int, default=8, help="paper estimate: machines")
    parser.add_argument("--cores-per-machine", type=int, default=16, help="paper estimate")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.child:
        print(json.dumps(child(json.loads(ns.child))))
        return 0

    workdir = Path(ns.workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    parts = set(ns.parts.split(","))
    wanted = [t for t in ns.tools.split(",") if t]
    print(f"tools benchmark, {os.cpu_count()} CPU(s); registry lookup:")
    tools = registered(wanted)

    if "view" in parts:
        image = ensure_scene(workdir, ns.view_scene_size)
        box = centred_box(ns.view_scene_size, VIEW_SIDE)
        print(f"\n[view] default backend on a {VIEW_SIDE} px region {box} of {image.name}")
        for name in tools:
            res = run_child(
                {"tool": name, "image": str(image), "box": box, "args": DEFAULT_ARGS.get(name, {})}
            )
            print(f"  {name:14s} {_fmt(res)}", flush=True)

    if "scene" in parts:
        for name in [t for t in tools if t in SCENE_TOOLS]:
            image = ensure_scene(workdir, ns.scene_size, 0.15 if name == "cloud_removal" else 0.0)
            print(f"\n[scene] {name} on the whole {ns.scene_size} px scene {image.name}")
            res = run_child({"tool": name, "image": str(image), "args": DEFAULT_ARGS[name]})
            verdict = ""
            if "peak_rss_mb" in res:
                ok = res["peak_rss_mb"] < RSS_TARGET_MB
                verdict = f"  [{'OK' if ok else 'ABOVE'} target {RSS_TARGET_MB} MB]"
            print(f"  {name:14s} {_fmt(res)}{verdict}", flush=True)

    if ns.estimate and "parallel" not in parts:
        parts.add("parallel")  # the estimate needs the per-tile figures of this run
    if "parallel" in parts:
        side = ns.side or (4096 if ns.quick else 20_000)
        measured = {}
        for name in [t for t in tools if t in SCENE_TOOLS]:
            measured[name] = parallel_part(workdir, name, side, ns)
        if ns.estimate:
            for name, fig in measured.items():
                if fig:
                    print_estimate(name, fig, ns.estimate, ns.machines, ns.cores_per_machine)

    if "overhead" in parts:
        for name in [t for t in tools if t in SCENE_TOOLS]:
            image = ensure_scene(workdir, ns.scene_size, 0.15 if name == "cloud_removal" else 0.0)
            box = centred_box(ns.scene_size, OVERHEAD_SIDE)
            print(f"\n[overhead] {name} on a {OVERHEAD_SIDE} px region {box} of {image.name}")
            streamed = run_child(
                {"tool": name, "image": str(image), "box": box, "args": DEFAULT_ARGS[name]}
            )
            print(f"  streamed       {_fmt(streamed)}", flush=True)
            one = run_child(
                {
                    "tool": name,
                    "image": str(image),
                    "box": box,
                    "args": DEFAULT_ARGS[name],
                    "one_piece": OVERHEAD_SIDE,
                    "tile_side": OVERHEAD_SIDE,
                }
            )
            print(f"  one piece      {_fmt(one)}", flush=True)
            if "seconds" in streamed and "seconds" in one:
                ratio = streamed["seconds"] / one["seconds"]
                verdict = "OK" if ratio <= 2.0 else "ABOVE"
                print(f"  tiling overhead: {ratio:.2f}x  [{verdict} target 2x]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
