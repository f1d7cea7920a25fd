"""Tests of the synthetic scene generator (small scenes only; big ones are benchmarks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from zoomearth.scene import synth
from zoomearth.scene.synth import (
    COMPLETE_LABELS,
    LABELS,
    SIDECAR_SCHEMA,
    SYNTH_FORMAT,
    SyntheticScene,
    SynthResult,
    generate_scene,
    load_sidecar,
    main,
    sidecar_path_for,
)

SEED = 7


def _pixels_sha(path: Path) -> str:
    with rasterio.open(path) as ds:
        return hashlib.sha256(ds.read().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def clear_scene(out_dir: Path) -> SynthResult:
    return generate_scene(out_dir / "clear.tif", 2048, seed=SEED)


@pytest.fixture(scope="module")
def cloudy_scene(out_dir: Path) -> SynthResult:
    return generate_scene(out_dir / "cloudy.tif", (1536, 1280), seed=SEED + 1, clouds=0.3)


def test_scene_is_a_georeferenced_tiled_overviewed_geotiff(clear_scene: SynthResult) -> None:
    assert clear_scene.image_path.name == "clear.tif"
    assert clear_scene.mask_path is None and clear_scene.cloud_fraction is None
    with rasterio.open(clear_scene.image_path) as ds:
        assert (ds.width, ds.height, ds.count) == (2048, 2048, 3)
        assert ds.dtypes == ("uint8",) * 3
        assert ds.crs.to_epsg() == 32633
        assert ds.transform.almost_equals(rasterio.Affine(0.5, 0, 500000, 0, -0.5, 5000000))
        assert ds.block_shapes == [(512, 512)] * 3
        assert ds.profile["compress"] == "jpeg" and ds.profile["photometric"] == "ycbcr"
        assert ds.overviews(1) == [2, 4, 8]
        assert ds.tags()["ZOOMEARTH_SYNTH"] == SYNTH_FORMAT
    # Nothing else (no temporary files) beside the outputs.
    names = sorted(p.name for p in clear_scene.image_path.parent.iterdir() if "clear" in p.name)
    assert names == ["clear.json", "clear.tif"]


def test_sidecar_follows_the_schema(clear_scene: SynthResult, cloudy_scene: SynthResult) -> None:
    jsonschema.Draft202012Validator.check_schema(SIDECAR_SCHEMA)
    for res in (clear_scene, cloudy_scene):
        doc = load_sidecar(res.sidecar_path)
        assert doc["format"] == SYNTH_FORMAT
        assert doc["image"] == res.image_path.name
        assert doc["size"] == list(res.size)
        assert doc["crs"] == "EPSG:32633"
        assert doc["complete_labels"] == list(COMPLETE_LABELS)
        assert [o["id"] for o in doc["objects"]] == list(range(len(res.objects)))
    assert json.loads(clear_scene.sidecar_path.read_text())["clouds"] is None
    bad = json.loads(clear_scene.sidecar_path.read_text())
    bad["objects"].append({"id": 99, "label": "dragon", "box_xyxy": [0, 0, 1, 1]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SIDECAR_SCHEMA)


def test_same_seed_same_pixels_whatever_the_tile_size(
    out_dir: Path, clear_scene: SynthResult
) -> None:
    again = generate_scene(out_dir / "again.tif", 2048, seed=SEED, tile=256)
    assert _pixels_sha(again.image_path) == _pixels_sha(clear_scene.image_path)
    assert again.objects == clear_scene.objects
    other = generate_scene(out_dir / "other.tif", 1024, seed=SEED + 100)
    with rasterio.open(other.image_path) as a, rasterio.open(clear_scene.image_path) as b:
        assert not np.array_equal(a.read(), b.read(window=Window(0, 0, 1024, 1024)))


def test_render_is_independent_of_the_window() -> None:
    scene = SyntheticScene(900, seed=3, clouds=0.25)
    whole, whole_mask = scene.render((0, 0, 900, 900))
    part, part_mask = scene.render(Window(333, 101, 250, 417))
    np.testing.assert_array_equal(part, whole[:, 101:518, 333:583])
    assert whole_mask is not None and part_mask is not None
    np.testing.assert_array_equal(part_mask, whole_mask[101:518, 333:583])


def test_objects_are_inside_and_visible(clear_scene: SynthResult) -> None:
    objects = clear_scene.objects
    assert len(objects) >= 5
    assert {o.label for o in objects} <= set(LABELS)
    w, h = clear_scene.size
    plain = SyntheticScene(2048, seed=SEED, draw_objects=False)
    assert plain.objects == ()
    with rasterio.open(clear_scene.image_path) as ds:
        for o in objects:
            x1, y1, x2, y2 = o.box_xyxy
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, o
            assert 8 <= max(x2 - x1, y2 - y1) <= 260, o
            win = Window(x1, y1, x2 - x1, y2 - y1)
            drawn = ds.read(window=win).astype(np.int16)
            background, _ = plain.render(win)
            diff = np.abs(drawn - background.astype(np.int16)).max(axis=0)
            # The object covers a good part of its box (thin diagonal ships ~20 %) and stands
            # out from what was there.
            assert (diff > 25).mean() > 0.15, o
    # No two planted objects overlap.
    boxes = np.array([o.box_xyxy for o in objects])
    for i, a in enumerate(boxes):
        others = np.delete(boxes, i, axis=0)
        inter = (np.minimum(a[2], others[:, 2]) > np.maximum(a[0], others[:, 0])) & (
            np.minimum(a[3], others[:, 3]) > np.maximum(a[1], others[:, 1])
        )
        assert not inter.any()


def test_cloud_fraction_and_mask(cloudy_scene: SynthResult) -> None:
    res = cloudy_scene
    assert res.mask_path is not None and res.mask_path.name == "cloudy.clouds.tif"
    assert res.cloud_fraction == pytest.approx(0.3, abs=0.03)
    doc = load_sidecar(res.sidecar_path)
    assert doc["clouds"]["mask"] == "cloudy.clouds.tif"
    assert doc["clouds"]["fraction"] == pytest.approx(res.cloud_fraction, abs=1e-6)
    with rasterio.open(res.mask_path) as m, rasterio.open(res.image_path) as img:
        mask = m.read(1)
        assert m.profile["compress"] == "deflate" and m.block_shapes == [(512, 512)]
        assert m.transform == img.transform and m.crs == img.crs
        assert set(np.unique(mask)) <= {0, 1}
        assert mask.mean() == pytest.approx(res.cloud_fraction, abs=1e-9)
        brightness = img.read().astype(np.float32).mean(axis=0)
    cloud, clear = brightness[mask == 1], brightness[mask == 0]
    assert cloud.mean() > 195
    assert (cloud > 170).mean() > 0.9
    assert clear.mean() < cloud.mean() - 60
    for o in res.objects:
        assert o.cloud_fraction is not None and 0.0 <= o.cloud_fraction <= 1.0


def test_plausible_compression(out_dir: Path) -> None:
    res = generate_scene(out_dir / "big.tif", 4096, seed=SEED + 2)
    per_px = res.image_path.stat().st_size / (4096 * 4096)
    # Measured 0.25-0.30 bytes/px at quality 90 (white noise would be ~2, a flat image ~0.01).
    assert 0.08 < per_px < 1.0


def test_four_band_uint16_scene(out_dir: Path) -> None:
    res = generate_scene(out_dir / "nir.tif", 600, seed=1, bands=4, dtype="uint16")
    with rasterio.open(res.image_path) as ds:
        assert ds.count == 4 and ds.dtypes == ("uint16",) * 4
        assert ds.profile["compress"] == "deflate"
        data = ds.read()
    assert data.max() <= 255 * 16 and np.all(data % 16 == 0)
    assert load_sidecar(res.sidecar_path)["bands"] == ["red", "green", "blue", "nir"]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clouds"):
        generate_scene(tmp_path / "x.tif", 256, clouds=1.5)
    with pytest.raises(ValueError, match="bands"):
        generate_scene(tmp_path / "x.tif", 256, bands=2)
    with pytest.raises(ValueError, match="64 px"):
        generate_scene(tmp_path / "x.tif", 10)
    with pytest.raises(ValueError, match="tile"):
        generate_scene(tmp_path / "x.tif", 256, tile=100)
    with pytest.raises(ValueError, match="seed"):
        SyntheticScene(256, seed=-1)
    with pytest.raises(ValueError, match="not inside"):
        SyntheticScene(256).render((200, 0, 100, 100))
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli.tif"), "--size", "512", "--seed", "2", "--no-progress"]) == 0
    assert "512x512 px" in capsys.readouterr().out
    assert sidecar_path_for(tmp_path / "cli.tif") == tmp_path / "cli.json"
    assert load_sidecar(tmp_path / "cli.json")["seed"] == 2


def test_point_and_grid_noise_agree() -> None:
    # Object placement samples the layout at points; rendering on grids. Same arithmetic.
    xs = np.arange(1000, 1300, dtype=np.float64) + 0.5
    ys = np.arange(77, 260, dtype=np.float64) + 0.5
    key = synth._key(5, 1)
    grid = synth._noise_grid(key, xs, ys, 16.0)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    pts = synth._noise_points(key, xx.ravel(), yy.ravel(), 16.0).reshape(grid.shape)
    np.testing.assert_array_equal(grid, pts)
    assert -1.0 <= grid.min() < -0.5 and 0.5 < grid.max() <= 1.0


def test_more_pixels_than_allowed_is_refused_before_any_work(tmp_path: Path) -> None:
    from zoomearth.errors import SceneTooLargeError

    out = tmp_path / "sub" / "huge.tif"
    # A 300,000 x 200,000 px layout would take minutes: the refusal comes first.
    with pytest.raises(SceneTooLargeError) as info:
        generate_scene(out, (300_000, 200_000), max_pixels=10**9)
    assert "300,000 x 200,000 px scene has 60,000,000,000 pixels" in str(info.value)
    assert "setting max_image_pixels" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_run_removes_what_a_killed_run_left_of_its_outputs(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from zoomearth.temporaries import HOST_TAG

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    litter = [
        f".s.tif.tmp-{HOST_TAG}-{dead.pid}-0123456789ab.tif",
        f".s.clouds.tif.tmp-{HOST_TAG}-{dead.pid}-0123456789ab.tif",  # even without clouds now
        f".s.json.tmp-{HOST_TAG}-{dead.pid}-0123456789ab.json",
    ]
    live = f".s.tif.tmp-{HOST_TAG}-{os.getppid()}-0123456789ab.tif"  # a live writer's: kept
    for name in [*litter, live]:
        (tmp_path / name).write_bytes(b"partial")
    generate_scene(tmp_path / "s.tif", 128, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, "s.json", "s.tif"])
