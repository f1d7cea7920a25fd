"""The ``segmentation`` built-in: GrabCut default, tiny SAM via the production loader, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_transform

from zoomearth.geometry import PixelBox
from zoomearth.models import ModelPool
from zoomearth.scene import Scene
from zoomearth.testing import check_tool
from zoomearth.testing_models import TINY_SAM
from zoomearth.tools import ToolContext, ToolFailure, ToolInputError, run_tool
from zoomearth.tools.segmentation import (
    SAM_PRESETS,
    SamArchitecture,
    Segmentation,
    build_sam,
    load_sam,
    sam_model_spec,
)

UTM = "EPSG:32633"
GSD = 0.5
ORIGIN = Affine(GSD, 0, 500_000, 0, -GSD, 5_000_000)
ENTRY = "import sys; from zoomearth.cli import main; sys.exit(main())"

# Planted object: an annulus (disk with a hole) centred at (CX, CY) on a noisy texture.
W = H = 320
CX, CY, R_OUT, R_IN = 160, 150, 50, 16


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(3, H, W)`` uint8 texture with a yellow annulus, and the ``(H, W)`` bool truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    img = rng.normal(90, 22, (3, H, W))
    img += 15 * np.sin(xx / 7.0)[None]  # field-like stripes
    r2 = (xx - CX) ** 2 + (yy - CY) ** 2
    truth = (r2 < R_OUT**2) & (r2 >= R_IN**2)
    img[:, truth] = np.array([205, 190, 70])[:, None] + rng.normal(0, 12, (3, int(truth.sum())))
    return img.clip(1, 255).astype(np.uint8), truth


def write_scene(path: Path, *, georef: bool = True, nodata: float | None = None) -> Path:
    img, _ = planted()
    profile = {
        "driver": "GTiff",
        "width": W,
        "height": H,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": 64,
        "blockysize": 64,
    }
    if georef:
        profile.update(crs=UTM, transform=ORIGIN)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(img)
    return path


def call(scene: Scene, run_dir: Path, region, args=None, *, tool=None, pool=None, settings=None):
    ctx = ToolContext(
        scene=scene,
        run_dir=run_dir,
        region=None if region is None else PixelBox(*region),
        settings=settings or scene.settings,
        pool=pool,
    )
    return run_tool(tool or Segmentation(), ctx, args or {})


def artifact(outcome, kind: str) -> Path:
    return Path(next(a.path for a in outcome.artifacts if a.kind == kind))


@pytest.fixture()
def utm_scene(tmp_path, settings):
    return Scene.open(write_scene(tmp_path / "planted.tif"), settings=settings, progress=False)


# --------------------------------------------------------------------------------------------
# GrabCut (the default backend)
# --------------------------------------------------------------------------------------------
def test_grabcut_finds_planted_object_with_hole_and_area(utm_scene, tmp_path):
    _, truth = planted()
    region = (CX - 62, CY - 62, CX + 62, CY + 62)  # the planner's box around the object
    out = call(utm_scene, tmp_path / "run", region)
    assert out.data["backend"] == "grabcut" and out.data["regions"] == 1

    with rasterio.open(artifact(out, "mask")) as src:
        mask = src.read(1)
        assert src.crs.to_string() == UTM and src.dtypes[0] == "uint8" and src.nodata == 255
        # Aligned to the source window: its origin is the region's corner in map units.
        assert src.transform == ORIGIN @ Affine.translation(region[0], region[1])
        assert mask.shape == (124, 124)
    want = truth[region[1] : region[3], region[0] : region[2]]
    got = mask == 1
    iou = (got & want).sum() / (got | want).sum()
    assert iou > 0.7, iou

    gj = json.loads(artifact(out, "vector").read_text())
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    (feat,) = gj["features"]
    rings = feat["geometry"]["coordinates"]
    assert len(rings) == 2, "the hole must be kept as an interior ring"
    true_m2 = truth.sum() * GSD * GSD
    assert feat["properties"]["area_m2"] == pytest.approx(true_m2, rel=0.04)
    xs = [p[0] for p in rings[0]]
    assert min(xs) == pytest.approx(500_000 + (CX - R_OUT) * GSD, abs=2.0)
    assert "1 region" in out.text and "m2" in out.text and "EPSG:32633" in out.text
    assert f"pixel ({CX}, {CY})" in out.text or f"pixel ({CX - 1}, {CY - 1})" in out.text

    png = artifact(out, "preview")
    assert out.preview_id is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_target_box_inside_a_larger_region(utm_scene, tmp_path):
    _, truth = planted()
    region = (20, 10, 300, 290)
    box = [CX - 60, CY - 60, CX + 60, CY + 60]
    out = call(utm_scene, tmp_path / "run", region, {"target_box": box})
    with rasterio.open(artifact(out, "mask")) as src:
        got = src.read(1) == 1
    want = truth[10:290, 20:300]
    assert (got & want).sum() / (got | want).sum() > 0.7
    assert out.data["prompt_box_xyxy"] == box


def test_points_seed_grabcut_and_are_drawn(utm_scene, tmp_path):
    region = (CX - 62, CY - 62, CX + 62, CY + 62)
    args = {"mode": "points", "points": [[CX + 33, CY], [CX, CY]], "point_labels": [1, 0]}
    out = call(utm_scene, tmp_path / "run", region, args)
    with rasterio.open(artifact(out, "mask")) as src:
        mask = src.read(1)
    # The object point is inside, the background point (the hole's centre) outside.
    assert mask[CY - region[1], CX + 33 - region[0]] == 1
    assert mask[CY - region[1], CX - region[0]] == 0


def test_lonlat_output_is_wgs84_near_the_expected_place(utm_scene, tmp_path):
    region = (CX - 62, CY - 62, CX + 62, CY + 62)
    out = call(utm_scene, tmp_path / "run", region, {"lonlat": True})
    gj = json.loads(artifact(out, "vector").read_text())
    assert "crs" not in gj  # RFC 7946: WGS84 lon/lat is implied
    ring = np.array(gj["features"][0]["geometry"]["coordinates"][0])
    lon, lat = ring.mean(axis=0)
    want_x, want_y = ORIGIN @ (CX, CY)
    (elon,), (elat,) = warp_transform(UTM, "EPSG:4326", [want_x], [want_y])
    assert 14.9 < lon < 15.1 and 45.0 < lat < 45.3  # UTM 33N, x=500 km: 15 deg E
    assert lon == pytest.approx(elon, abs=2e-4) and lat == pytest.approx(elat, abs=2e-4)
    assert out.artifacts[1].crs == "EPSG:4326"
    assert "lon 15.0" in out.text and gj["features"][0]["properties"]["area_m2"] > 0


def test_non_georeferenced_png_gives_pixel_polygons(tmp_path, settings):
    import cv2

    img, truth = planted()
    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), np.moveaxis(img, 0, -1)[..., ::-1])
    scene = Scene.open(png, settings=settings, progress=False)
    assert not scene.georeferenced
    region = (CX - 62, CY - 62, CX + 62, CY + 62)
    out = call(scene, tmp_path / "run", region)
    gj = json.loads(artifact(out, "vector").read_text())
    assert "crs" not in gj and gj["zoomearth:frame"] == "pixel"
    (feat,) = gj["features"]
    assert "area_m2" not in feat["properties"]
    assert feat["properties"]["area_px"] == pytest.approx(truth.sum(), rel=0.05)
    ring = np.array(feat["geometry"]["coordinates"][0])
    # Full-resolution image pixels (not region-relative).
    assert ring[:, 0].min() == pytest.approx(CX - R_OUT, abs=2)
    assert ring[:, 1].max() == pytest.approx(CY + R_OUT, abs=2)
    assert "px" in out.text and "m2" not in out.text
    assert out.artifacts[0].crs is None and out.artifacts[1].crs is None


def test_nodata_pixels_are_nodata_in_the_mask(tmp_path, settings):
    img, _ = planted()
    img[:, :, :40] = 0  # nodata strip on the left
    path = tmp_path / "nodata.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=W,
        height=H,
        count=3,
        dtype="uint8",
        crs=UTM,
        transform=ORIGIN,
        nodata=0,
    ) as dst:
        dst.write(img)
    scene = Scene.open(path, settings=settings, progress=False)
    out = call(scene, tmp_path / "run", (20, CY - 62, CX + 62, CY + 62))
    with rasterio.open(artifact(out, "mask")) as src:
        mask = src.read(1)
    assert (mask[:, :20] == 255).all() and (mask[:, 25:] != 255).all()


# --------------------------------------------------------------------------------------------
# Bad arguments: errors the planner can act on
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"mode": "outline"}, ["mode", "'box'", "'points'", "'everything'"]),
        ({"mode": "points"}, ["needs at least one"]),
        ({"points": [[5, 5]]}, ["outside the region", "full-resolution pixel"]),
        ({"points": [[150, 150], [151, 150]], "point_labels": [1]}, ["one label"]),
        ({"target_box": [300, 300, 310, 310]}, ["does not overlap the region"]),
        ({"target_box": [200, 100, 100, 200]}, ["inverted"]),
        ({"mode": "everything"}, ["needs the SAM backend", "mode 'box'"]),
        ({"backend": "sam"}, ["not available", "sam_checkpoint"]),
        ({"simplify_px": -1}, ["simplify_px"]),
    ],
)
def test_bad_arguments_are_actionable(utm_scene, tmp_path, args, words):
    run_dir = tmp_path / "run"
    with pytest.raises(ToolInputError) as info:
        call(utm_scene, run_dir, (CX - 62, CY - 62, CX + 62, CY + 62), args)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_contract_kit():
    report = check_tool(Segmentation)
    assert report.ok
    assert report.result("above_limit").status == "passed"


# --------------------------------------------------------------------------------------------
# SAM through the production loader (tiny random model built offline)
# --------------------------------------------------------------------------------------------
# The tiny architecture the testing builder uses, as its .json file names it.
TINY = {"model_type": "vit_b", **TINY_SAM}


def build_tiny_sam_offline():
    """A tiny SAM assembled directly from ``segment_anything.modeling`` parts (not our builder)."""
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=64,
            img_size=256,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=4,
            out_chans=64,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=64,
            image_embedding_size=(16, 16),
            input_image_size=(256, 256),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=64, num_heads=2),
            transformer_dim=64,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("tiny_sam")
    model = build_tiny_sam_offline()
    ckpt = folder / "sam_tiny.pth"
    torch.save(model.state_dict(), ckpt)
    (folder / "sam_tiny.json").write_text(json.dumps(TINY))
    return ckpt, model


@pytest.fixture()
def sam_settings(settings, tiny_sam):
    return settings.model_copy(update={"sam_checkpoint": tiny_sam[0], "tool_device": "cpu"})


def test_production_loader_reproduces_the_tiny_model(tiny_sam):
    import torch

    ckpt, model = tiny_sam
    loaded = load_sam(ckpt, "vit_h", device="cpu")  # the JSON's model_type wins
    ref = model.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert loaded.image_encoder.img_size == 256 and not loaded.training


def test_presets_match_segment_anything_registry():
    import torch
    from segment_anything import sam_model_registry

    for name, preset in SAM_PRESETS.items():
        with torch.device("meta"):
            ours = build_sam(SamArchitecture(**preset)).state_dict()
            theirs = sam_model_registry[name]().state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_mismatched_architecture_file_is_a_clear_failure(tmp_path, tiny_sam, settings):
    import shutil

    ckpt = tmp_path / "broken.pth"
    shutil.copy(tiny_sam[0], ckpt)
    (tmp_path / "broken.json").write_text(json.dumps({**TINY, "encoder_depth": 3}))
    scene = Scene.open(write_scene(tmp_path / "s.tif"), settings=settings, progress=False)
    bad = settings.model_copy(update={"sam_checkpoint": ckpt, "tool_device": "cpu"})
    with pytest.raises(ToolFailure) as info:
        call(
            scene,
            tmp_path / "run",
            (100, 100, 200, 200),
            settings=bad,
            pool=ModelPool(budgets={"cpu": 2**30}),
        )
    assert "broken.json" in str(info.value) and "does not match" in str(info.value)


def test_sam_box_and_points_reuse_one_embedding(tmp_path, sam_settings):
    pool = ModelPool(budgets={"cpu": 2**30})
    scene = Scene.open(write_scene(tmp_path / "s.tif"), settings=sam_settings, progress=False)
    spec = sam_model_spec(sam_settings.sam_checkpoint, sam_settings.sam_model_type)
    calls = []
    with pool.use(spec, "cpu") as model:  # the pooled model the tool will use
        model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    tool = Segmentation()
    region = (CX - 62, CY - 62, CX + 62, CY + 62)

    first = call(scene, tmp_path / "run", region, {}, tool=tool, pool=pool)
    second = call(
        scene,
        tmp_path / "run",
        region,
        {"mode": "points", "points": [[CX + 30, CY]], "target_box": [100, 100, 200, 200]},
        tool=tool,
        pool=pool,
    )
    assert len(calls) == 1 and tool.embeddings_computed == 1
    assert not first.data["embedding_reused"] and second.data["embedding_reused"]
    for out in (first, second):
        assert out.data["backend"] == "sam"
        with rasterio.open(artifact(out, "mask")) as src:
            assert src.shape == (124, 124) and src.crs.to_string() == UTM
            assert set(np.unique(src.read(1))) <= {0, 1}
        assert artifact(out, "vector").is_file() and artifact(out, "preview").is_file()
        assert out.text.startswith(("Segmentation (SAM", "Segmentation (SAM"))
    assert pool.stats().model(spec.key).loads == 1

    # Another region is another embedding.
    call(scene, tmp_path / "run", (0, 0, 100, 100), {}, tool=tool, pool=pool)
    assert len(calls) == 2 and tool.embeddings_computed == 2


def test_sam_everything_writes_a_label_map(tmp_path, sam_settings):
    pool = ModelPool(budgets={"cpu": 2**30})
    scene = Scene.open(write_scene(tmp_path / "s.tif"), settings=sam_settings, progress=False)
    out = call(
        scene,
        tmp_path / "run",
        (40, 30, 280, 270),
        {"mode": "everything", "points_per_side": 4, "min_area_px": 0},
        pool=pool,
    )
    assert out.data["mode"] == "everything" and out.data["backend"] == "sam"
    with rasterio.open(artifact(out, "mask")) as src:
        labels = src.read(1)
        assert labels.shape == (240, 240) and src.nodata in (255, 65535)
    gj = json.loads(artifact(out, "vector").read_text())
    assert len(gj["features"]) == out.data["regions"]
    assert {f["properties"]["label"] for f in gj["features"]} <= set(np.unique(labels).tolist())
    assert "everything" in out.text


def test_sam_missing_checkpoint_falls_back_to_grabcut_with_a_note(tmp_path, settings):
    cfg = settings.model_copy(update={"sam_checkpoint": tmp_path / "nope.pth"})
    scene = Scene.open(write_scene(tmp_path / "s.tif"), settings=cfg, progress=False)
    out = call(scene, tmp_path / "run", (CX - 62, CY - 62, CX + 62, CY + 62))
    assert out.data["backend"] == "grabcut"
    assert any("nope.pth" in w and "GrabCut" in w for w in out.warnings)


# --------------------------------------------------------------------------------------------
# A real NAIP tile, end to end through the command line
# --------------------------------------------------------------------------------------------
def test_naip_tile_end_to_end_cli(shared_data, tmp_path):
    naip = shared_data / "naip" / "m_4709963_se_14_1_20200831.tif"
    if not naip.is_file():
        pytest.skip(f"{naip} not present")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOMEARTH_")} | {
        "ZOOMEARTH_DATA_DIR": str(tmp_path / "data"),
        "ZOOMEARTH_CACHE_DIR": str(tmp_path / "c"),
    }
    box = (485, 230, 580, 305)  # a dark pond in fields (5 m pixels)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            ENTRY,
            "tool",
            "segmentation",
            str(naip),
            "--box",
            ",".join(map(str, box)),
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    kinds = {a["kind"]: a for a in result["artifacts"]}
    assert set(kinds) == {"mask", "vector", "preview"}
    assert kinds["mask"]["crs"] == "EPSG:26914"
    with rasterio.open(kinds["mask"]["path"]) as m, rasterio.open(naip) as src:
        mask = m.read(1)
        window = rasterio.windows.Window(box[0], box[1], box[2] - box[0], box[3] - box[1])
        pixels = src.read(window=window).astype(float)
        assert m.transform == src.window_transform(window)
    water = mask == 1
    assert 0.15 < water.mean() < 0.8
    # GrabCut saw only RGB; open water is what absorbs near-infrared (band 4), so the NIR
    # threshold is an independent truth for the pond.
    truth = pixels[3] < 100
    assert (water & truth).sum() / (water | truth).sum() > 0.7
    assert (pixels[:3, water].mean(axis=1) < pixels[:3, ~water].mean(axis=1)).all()
    assert result["data"]["area_m2_total"] == pytest.approx(water.sum() * 25.0, rel=0.05)
    assert "EPSG:26914" in result["text"] and "m2" in result["text"]


# --------------------------------------------------------------------------------------------
# Vectorisation helper, backend listing, light import
# --------------------------------------------------------------------------------------------
def test_polygons_keep_holes_and_measure_in_each_kind_of_crs():
    from rasterio.crs import CRS

    from zoomearth.tools._polygons import mask_to_polygons, polygons_to_geojson

    mask = np.zeros((120, 120), np.uint8)
    mask[10:110, 10:110] = 1
    mask[40:60, 40:60] = 0  # a hole
    mask[0:2, 115:117] = 1  # a speck
    polys = mask_to_polygons(mask, offset=(1000, 2000), simplify_px=0.5, min_area_px=5)
    assert len(polys) == 1 and polys[0].area_px == 100 * 100 - 20 * 20
    assert len(polys[0].geometry.interiors) == 1
    assert polys[0].geometry.bounds == (1010.0, 2010.0, 1110.0, 2110.0)

    # Geographic CRS: square metres through an equal-area projection (1e-4 deg pixels at 45 N).
    geo = polygons_to_geojson(
        polys, transform=Affine(1e-4, 0, 10.0, 0, -1e-4, 45.3), crs=CRS.from_epsg(4326)
    )
    lat = 45.3 - 2060 * 1e-4
    expect = 9600 * (1e-4 * 111_320 * np.cos(np.radians(lat))) * (1e-4 * 111_132)
    assert geo.areas_m2[0] == pytest.approx(expect, rel=0.01)
    assert "crs" not in geo.collection  # EPSG:4326 needs no crs member

    # Projected CRS in US survey feet: the unit is converted to square metres.
    feet = polygons_to_geojson(
        polys, transform=Affine(1.0, 0, 0, 0, -1.0, 0), crs=CRS.from_epsg(2264)
    )
    assert feet.areas_m2[0] == pytest.approx(9600 * 0.3048006**2, rel=1e-4)
    assert feet.collection["crs"]["properties"]["name"].endswith("EPSG::2264")


def test_backend_status_follows_the_settings(tiny_sam, monkeypatch, tmp_path):
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("ZOOMEARTH_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.delenv("ZOOMEARTH_SAM_CHECKPOINT", raising=False)
    status = {b.name: b for b in Segmentation.backend_status()}
    assert status["grabcut"].available and not status["sam"].available
    assert "sam_checkpoint is not set" in status["sam"].detail
    monkeypatch.setenv("ZOOMEARTH_SAM_CHECKPOINT", str(tiny_sam[0]))
    status = {b.name: b for b in Segmentation.backend_status()}
    assert status["sam"].available and "sam_tiny.pth" in status["sam"].detail


def test_import_is_light():
    code = (
        "import sys, zoomearth.tools.segmentation, zoomearth.tools._polygons; "
        "heavy = {'torch', 'cv2', 'shapely', 'segment_anything'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
