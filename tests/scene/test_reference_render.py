"""Reference rendering (zoomearth.scene.reference): pixel-identical to the reference's PIL code.

The expected pixels are built here independently, the way the reference evaluation does it:
``Image.open(path).convert("RGB")``, ``.crop(window)``, ``.resize((int(w * s), int(h * s)),
Image.BICUBIC)`` with ``s = 512 / max(w, h)`` when ``s < 1``.
"""

from __future__ import annotations

import itertools

import numpy as np
import PIL
import pytest
import rasterio
from affine import Affine
from PIL import Image

from zoomearth.agent.profiles import reference_crop_xyxy
from zoomearth.errors import BoxError
from zoomearth.geometry import PixelBox
from zoomearth.scene import Scene
from zoomearth.scene.reference import (
    pil_bicubic_resize_streamed,
    pillow_pass_order,
    render_reference_crop,
    render_reference_overview,
)

BICUBIC = Image.Resampling.BICUBIC


# ---------------------------------------------------------------------------------------------
# independent reference construction
# ---------------------------------------------------------------------------------------------
def ref_resize(img: Image.Image) -> np.ndarray:
    """The reference's ``resize_image`` (long side 512, int() sizes, never upsampled)."""
    w, h = img.size
    scale = 512 / max(w, h)
    if scale < 1:
        img = img.resize((int(w * scale), int(h * scale)), BICUBIC)
    return np.asarray(img)


def structured(width: int, height: int, seed: int) -> np.ndarray:
    """Random-ish structured RGB content, uint8 ``(height, width, 3)``.

    Gradients, sinusoids, hard-edged blocks of random levels and noise: smooth areas, sharp
    edges (bicubic overshoot and clipping) and high frequencies (aliasing).
    """
    rng = np.random.default_rng(seed)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    r = (x * 0.11 + y * 0.07) % 256
    g = 128 + 110 * np.sin(x / 37.0) * np.cos(y / 53.0)
    levels = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1)).astype(np.float32)
    blocks = levels[(np.arange(height) // 64)[:, None], (np.arange(width) // 64)[None, :]]
    noise = rng.integers(-40, 41, (height, width)).astype(np.float32)
    b = blocks + noise
    rgb = np.stack([np.broadcast_to(r, (height, width)), np.broadcast_to(g, (height, width)), b])
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    # A few saturated lines: worst case for ringing.
    out[:, ::97, :] = 255
    out[:, :, ::131] = 0
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def write_tiff(path, rgb: np.ndarray, overviews=(2, 4, 8)):
    h, w, _ = rgb.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "photometric": "RGB",
        "crs": "EPSG:32633",
        "transform": Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
        if overviews:
            dst.build_overviews(list(overviews), rasterio.enums.Resampling.average)
    return path


class Raster:
    def __init__(self, path, width: int, height: int) -> None:
        self.path = path
        self.width = width
        self.height = height
        self.pil = Image.open(path).convert("RGB")  # what the reference decodes
        assert self.pil.size == (width, height)


# 5000 x 3000 (landscape), 3000 x 5000 (portrait), 1200 x 4000 (tall enough that Pillow >= 13
# resizes its overview vertically first).
SIZES = {"landscape": (5000, 3000), "portrait": (3000, 5000), "tall": (1200, 4000)}


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> dict[str, Raster]:
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for seed, (name, (w, h)) in enumerate(SIZES.items()):
        path = write_tiff(root / f"{name}.tif", structured(w, h, seed))
        out[name] = Raster(path, w, h)
    return out


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory):
    from zoomearth.config import load_settings

    root = tmp_path_factory.mktemp("settings")
    return load_settings(flags={"data_dir": root / "data", "cache_dir": root / "cache"}, environ={})


def open_scene(raster: Raster, settings) -> Scene:
    scene = Scene.open(raster.path, settings=settings, progress=False)
    assert not scene.needs_preparation()  # read straight from the tiled, overviewed file
    return scene


class RenderSpy:
    """Wraps ``scene.render`` and records every call's box and max_side."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.inner = scene.render
        self.calls: list[tuple[PixelBox | None, int | None]] = []

    def __call__(self, box=None, max_side=512, **kwargs):
        self.calls.append((box, max_side))
        return self.inner(box, max_side, **kwargs)


# ---------------------------------------------------------------------------------------------
# pil_bicubic_resize_streamed on arrays
# ---------------------------------------------------------------------------------------------
def _pil(full: np.ndarray, ow: int, oh: int) -> np.ndarray:
    return np.asarray(Image.fromarray(full).resize((ow, oh), BICUBIC))


def _streamed(full: np.ndarray, ow: int, oh: int, *, columns: bool = True, **kw) -> np.ndarray:
    h, w, _ = full.shape
    return pil_bicubic_resize_streamed(
        lambda y0, y1: full[y0:y1],
        w,
        h,
        ow,
        oh,
        read_columns=(lambda x0, x1: full[:, x0:x1]) if columns else None,
        **kw,
    )


def _content(kind: str, w: int, h: int, seed: int) -> np.ndarray:
    if kind == "random":
        return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return structured(w, h, seed)


# (source w, h, target w, h): odd sizes, 1-pixel sides, large factors, both orientations, sizes
# where Pillow >= 13 runs the vertical pass first, up- and mixed scaling.
ARRAY_CASES = [
    (5000, 40, 512, 4),
    (40, 5000, 4, 512),
    (1025, 513, 512, 256),
    (513, 1025, 256, 512),
    (997, 641, 512, 329),
    (7, 900, 3, 512),
    (900, 7, 512, 3),
    (1, 600, 1, 512),
    (600, 1, 512, 1),
    (1, 1, 1, 1),
    (33, 33, 33, 10),
    (33, 33, 10, 33),
    (600, 2000, 153, 512),
    (1000, 1000, 900, 500),
    (100, 1000, 90, 500),
    (300, 200, 640, 90),
    (64, 48, 200, 150),
    (777, 555, 777, 555),
]


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize(("w", "h", "ow", "oh"), ARRAY_CASES)
def test_streamed_equals_pil_one_call(kind, w, h, ow, oh):
    full = _content(kind, w, h, seed=w * 7 + h)
    expected = _pil(full, ow, oh)
    # 1-row/1-column strips on the smaller sources (they are slow on the large ones)
    strips = (1, 7, None) if w * h <= 200_000 else (7, 64, None)
    for strip in strips:
        for columns in (True, False):
            got = _streamed(full, ow, oh, columns=columns, strip_rows=strip, strip_columns=strip)
            assert got.dtype == np.uint8 and got.shape == (oh, ow, 3)
            assert np.array_equal(got, expected), (strip, columns)


@pytest.mark.parametrize(("w", "h"), [(5000, 3000), (3000, 5000)])
def test_streamed_large_downscale_random(w, h):
    full = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    s = 512 / max(w, h)
    ow, oh = int(w * s), int(h * s)
    assert np.array_equal(
        _streamed(full, ow, oh, strip_rows=333, strip_columns=333), _pil(full, ow, oh)
    )


def test_streamed_reads_bounded_strips_once():
    full = structured(700, 900, 3)
    calls: list[tuple[int, int]] = []

    def read_rows(y0, y1):
        calls.append((y0, y1))
        return full[y0:y1]

    got = pil_bicubic_resize_streamed(
        read_rows, 700, 900, 398, 512, strip_rows=64, pass_order="horizontal_first"
    )
    assert np.array_equal(
        got,
        np.asarray(Image.fromarray(full).resize((398, 900), BICUBIC).resize((398, 512), BICUBIC)),
    )
    assert all(0 < y1 - y0 <= 64 for y0, y1 in calls)
    assert [c[0] for c in calls] == list(range(0, 900, 64))  # each row read exactly once


def test_streamed_vertical_first_reads_column_strips():
    full = structured(300, 2000, 4)
    cols: list[tuple[int, int]] = []

    def read_columns(x0, x1):
        cols.append((x0, x1))
        return full[:, x0:x1]

    def no_rows(y0, y1):
        raise AssertionError("a vertical-first resize with a column reader reads no rows")

    got = pil_bicubic_resize_streamed(
        no_rows,
        300,
        2000,
        76,
        512,
        read_columns=read_columns,
        strip_columns=50,
        pass_order="vertical_first",
    )
    two_pass = Image.fromarray(full).resize((300, 512), BICUBIC).resize((76, 512), BICUBIC)
    assert np.array_equal(got, np.asarray(two_pass))
    assert cols == [(x, x + 50) for x in range(0, 300, 50)]


@pytest.mark.parametrize(("w", "h", "ow", "oh"), [(600, 2000, 153, 512), (2000, 600, 512, 153)])
def test_forced_pass_orders_match_two_call_compositions(w, h, ow, oh):
    full = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(full)
    hv = np.asarray(img.resize((ow, h), BICUBIC).resize((ow, oh), BICUBIC))
    vh = np.asarray(img.resize((w, oh), BICUBIC).resize((ow, oh), BICUBIC))
    assert not np.array_equal(hv, vh)  # the order matters for these sizes
    assert np.array_equal(_streamed(full, ow, oh, pass_order="horizontal_first"), hv)
    assert np.array_equal(_streamed(full, ow, oh, pass_order="vertical_first"), vh)


def test_pass_order_rule_matches_installed_pillow():
    """For sizes around each known rule's threshold, the one-call resize is the predicted order."""
    rng = np.random.default_rng(11)
    cases = []
    for w, ow in [(40, 20), (40, 39), (10, 5), (3, 1)]:
        for h in (60, 100, 300, 1000, 1001, 4001):
            for dy in (0, 1, 2 * (w - ow) - 1, 2 * (w - ow), 2 * (w - ow) + 1, h // 2):
                oh = h - dy
                if 1 <= oh:
                    cases.append((w, h, ow, oh))
    differing = 0
    for w, h, ow, oh in sorted(set(cases)):
        full = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(full)
        one = np.asarray(img.resize((ow, oh), BICUBIC))
        hv = np.asarray(img.resize((ow, h), BICUBIC).resize((ow, oh), BICUBIC))
        vh = np.asarray(img.resize((w, oh), BICUBIC).resize((ow, oh), BICUBIC))
        differing += not np.array_equal(hv, vh)
        predicted = hv if pillow_pass_order(w, h, ow, oh) == "horizontal_first" else vh
        assert np.array_equal(one, predicted), (PIL.__version__, w, h, ow, oh)
    assert differing > 10  # the grid does tell the two orders apart


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("11.3.0", ["h", "h", "h", "h", "h"]),
        ("12.1.1", ["h", "h", "h", "h", "h"]),
        ("12.2.0", ["h", "h", "h", "v", "h"]),
        ("12.3.0", ["h", "h", "h", "v", "h"]),
        ("13.0.0", ["h", "v", "h", "v", "v"]),
        ("13.1.0.dev0", ["h", "v", "h", "v", "v"]),
    ],
)
def test_pass_order_rule_per_version(version, expected):
    cases = [
        (5000, 3000, 512, 307),  # wide: horizontal first everywhere
        (600, 2000, 153, 512),  # 2x rule (13+) only
        (3000, 5000, 307, 512),  # 4488 < 2 * 2693: horizontal first
        (10, 1001, 5, 512),  # > 100x taller (12.2, 12.3) and 2x rule
        (40, 100, 20, 59),  # dy = 41 > 2 * 20
    ]
    got = [pillow_pass_order(*c, pillow_version=version)[0] for c in cases]
    assert got == expected
    assert pillow_pass_order(40, 100, 20, 60, pillow_version="13.0.0") == "horizontal_first"
    assert pillow_pass_order(10, 1000, 5, 512, pillow_version="12.3.0") == "horizontal_first"


def test_streamed_rejects_bad_input():
    full = np.zeros((10, 10, 3), np.uint8)
    rows = lambda y0, y1: full[y0:y1]  # noqa: E731
    with pytest.raises(ValueError, match="positive integers"):
        pil_bicubic_resize_streamed(rows, 10, 10, 0, 5)
    with pytest.raises(ValueError, match="strip_rows"):
        pil_bicubic_resize_streamed(rows, 10, 10, 5, 5, strip_rows=0)
    with pytest.raises(ValueError, match="pass_order"):
        pil_bicubic_resize_streamed(rows, 10, 10, 5, 5, pass_order="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8 of shape"):
        pil_bicubic_resize_streamed(lambda y0, y1: full[y0:y1, :5], 10, 10, 5, 5)
    with pytest.raises(ValueError, match="uint8 of shape"):
        pil_bicubic_resize_streamed(lambda y0, y1: full[y0:y1].astype(np.float32), 10, 10, 5, 5)


# ---------------------------------------------------------------------------------------------
# scenes: overview
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SIZES))
def test_exact_overview_equals_pil_full_image_bicubic(rasters, module_settings, name):
    raster = rasters[name]
    expected = ref_resize(raster.pil)
    with open_scene(raster, module_settings) as scene:
        spy = RenderSpy(scene)
        scene.render = spy  # type: ignore[method-assign]
        strip_bytes = 3 * raster.width * 700  # ~700 rows (or fewer columns) per strip
        rgb, exact = render_reference_overview(
            scene, exact_max_pixels=raster.width * raster.height, strip_bytes=strip_bytes
        )
    assert exact is True
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    assert np.array_equal(rgb, expected)
    # Never the whole image at full resolution: only strips, all at full resolution.
    assert len(spy.calls) > 1
    for box, max_side in spy.calls:
        assert max_side is None and box is not None
        assert box.height < raster.height or box.width < raster.width
        assert box.width * box.height * 3 <= strip_bytes


def test_tall_overview_is_resized_in_column_strips_when_pillow_goes_vertical_first(
    rasters, module_settings
):
    raster = rasters["tall"]
    ow, oh = 153, 512
    order = pillow_pass_order(raster.width, raster.height, ow, oh)
    with open_scene(raster, module_settings) as scene:
        spy = RenderSpy(scene)
        scene.render = spy  # type: ignore[method-assign]
        render_reference_overview(scene, exact_max_pixels=10**9, strip_bytes=3 * 4000 * 300)
    full_height = [box for box, _ in spy.calls if box.height == raster.height]
    if order == "vertical_first":
        assert full_height and all(box.width <= 300 for box in full_height)
    else:
        assert not full_height


def test_approximate_overview_reads_a_decimated_rendering(rasters, module_settings):
    raster = rasters["landscape"]
    exact = ref_resize(raster.pil)
    with open_scene(raster, module_settings) as scene:
        spy = RenderSpy(scene)
        scene.render = spy  # type: ignore[method-assign]
        rgb, is_exact = render_reference_overview(scene, exact_max_pixels=0)
    assert is_exact is False
    assert rgb.shape == exact.shape and rgb.dtype == np.uint8
    assert spy.calls == [(None, 2048)]
    diff = np.abs(rgb.astype(np.int16) - exact.astype(np.int16))
    assert diff.mean() < 4.0  # close to, but not, the reference's pixels


def test_small_image_overview_is_the_image_itself(tmp_path, module_settings):
    rgb = structured(400, 300, 9)
    path = write_tiff(tmp_path / "small.tif", rgb, overviews=())
    with Scene.open(path, settings=module_settings) as scene:
        got, exact = render_reference_overview(scene, exact_max_pixels=0)
    assert exact is True
    assert np.array_equal(got, rgb)
    assert np.array_equal(got, ref_resize(Image.open(path).convert("RGB")))


def test_overview_rejects_negative_budget(rasters, module_settings):
    with open_scene(rasters["tall"], module_settings) as scene:
        with pytest.raises(ValueError, match="exact_max_pixels"):
            render_reference_overview(scene, exact_max_pixels=-1)


# ---------------------------------------------------------------------------------------------
# scenes: crops
# ---------------------------------------------------------------------------------------------
def crop_windows(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """Windows near every edge and corner, under and over 512, reaching outside the image."""
    windows = [
        # 512 squares in the four corners (no resize)
        (0, 0, 512, 512),
        (w - 512, 0, w, 512),
        (0, h - 512, 512, h),
        (w - 512, h - 512, w, h),
        # larger than 512 at the corners and along each edge
        (0, 0, 1300, 900),
        (w - 1700, h - 1100, w, h),
        (1000, 0, 2400, 800),
        (0, 1000, 700, 2600),
        (w - 900, 700, w, 2200),
        (500, h - 650, 2900, h),
        # reaching outside: corners, edges, mostly outside
        (-300, -200, 900, 700),
        (w - 800, h - 400, w + 500, h + 300),
        (-1000, 500, 400, 1800),
        (2000, -700, 2600, 400),
        (w - 100, 100, w + 900, 1200),
        (600, h - 30, 1400, h + 700),
        # under 512 reaching outside (padded, not resized)
        (-100, -50, 300, 350),
        (w - 200, h - 100, w + 100, h + 200),
        # tall and wide windows (Pillow >= 13 goes vertical first on the tall one)
        (100, 200, 700, 2900),
        (100, 100, 2900, 700),
        # the whole image with a margin (many strips)
        (-50, -50, w + 50, h + 50),
        # entirely outside
        (w + 10, 0, w + 900, 700),
        (-2000, -2000, -100, -1000),
        (0, h, 600, h + 600),
    ]
    # windows from the reference's crop rule for small boxes near the corners and centre
    for box in [
        (5, 5, 40, 40),
        (w - 30, h - 20, w - 1, h - 1),
        (w / 2, h / 2, w / 2 + 80, h / 2 + 9),
    ]:
        windows.append(reference_crop_xyxy(box, w, h))
    return windows


CROP_CASES = [
    (name, window) for name in ("landscape", "portrait") for window in crop_windows(*SIZES[name])
]


@pytest.mark.parametrize(("name", "window"), CROP_CASES, ids=[f"{n}-{w}" for n, w in CROP_CASES])
def test_crop_equals_pil_crop_then_resize(rasters, module_settings, name, window):
    raster = rasters[name]
    expected = ref_resize(raster.pil.crop(window))
    strip_bytes = 3 * 1024 * 256  # small strips: big windows are read in many pieces
    with open_scene(raster, module_settings) as scene:
        spy = RenderSpy(scene)
        scene.render = spy  # type: ignore[method-assign]
        got = render_reference_crop(scene, window, strip_bytes=strip_bytes)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got, expected)
    x1, y1, x2, y2 = window
    inside = PixelBox(x1, y1, x2, y2).intersection(PixelBox(0, 0, raster.width, raster.height))
    if inside is None:
        assert spy.calls == []  # nothing to read
    for box, max_side in spy.calls:
        assert max_side is None  # full resolution ...
        assert box.intersection(inside) == box  # ... inside the window and the image ...
        if max(x2 - x1, y2 - y1) > 512:  # ... and in strips when resized
            assert box.width * box.height * 3 <= strip_bytes


def test_crop_reads_only_the_window(rasters, module_settings):
    raster = rasters["landscape"]
    with open_scene(raster, module_settings) as scene:
        spy = RenderSpy(scene)
        scene.render = spy  # type: ignore[method-assign]
        render_reference_crop(scene, (-300, -200, 900, 700))
    assert [(b.as_list(), m) for b, m in spy.calls] == [([0, 0, 900, 700], None)]


@pytest.mark.parametrize(
    "window", [(10, 10, 10, 600), (600, 10, 10, 600), (1, 2, 3), (0.5, 0, 600, 600), "0,0,5,5"]
)
def test_crop_rejects_bad_windows(rasters, module_settings, window):
    with open_scene(rasters["tall"], module_settings) as scene:
        with pytest.raises(BoxError, match="four integers"):
            render_reference_crop(scene, window)


def test_crop_accepts_numpy_integers(rasters, module_settings):
    raster = rasters["tall"]
    window = tuple(np.int64(v) for v in (100, 200, 800, 1500))
    with open_scene(raster, module_settings) as scene:
        got = render_reference_crop(scene, window)
    assert np.array_equal(got, ref_resize(raster.pil.crop((100, 200, 800, 1500))))


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
def test_reference_demo_image(shared_data, module_settings):
    path = shared_data / "zoomearth" / "demo3.png"
    img = Image.open(path).convert("RGB")
    with Scene.open(path, settings=module_settings) as scene:
        overview, exact = render_reference_overview(scene, exact_max_pixels=10**8)
        crops = {
            w: render_reference_crop(scene, w)
            for w in [(512, 0, 1024, 512), (-100, 300, 700, 1100), (200, 100, 1000, 1000)]
        }
    assert exact and np.array_equal(overview, ref_resize(img))
    for window, got in crops.items():
        assert np.array_equal(got, ref_resize(img.crop(window))), window


def test_windows_cover_all_edges():
    # guard on the test data itself: every edge and corner is exercised, inside and outside
    w, h = SIZES["landscape"]
    wins = crop_windows(w, h)
    for xs, ys in itertools.product((0, w), (0, h)):
        assert any(
            (x1 <= 0 if xs == 0 else x2 >= w) and (y1 <= 0 if ys == 0 else y2 >= h)
            for x1, y1, x2, y2 in wins
        )
    assert any(x1 < 0 for x1, *_ in wins) and any(x2 > w for *_, x2, _ in wins)
