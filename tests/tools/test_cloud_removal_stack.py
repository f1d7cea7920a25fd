"""``cloud_removal`` on a time stack: the stack's other dates are the composite's inputs.

The cloudy image is the 2020 NAIP tile with synthetic clouds (as in test_cloud_removal.py); its
stack holds 2009 and 2014 as they are and 2017 **reprojected to Web Mercator at 1.5x the pixel
size** -- another CRS and grid, which the stack reads warped onto the cloudy image's pixels. No
``others`` argument is given. Explicit ``others`` in another CRS are read the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from tests.tools.test_cloud_removal import (
    by_name,
    iou,
    make_settings,
    naip,
    psnr,
    write_cloudy_naip,
)
from zoomearth.scene import Scene
from zoomearth.scene.stack import SceneStack
from zoomearth.tools import ToolContext, ToolInputError, run_tool
from zoomearth.tools._cloudmask import CLOUD
from zoomearth.tools.cloud_removal import CloudRemoval


def to_mercator(src: Path, out: Path, scale: float = 1.5) -> Path:
    """``src`` in EPSG:3857 with pixels ``scale`` times larger (bilinear), nodata 0."""
    with rasterio.open(src) as ds:
        transform, width, height = calculate_default_transform(
            ds.crs, "EPSG:3857", ds.width, ds.height, *ds.bounds
        )
        transform = transform @ Affine.scale(scale)
        width, height = int(width / scale) + 1, int(height / scale) + 1
        data = np.zeros((ds.count, height, width), ds.dtypes[0])
        reproject(ds.read(), data, src_transform=ds.transform, src_crs=ds.crs,
                  dst_transform=transform, dst_crs="EPSG:3857",
                  resampling=Resampling.bilinear, dst_nodata=0)  # fmt: skip
        profile = {**ds.profile, "driver": "GTiff", "crs": "EPSG:3857", "transform": transform,
                   "width": width, "height": height, "nodata": 0,
                   "photometric": "MINISBLACK"}  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


@pytest.fixture()
def cloudy_stack(tmp_path: Path, shared_data: Path):
    src = tmp_path / "src"
    src.mkdir()
    clean, cloudy, truth = write_cloudy_naip(shared_data, src / "cloudy_20200831.tif")
    merc = to_mercator(naip(shared_data, "20170827"), src / "merc_20170827.tif")
    settings = make_settings(tmp_path, [shared_data, src])
    stack = SceneStack.from_sources(
        src / "cloudy_20200831.tif",
        [naip(shared_data, "20090818"), naip(shared_data, "20140720"), merc],
        settings=settings,
    )
    return stack, settings, clean, cloudy, truth, merc


def test_stack_dates_fill_the_clouds_without_others(cloudy_stack, tmp_path: Path) -> None:
    stack, settings, clean, cloudy, truth, _ = cloudy_stack
    assert stack.labels == ("2009-08-18", "2014-07-20", "2017-08-27", "2020-08-31")
    assert not stack.on_reference_grid(2)  # the Mercator date
    scene = stack.reference
    ctx = ToolContext(scene=scene, run_dir=tmp_path / "run", settings=settings, stack=stack)
    out = run_tool(CloudRemoval(), ctx, {})
    assert out.data["method"] == "composite" and out.data["dates_composited"] == 3
    # Closest date first.
    assert out.data["stack_dates"] == ["2017-08-27", "2014-07-20", "2009-08-18"]
    assert "from the time stack (2017-08-27, 2014-07-20, 2009-08-18)" in out.text
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
        assert ds.crs == scene.crs and ds.transform == scene.transform
    with rasterio.open(by_name(out, "cloudmask.tif")) as ds:
        mask = ds.read(1)
    with rasterio.open(by_name(out, "synthetic.tif")) as ds:
        synthetic = ds.read(1)
    gain = psnr(result, clean) - psnr(cloudy, clean)
    print(f"\nNAIP stack composite (one date in EPSG:3857 at 7.5 m): gain {gain:.2f} dB")
    assert gain >= 3.0
    assert iou(mask == CLOUD, truth) > 0.5
    assert np.mean(synthetic == 1) < 0.01  # every cloud seen clear by some date

    # method 'single' ignores the stack; 'composite' on a one-date scene says what to give.
    single = run_tool(CloudRemoval(), ctx, {"method": "single", "name": "single"})
    assert single.data["dates_composited"] == 0 and single.data["method"] == "single"
    alone = ToolContext(scene=scene, run_dir=tmp_path / "run", settings=settings)
    with pytest.raises(ToolInputError, match="time stack"):
        run_tool(CloudRemoval(), alone, {"method": "composite"})


def test_explicit_other_in_another_crs_is_read_warped(cloudy_stack, tmp_path: Path) -> None:
    stack, settings, clean, cloudy, truth, merc = cloudy_stack
    scene = Scene.open(stack.reference.path, settings=settings, progress=False)
    ctx = ToolContext(scene=scene, run_dir=tmp_path / "run", settings=settings)
    out = run_tool(CloudRemoval(), ctx, {"others": [str(merc)]})
    assert out.data["dates_composited"] == 1 and out.data["stack_dates"] == []
    with rasterio.open(by_name(out, "cloudfree.tif")) as ds:
        result = ds.read()
    gain = psnr(result, clean) - psnr(cloudy, clean)
    assert gain >= 2.0, gain


def test_stack_date_with_other_bands_is_left_out_with_a_note(
    cloudy_stack, tmp_path: Path
) -> None:
    stack, settings, *_ = cloudy_stack
    three = tmp_path / "src" / "rgb_20190601.tif"
    with rasterio.open(naip(Path(stack.dates[0].source).parent.parent, "20090818")) as ds:
        profile = {**ds.profile, "count": 3, "photometric": "RGB"}
        data = ds.read([1, 2, 3])
    with rasterio.open(three, "w", **profile) as dst:
        dst.write(data)
    mixed = SceneStack.from_sources(
        stack.reference.path, [stack.dates[0].source, three], settings=settings
    )
    ctx = ToolContext(scene=mixed.reference, run_dir=tmp_path / "run", settings=settings,
                      stack=mixed)  # fmt: skip
    out = run_tool(CloudRemoval(), ctx, {})
    assert out.data["stack_dates"] == ["2009-08-18"]
    assert any("2019-06-01 has 3 band(s)" in w for w in out.warnings)
