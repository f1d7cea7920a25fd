"""``zoomearth tools`` and ``zoomearth tool``, run as the console script does (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from tests.scene.rasters import write_raster

# Exactly what the installed `zoomearth` console script runs.
ENTRY = "import sys; from zoomearth.cli import main; sys.exit(main())"


def zoomearth(*args: str, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_tools_json_lists_builtin_and_example_plugin():
    listing = json.loads(zoomearth("tools", "--json").stdout)
    rows = {r["name"]: r for r in listing["tools"]}
    assert rows["export_region"]["source"] == "builtin"
    assert "brightness_stats" in rows, (
        "the example plugin is not installed: pip install -e tests/plugins/example_plugin"
    )
    plugin = rows["brightness_stats"]
    assert plugin["package"] == "zoomearth-example-plugin" and plugin["source"] == "plugin"
    assert plugin["backends"] == [
        {"name": "numpy", "available": True, "detail": plugin["backends"][0]["detail"]}
    ]
    assert "bands" in plugin["arguments"]["properties"]
    assert listing["warnings"] == []


def test_tools_table_and_details():
    table = zoomearth("tools").stdout
    assert "export_region" in table and "zoomearth-example-plugin 0.1.0 [plugin]" in table
    detail = zoomearth("tools", "export_region").stdout
    assert "2048 px a side, streams larger regions" in detail
    assert "bands (list of integer >= 1 or null, default null)" in detail
    proc = zoomearth("tools", "no_such_tool", check=False)
    assert proc.returncode == 2 and "Available tools:" in proc.stderr


def test_tool_export_region_writes_aligned_geotiff(tmp_path):
    src = write_raster(tmp_path / "scene.tif", 200, 120, 3, nodata=0)
    out_dir = tmp_path / "out"
    proc = zoomearth(
        "tool", "export_region", str(src), "--box", "30,20,130,90", "--out", str(out_dir), "--json"
    )
    outcome = json.loads(proc.stdout)
    assert outcome["run_dir"] == str(out_dir.resolve())
    assert outcome["region_xyxy"] == [30, 20, 130, 90]
    raster, preview = outcome["artifacts"]
    assert raster["kind"] == "raster" and preview["kind"] == "preview"
    assert outcome["preview_id"] == preview["id"]
    with rasterio.open(src) as s, rasterio.open(raster["path"]) as o:
        win = Window(30, 20, 100, 70)
        assert o.crs == s.crs and o.nodata == s.nodata and o.count == 3
        assert o.transform.almost_equals(window_transform(win, s.transform))
        assert (o.width, o.height) == (100, 70) and o.profile["tiled"]
        np.testing.assert_array_equal(o.read(), s.read(window=win))
    assert raster["crs"] == "EPSG:32633"
    assert src.stat().st_size > 0 and sorted(p.suffix for p in out_dir.glob("*-region.*")) == [
        ".png",
        ".tif",
    ]


def test_tool_text_output_and_arguments(tmp_path):
    src = write_raster(tmp_path / "scene.tif", 64, 48, 4)
    proc = zoomearth(
        "tool",
        "brightness_stats",
        str(src),
        "--args",
        '{"bands": [2, 4]}',
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.stdout.startswith("Statistics of region [0, 0, 64, 48] (uint8): band 2: mean")
    assert "artifact:1" in proc.stdout and "band 4" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--args", '{"bands": [9]}'], "band(s) 9 do not exist"),
        (["--args", '{"colour": 1}'], "has no argument 'colour'. Valid arguments: bands"),
        (["--args", "[1]"], "--args must be a JSON object"),
        (["--args", "{bad"], "invalid JSON"),
        (["--box", "500,500,600,600"], "lies entirely outside the image"),
    ],
)
def test_tool_errors_are_one_clear_line(tmp_path, extra, message):
    src = write_raster(tmp_path / "scene.tif", 64, 48, 3)
    proc = zoomearth(
        "tool", "export_region", str(src), "--out", str(tmp_path / "run"), *extra, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").glob("*.tif"))  # nothing written for a refused call


def test_tool_on_real_scene(shared_data, tmp_path):
    src = shared_data / "rasterio" / "RGB.byte.tif"
    if not src.exists():
        pytest.skip(f"{src} not present")
    before = src.stat().st_mtime_ns
    outcome = json.loads(
        zoomearth(
            "tool",
            "export_region",
            str(src),
            "--box",
            "100,200,612,456",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ).stdout
    )
    with rasterio.open(src) as s, rasterio.open(outcome["artifacts"][0]["path"]) as o:
        win = Window(100, 200, 512, 256)
        assert o.transform.almost_equals(window_transform(win, s.transform)) and o.crs == s.crs
        np.testing.assert_array_equal(o.read(), s.read(window=win))
    assert src.stat().st_mtime_ns == before


# -- issue #13 -------------------------------------------------------------------------------
def test_tool_with_relative_out_from_another_directory(tmp_path):
    """`zoomearth tool export_region small.tif --out toolrun` used to exit 2 (toolrun/toolrun)."""
    write_raster(tmp_path / "small.tif", 64, 48, 3)
    proc = zoomearth(
        "tool", "export_region", "small.tif", "--out", "toolrun", "--json", cwd=tmp_path
    )
    outcome = json.loads(proc.stdout)
    assert outcome["run_dir"] == str(tmp_path / "toolrun")
    assert outcome["artifacts"] and all(
        os.path.isfile(a["path"]) and os.path.dirname(a["path"]) == str(tmp_path / "toolrun")
        for a in outcome["artifacts"]
    )
    assert not (tmp_path / "toolrun" / "toolrun").exists()
    text = zoomearth("tool", "export_region", "small.tif", "--out", "run1", cwd=tmp_path).stdout
    assert f"run directory: {tmp_path / 'run1'}" in text


def test_tool_allows_the_paths_typed_on_the_command_line(tmp_path):
    """`--args '{"others": [...]}'` next to the input works without allowed_roots."""
    import shutil

    folder = tmp_path / "dir with space"
    folder.mkdir()
    src = write_raster(folder / "ñandú é.tif", 64, 48, 3)
    shutil.copy(src, folder / "ñandú é 2.tif")
    args = json.dumps({"others": ["dir with space/ñandú é 2.tif"], "method": "composite"})
    proc = zoomearth(
        "tool",
        "cloud_removal",
        "dir with space/ñandú é.tif",
        "--args",
        args,
        "--out",
        "out dir",
        "--json",
        cwd=tmp_path,
    )
    outcome = json.loads(proc.stdout)
    assert outcome["artifacts"] and all(os.path.isfile(a["path"]) for a in outcome["artifacts"])
    assert outcome["run_dir"] == str(tmp_path / "out dir")
    # The same arguments from an @file are typed by the user too.
    (tmp_path / "args.json").write_text(args, encoding="utf-8")
    proc = zoomearth(
        "tool",
        "cloud_removal",
        "dir with space/ñandú é.tif",
        "--args",
        "@args.json",
        "--out",
        "out2",
        cwd=tmp_path,
    )
    assert f"run directory: {tmp_path / 'out2'}" in proc.stdout


def test_cli_tools_imports_cleanly_and_registers_both_commands():
    """cli.py must not hide an import error of cli_tools (issue #13): import it on its own."""
    code = (
        "import zoomearth.cli_tools as m, zoomearth.cli as c; c.build_parser(); "
        "assert {'tool', 'tools'} <= set(c._COMMANDS), sorted(c._COMMANDS); "
        "assert m.cmd_tool is c._COMMANDS['tool']"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
