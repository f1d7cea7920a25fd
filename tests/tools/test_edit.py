"""The built-in ``edit`` tool: contract, classical removal, masks, refusals, tiny diffusers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.tools.helpers import write_array
from zoomearth.artifacts import ArtifactDraft, ArtifactStore
from zoomearth.geometry import PixelBox
from zoomearth.models import ModelPool
from zoomearth.scene import Scene
from zoomearth.scene.writing import write_window_array
from zoomearth.testing import check_tool
from zoomearth.tools import ToolContext, ToolInputError, get_registry, run_tool
from zoomearth.tools.edit import Edit, is_removal

NAIP = "naip/m_4709963_se_14_1_20090818.tif"
CAR = (100, 60, 112, 68)  # x1, y1, x2, y2 in the test image's pixels


_write = write_array



@pytest.fixture()
def naip_with_car(tmp_path, shared_data) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 200 x 150 NAIP crop with a bright 'car' painted on it: (path, clean, with_car)."""
    with rasterio.open(shared_data / NAIP) as ds:
        clean = ds.read(window=((200, 350), (300, 500)))
    car = clean.copy()
    x1, y1, x2, y2 = CAR
    car[:, y1:y2, x1:x2] = np.array([250, 30, 30, 200], np.uint8)[:, None, None]
    return _write(tmp_path / "car.tif", car, nodata=0), clean, car


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run ~10x faster than with 2."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mask_artifact(run_dir: Path, scene: Scene, box_xyxy, window=(0, 0, 200, 150)) -> str:
    """Register a segmentation-like mask (1 inside ``box_xyxy``) covering ``window``."""
    col, row, w, h = window
    mask = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box_xyxy
    mask[y1 - row : y2 - row, x1 - col : x2 - col] = 1
    run_dir.mkdir(parents=True, exist_ok=True)
    path = write_window_array(
        run_dir / "seg_mask.tif",
        mask,
        source=scene.path,
        window=window,
        dtype="uint8",
        nodata=255,
    )
    store = ArtifactStore(run_dir)
    (art,) = store.register(
        [
            ArtifactDraft(
                path=path, kind="mask", summary="car mask", region_xyxy=(col, row, col + w, row + h)
            )
        ],
        tool="segmentation",
    )
    return art.ref


def _run(scene, run_dir, args, region=None, settings=None, pool=None):
    ctx = ToolContext(
        scene=scene, run_dir=run_dir, region=region, settings=settings or scene.settings, pool=pool
    )
    return run_tool(Edit, ctx, args)


def _read(outcome, kind: str) -> tuple[np.ndarray, dict]:
    art = next(a for a in outcome.artifacts if a.kind == kind)
    with rasterio.open(art.path) as ds:
        return ds.read(), {**ds.profile, "tags": ds.tags(), "path": art.path}


def test_contract_kit():
    report = check_tool(Edit, args={"instruction": "remove the car"})
    assert report.ok, str(report)


def test_registered_needs_approval_and_intents():
    row = next(r for r in get_registry().describe() if r["name"] == "edit")
    assert row["needs_approval"] is True
    assert "mask" in row["arguments"]["properties"]
    assert is_removal("Remove the cars") and is_removal("please get rid of the boat")
    assert not is_removal("make the roofs red")


def test_classical_removal_with_a_mask_artifact(tmp_path, settings, naip_with_car):
    path, clean, car = naip_with_car
    run_dir = tmp_path / "run"
    with Scene.open(path, settings=settings, progress=False) as scene:
        ref = _mask_artifact(run_dir, scene, CAR)
        outcome = _run(scene, run_dir, {"instruction": "remove the car", "mask": ref})
    edited, profile = _read(outcome, "raster")
    flags, mprofile = _read(outcome, "mask")
    assert outcome.data["backend"] == "telea" and outcome.data["removal"] is True
    assert ref in outcome.text and "%" in outcome.text and "Telea" in outcome.text
    # same layout as the source, aligned, a new file
    assert edited.shape == car.shape and edited.dtype == np.uint8 and profile["nodata"] == 0
    assert profile["crs"].to_epsg() == 32614 and mprofile["dtype"] == "uint8"
    assert Path(profile["path"]) != path and "ZOOMEARTH_SYNTHETIC" in profile["tags"]
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(), car)  # input untouched
    # flagged pixels = the car grown by 2 px; everything else is bit-identical
    fill = flags[0].astype(bool)
    x1, y1, x2, y2 = CAR
    assert fill[y1:y2, x1:x2].all() and fill.sum() < 2 * (x2 - x1 + 4) * (y2 - y1 + 4)
    np.testing.assert_array_equal(edited[:, ~fill], car[:, ~fill])
    # the car is gone: the fill is far closer to the real ground than the car was
    err_car = np.abs(car[:, fill].astype(float) - clean[:, fill]).mean()
    err_fill = np.abs(edited[:, fill].astype(float) - clean[:, fill]).mean()
    assert err_fill < 0.25 * err_car, (err_fill, err_car)
    assert outcome.data["edited_pixels"] == int(fill.sum())


def test_mask_is_aligned_to_a_sub_region(tmp_path, settings, naip_with_car):
    path, _, car = naip_with_car
    run_dir = tmp_path / "run"
    region = PixelBox(80, 40, 180, 120)
    with Scene.open(path, settings=settings, progress=False) as scene:
        ref = _mask_artifact(run_dir, scene, CAR)
        outcome = _run(
            scene, run_dir, {"instruction": "erase it", "mask": ref, "method": "ns"}, region
        )
    flags, profile = _read(outcome, "mask")
    assert flags.shape == (1, 80, 100)
    assert profile["transform"] == Affine(1.0, 0, 600_080, 0, -1.0, 5_199_960)
    ys, xs = np.nonzero(flags[0])
    # the car at x 100..112, y 60..68 lies at 20..32, 20..28 of the region (+2 px dilation)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (18, 33, 18, 29)
    assert outcome.data["backend"] == "ns"


def test_target_box_default_inset_and_refusals(tmp_path, settings, naip_with_car):
    path, _, _ = naip_with_car
    run_dir = tmp_path / "run"
    with Scene.open(path, settings=settings, progress=False) as scene:
        boxed = _run(
            scene, run_dir, {"instruction": "remove the car", "target_box": [98, 58, 114, 70]}
        )
        assert boxed.data["mask_source"] == "target box [98, 58, 114, 70]"
        region = PixelBox(90, 50, 122, 78)
        inset = _run(scene, run_dir, {"instruction": "delete the vehicle"}, region)
        flags, _ = _read(inset, "mask")
        assert flags.shape == (1, 28, 32) and not flags[0, 0].any() and flags[0, 14, 16]
        with pytest.raises(ToolInputError, match="target_box"):
            _run(scene, run_dir, {"instruction": "remove it", "target_box": [0, 0, 500, 10]})
        with pytest.raises(ToolInputError) as err:
            _run(scene, run_dir, {"instruction": "make the roofs red"})
        msg = str(err.value)
        assert "inpaint_model" in msg and "instruct_edit_model" in msg
        assert err.value.code == "backend_unavailable"
        with pytest.raises(ToolInputError, match="inpaint_model"):
            _run(scene, run_dir, {"instruction": "remove the car", "backend": "learned"})
        with pytest.raises(ToolInputError, match="only removes"):
            _run(scene, run_dir, {"instruction": "paint it blue", "backend": "classical"})
        with pytest.raises(ToolInputError, match="instruction"):
            _run(scene, run_dir, {})
        with pytest.raises(ToolInputError, match="artifact:7"):
            _run(scene, run_dir, {"instruction": "remove it", "mask": "artifact:7"})


def test_diffusion_inpainting_is_seeded_and_masked(
    tmp_path, settings, naip_with_car, one_torch_thread
):
    from zoomearth.testing_models import build_tiny_sd_inpaint

    model = build_tiny_sd_inpaint(tmp_path / "tiny-inpaint")
    s = settings.model_copy(update={"inpaint_model": str(model), "tool_device": "cpu"})
    path, _, car = naip_with_car
    run_dir = tmp_path / "run"
    pool = ModelPool(budgets={"cpu": 2**30})
    args = {"instruction": "a red roof", "target_box": [96, 56, 116, 72], "steps": 2, "seed": 3}
    with Scene.open(path, settings=s, progress=False) as scene:
        first = _run(scene, run_dir, args, settings=s, pool=pool)
        again = _run(scene, run_dir, args, settings=s, pool=pool)
        other = _run(scene, run_dir, {**args, "seed": 4}, settings=s, pool=pool)
    assert first.data["backend"] == "sd_inpaint" and first.data["seed"] == 3
    a, _ = _read(first, "raster")
    b, _ = _read(again, "raster")
    c, _ = _read(other, "raster")
    flags, _ = _read(first, "mask")
    fill = flags[0].astype(bool)
    np.testing.assert_array_equal(a, b)  # same seed, same pixels
    assert (a[:3, fill] != c[:3, fill]).any()  # another seed, other pixels
    np.testing.assert_array_equal(a[:, ~fill], car[:, ~fill])
    stats = pool.stats().model(f"diffusers-inpaint:{model}", "cpu")
    assert stats is not None and stats.loads == 1 and stats.hits == 2


def test_instruct_pix2pix_edits_the_region(tmp_path, settings, naip_with_car, one_torch_thread):
    from zoomearth.testing_models import build_tiny_instruct_pix2pix

    model = build_tiny_instruct_pix2pix(tmp_path / "tiny-ip2p")
    s = settings.model_copy(update={"instruct_edit_model": str(model), "tool_device": "cpu"})
    path, _, car = naip_with_car
    region = PixelBox(40, 30, 140, 110)
    pool = ModelPool(budgets={"cpu": 2**30})
    args = {"instruction": "make it winter", "steps": 2, "seed": 1}
    with Scene.open(path, settings=s, progress=False) as scene:
        outcome = _run(scene, tmp_path / "run", args, region, settings=s, pool=pool)
        again = _run(scene, tmp_path / "run", args, region, settings=s, pool=pool)
    assert outcome.data["backend"] == "instruct_pix2pix"
    assert outcome.data["edited_fraction"] == 1.0 and "InstructPix2Pix" in outcome.text
    edited, profile = _read(outcome, "raster")
    assert edited.shape == (4, 80, 100) and profile["nodata"] == 0
    before = car[:, 30:110, 40:140]
    assert (edited[:3] != before[:3]).mean() > 0.5  # RGB re-generated
    np.testing.assert_array_equal(edited[3], before[3])  # NIR kept
    np.testing.assert_array_equal(edited, _read(again, "raster")[0])
    assert pool.stats().model(f"diffusers-instruct-pix2pix:{model}", "cpu").loads == 1


def test_classical_removal_on_float_reflectance_stays_in_range(tmp_path, settings):
    """Telea on float32 0-1 data gave garbage (-1.3..1.9 for ~0.3); the fill stays in range."""
    rng = np.random.default_rng(0)
    img = (0.3 + 0.02 * rng.standard_normal((2, 48, 64))).astype(np.float32)
    img[:, 20:28, 28:36] = 0.9  # the object to remove
    img[:, :4, :4] = -9999.0  # nodata corner
    path = _write(tmp_path / "float.tif", img, nodata=-9999.0)
    with Scene.open(path, settings=settings, progress=False) as scene:
        outcome = _run(
            scene, tmp_path / "run", {"instruction": "remove it", "target_box": [27, 19, 37, 29]}
        )
    edited, _ = _read(outcome, "raster")
    flags, _ = _read(outcome, "mask")
    fill = flags[0].astype(bool)
    assert fill[20:28, 28:36].all()
    valid = img[:, ~fill & (img[0] != -9999.0)]
    lo, hi = float(valid.min()), float(valid.max())
    assert edited[:, fill].min() >= lo and edited[:, fill].max() <= hi
    assert abs(float(edited[:, fill].mean()) - 0.3) < 0.05
    np.testing.assert_array_equal(edited[:, ~fill], img[:, ~fill])


def test_invented_pixels_never_equal_nodata():
    from zoomearth.tools.edit import _avoid_nodata, classical_inpaint

    fill = np.zeros((8, 8), bool)
    fill[3:5, 3:5] = True
    out = np.full((2, 8, 8), 7, np.uint8)
    out[1] = 255
    _avoid_nodata(out, fill, 7.0)
    assert (out[0][fill] == 8).all() and (out[0][~fill] == 7).all()
    _avoid_nodata(out, fill, 255.0)
    assert (out[1][fill] == 254).all()
    flt = np.full((1, 8, 8), 0.5, np.float32)
    _avoid_nodata(flt, fill, 0.5)
    assert (flt[0][fill] != np.float32(0.5)).all()
    # a constant band is filled with its value, without going through OpenCV
    res = classical_inpaint(np.full((1, 8, 8), 0.25, np.float32), fill)
    assert (res == np.float32(0.25)).all()


def test_check_refuses_before_approval_what_run_would_refuse(tmp_path, settings, naip_with_car):
    """``Edit.check`` (the graph calls it before asking for approval) refuses exactly the calls
    ``run`` cannot do -- a mask covering the whole region first of all -- and writes nothing."""
    from zoomearth.tools import check_tool_call

    path, _, _ = naip_with_car
    run_dir = tmp_path / "run"
    region = PixelBox(80, 40, 140, 90)
    with Scene.open(path, settings=settings, progress=False) as scene:
        ctx = ToolContext(scene=scene, run_dir=run_dir, region=region, settings=settings)
        whole = {"instruction": "remove the car", "target_box": [80, 40, 140, 90]}
        with pytest.raises(ToolInputError) as info:
            check_tool_call(Edit, ctx, whole)
        assert info.value.code == "mask_covers_region"
        assert "covers the whole region [80, 40, 140, 90]" in str(info.value)
        assert "choose a larger region around the object" in str(info.value)
        # The same call through the runner is refused the same way, before run() writes.
        with pytest.raises(ToolInputError) as ran:
            run_tool(Edit, ctx, whole)
        assert str(ran.value) == str(info.value)
        for args, code in (
            ({"instruction": "make the roofs red"}, "backend_unavailable"),
            ({"instruction": "remove it", "target_box": [0, 0, 500, 10]}, "bad_box"),
            ({"instruction": "remove it", "backend": "learned"}, "backend_unavailable"),
        ):
            with pytest.raises(ToolInputError) as other:
                check_tool_call(Edit, ctx, args)
            assert other.value.code == code
        # A mask inside the region with context around it passes, and nothing was written.
        assert check_tool_call(Edit, ctx, {"instruction": "remove the car",
                                           "target_box": list(CAR)}) is None
        assert not run_dir.exists()
