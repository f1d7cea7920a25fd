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

Scenes are generated once into ``--workdir`` with :func:`zoomearth.scene.synth.generate_scene`
(``synth_<N>.tif``, reused when present -- other benchmarks write the same files;
``synth_<N>_clouds.tif`` with 15 % clouds for cloud removal).

Usage::

    python benchmarks/tools.py [--parts view,scene,overhead] [--scene-size 20000]
                               [--tools denoise,edit] [--workdir ~/.cache/zoomearth-bench]
"""

from __future__ import annotations

import argparse
import json
import os
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
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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
        }
    )
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    with Scene.open(spec["image"], settings=settings, progress=False) as scene:
        region = PixelBox(*spec["box"]) if spec.get("box") else None
        ctx = ToolContext(
            scene=scene, run_dir=Path(spec["tmp"]) / "run", region=region, settings=settings
        )
        outcome = run_tool(cls(), ctx, spec.get("args", {}))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="view,scene,overhead")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--scene-size", type=int, default=20_000)
    parser.add_argument("--view-scene-size", type=int, default=5_000)
    parser.add_argument("--workdir", default="~/.cache/zoomearth-bench")
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
