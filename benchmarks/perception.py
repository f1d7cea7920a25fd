"""One "perception" -- overview at 512 plus two 512 crops at full resolution -- engine vs reference.

For synthetic scenes of 5,000, 20,000 and 40,000 px (generated once into --workdir), each case
runs in its own subprocess and reports its wall time (the perception work only, imports
excluded) and the child's peak RSS:

* engine:    ``Scene.open`` on the tiled, overviewed COG, ``render(None, 512)``, two
             ``render(box, 512)`` of 512x512 full-resolution boxes;
* reference: the ZoomEarth demo's approach on the same scene exported as PNG (how benchmark
             images ship): PIL with ``MAX_IMAGE_PIXELS = None``, open, ``convert("RGB")`` of the
             whole image, resize to long side 1024, then re-open and crop each box;
             run only where it fits in memory (``--reference-max``).

Also, in one process: ``Scene.render`` of a 512 full-resolution window against the bare
``rasterio`` read of the same window (median of many alternating calls), and optionally a
100,000 px scene (``--huge``) to check the engine's peak memory.

Usage::

    python benchmarks/perception.py [--sizes 5000,20000,40000] [--repeats 3]
                                    [--workdir ~/.cache/zoomearth-bench] [--huge 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# ----------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM), in MiB.

    Not ``getrusage().ru_maxrss``: on Linux that also carries the high-water mark of the parent's
    address space across fork/exec, so a child started after the parent held a big array would
    report the parent's peak.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmHWM not found in /proc/self/status")


def child_engine(image: str, boxes: list[list[float]]) -> dict:
    from zoomearth.config import load_settings
    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene

    settings = load_settings()
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    with Scene.open(image, settings=settings) as scene:
        scene.render(None, max_side=512)
        for b in boxes:
            scene.render(PixelBox(*b), max_side=512)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(),
            "baseline_rss_mb": base}


def child_reference(image: str, boxes: list[list[float]]) -> dict:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    img = Image.open(image).convert("RGB")
    w, h = img.size
    scale = 1024 / max(w, h)
    img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    del img
    for b in boxes:
        with Image.open(image) as im:
            im.convert("RGB").crop(tuple(int(v) for v in b)).resize((512, 512))
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(),
            "baseline_rss_mb": base}


def run_child(kind: str, image: Path, boxes: list[list[float]]) -> dict:
    cmd = [sys.executable, str(HERE), "--child", kind, "--image", str(image),
           "--boxes", json.dumps(boxes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------
def ensure_scene(workdir: Path, size: int) -> tuple[Path, list[list[float]]]:
    from zoomearth.scene.synth import generate_scene

    path = workdir / f"synth_{size}.tif"
    sidecar = path.with_suffix(".json")
    if not (path.exists() and sidecar.exists()):
        print(f"  generating {size} px scene ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        generate_scene(path, size, seed=1, progress=sys.stderr.isatty())
        print(f"  ({time.perf_counter() - t0:.0f} s, {path.stat().st_size / 1e6:.0f} MB)",
              file=sys.stderr)
    objects = json.loads(sidecar.read_text())["objects"]
    # Two 512x512 boxes centred on planted objects far apart (first and last by id).
    chosen = [objects[0], objects[-1]] if len(objects) >= 2 else []
    boxes = []
    for obj in chosen:
        x1, y1, x2, y2 = obj["box_xyxy"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        bx = min(max(cx - 256, 0), size - 512)
        by = min(max(cy - 256, 0), size - 512)
        boxes.append([float(int(bx)), float(int(by)), float(int(bx) + 512), float(int(by) + 512)])
    while len(boxes) < 2:
        boxes.append([0.0, 0.0, 512.0, 512.0])
    return path, boxes


def ensure_png(tif: Path) -> Path:
    """Export the scene as PNG for the reference pipeline (once; not part of any measurement).

    Reads the whole raster into memory and encodes it with OpenCV at a low zlib level: fast, and
    memory is no concern in this preparation step (GDAL's streaming PNG writer was far slower).
    """
    import cv2
    import rasterio

    png = tif.with_suffix(".png")
    if not png.exists():
        print(f"  exporting {png.name} for the reference pipeline ...", file=sys.stderr, flush=True)
        with rasterio.open(tif) as src:
            rgb = src.read([1, 2, 3])
        bgr = cv2.cvtColor(rgb.transpose(1, 2, 0), cv2.COLOR_RGB2BGR)
        del rgb
        tmp = png.with_name(png.name + ".tmp.png")
        cv2.imwrite(str(tmp), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        os.replace(tmp, png)
    return png


def median_of(kind: str, image: Path, boxes: list[list[float]], repeats: int) -> dict:
    runs = [run_child(kind, image, boxes) for _ in range(repeats)]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return {
        "seconds": statistics.median(r["seconds"] for r in ok),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
        "baseline_rss_mb": statistics.median(r["baseline_rss_mb"] for r in ok),
    }


def render_vs_rasterio(image: Path, box: list[float], repeats: int = 30) -> tuple[float, float]:
    import rasterio
    from rasterio.windows import Window

    from zoomearth.geometry import PixelBox
    from zoomearth.scene import Scene

    x1, y1, x2, y2 = (int(v) for v in box)
    window = Window(x1, y1, x2 - x1, y2 - y1)
    scene = Scene.open(image)
    pbox = PixelBox(*box)
    t_render, t_raw = [], []
    with rasterio.open(image) as ds:
        scene.render(pbox, 512)
        ds.read([1, 2, 3], window=window)
        for _ in range(repeats):
            t0 = time.perf_counter()
            scene.render(pbox, 512)
            t_render.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ds.read([1, 2, 3], window=window)
            t_raw.append(time.perf_counter() - t0)
    scene.close()
    return statistics.median(t_render), statistics.median(t_raw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="5000,20000,40000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "zoomearth-bench"))
    p.add_argument("--reference-max", type=int, default=20000,
                   help="largest size for the reference pipeline (it decodes the whole image)")
    p.add_argument("--huge", type=int, default=0, help="also check a scene of this size")
    p.add_argument("--child", choices=("engine", "reference"))
    p.add_argument("--image")
    p.add_argument("--boxes")
    args = p.parse_args()

    if args.child:
        fn = child_engine if args.child == "engine" else child_reference
        print(json.dumps(fn(args.image, json.loads(args.boxes))))
        return 0

    workdir = Path(args.workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.huge:
        sizes.append(args.huge)
    rows = []
    engine_time: dict[int, float] = {}
    for size in sizes:
        print(f"== {size} px", file=sys.stderr, flush=True)
        tif, boxes = ensure_scene(workdir, size)
        eng = median_of("engine", tif, boxes, args.repeats)
        ref = None
        if size <= args.reference_max:
            png = ensure_png(tif)
            ref = median_of("reference", png, boxes, args.repeats)
        engine_time[size] = eng.get("seconds", float("nan"))
        r_render, r_raw = render_vs_rasterio(tif, boxes[0])
        rows.append((size, eng, ref, r_render, r_raw))

    print(f"\nperception = overview at 512 + two 512x512 full-resolution crops; "
          f"median of {args.repeats} subprocess runs each\n")
    hdr = (f"{'size':>7} | {'engine s':>9} {'engine MB':>10} | {'reference s':>11} "
           f"{'reference MB':>12} | {'speed-up':>8} {'memory ratio':>12}")
    print(hdr)
    print("-" * len(hdr))
    for size, eng, ref, _, _ in rows:
        if ref and "error" not in ref:
            speed = ref["seconds"] / eng["seconds"]
            mem = ref["peak_rss_mb"] / eng["peak_rss_mb"]
            print(f"{size:>7} | {eng['seconds']:>9.3f} {eng['peak_rss_mb']:>10.0f} | "
                  f"{ref['seconds']:>11.2f} {ref['peak_rss_mb']:>12.0f} | {speed:>7.0f}x "
                  f"{mem:>11.1f}x")
        else:
            note = ref["error"] if ref else "not run (too large)"
            print(f"{size:>7} | {eng['seconds']:>9.3f} {eng['peak_rss_mb']:>10.0f} | {note}")
    print("\n(peak MB = the child's peak RSS, including the interpreter and imports: "
          f"~{rows[0][1].get('baseline_rss_mb', 0):.0f} MB for the engine)")
    if 5000 in engine_time and 40000 in engine_time:
        print(f"engine time 40,000 px / 5,000 px: "
              f"{engine_time[40000] / engine_time[5000]:.2f}x (target <= 1.5x)")
    print("\nin-process: Scene.render of a 512x512 full-resolution window vs bare rasterio read")
    for size, _, _, r_render, r_raw in rows:
        print(f"{size:>7} px: render {r_render * 1e3:.2f} ms, rasterio {r_raw * 1e3:.2f} ms, "
              f"ratio {r_render / r_raw:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
