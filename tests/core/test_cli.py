"""The ``zoomearth`` command line: scene commands, clear errors, light start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.scene.rasters import write_raster


def run_cli(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_info_json(tmp_path):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    info = json.loads(run_cli("info", str(tif), "--json").stdout)
    assert info["width"] == 64 and info["crs"] == "EPSG:32633"


def test_info_text(tmp_path):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    out = run_cli("info", str(tif)).stdout
    assert "64 x 48 px, 3 band(s), uint8" in out and "EPSG:32633" in out


def test_view_overview_and_box(tmp_path):
    tif = write_raster(tmp_path / "a.tif", 400, 200, 3, block=64)
    out = tmp_path / "ov.png"
    run_cli("view", str(tif), "--side", "100", "-o", str(out))
    assert Image.open(out).size == (100, 50)
    crop = tmp_path / "crop.png"
    proc = run_cli("view", str(tif), "--box", "10,20,74,84", "-o", str(crop))
    assert Image.open(crop).size == (64, 64)
    assert "[10, 20, 74, 84]" in proc.stdout


def test_view_clipped_box_warns(tmp_path):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    proc = run_cli("view", str(tif), "--box=-10,-10,20,20", "-o", str(tmp_path / "c.png"))
    assert "clipped" in proc.stderr
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (20, 20, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "missing.tif"], "No such image"),
        (["view", "{tif}", "--box", "30,30,10,10", "-o", "x.png"], "inverted"),
        (["view", "{tif}", "--box", "1,2,3", "-o", "x.png"], "four numbers"),
        (["view", "{tif}", "--side", "0", "-o", "x.png"], "max_side"),
        (["--set", "bogus=1", "info", "{tif}"], "Unknown setting"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, args, message):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    argv = [a.replace("{tif}", str(tif)) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_view_refuses_to_overwrite_input(tmp_path):
    png = write_raster(tmp_path / "a.png", 64, 48, 3, driver="PNG", georef=False)
    before = png.read_bytes()
    proc = run_cli("view", str(png), "-o", str(png), check=False)
    assert proc.returncode == 2 and "input" in proc.stderr
    assert png.read_bytes() == before


def test_prepare_and_cache_commands(tmp_path):
    png = write_raster(tmp_path / "big.png", 700, 300, 3, driver="PNG", georef=False)
    env = {"ZOOMEARTH_CACHE_DIR": str(tmp_path / "cache")}
    out = run_cli("prepare", str(png), env=env).stdout
    assert "prepared copy" in out
    entries = json.loads(run_cli("cache", "list", "--json", env=env).stdout)
    assert len(entries) == 1 and entries[0]["source"] == str(png.resolve())
    run_cli("cache", "clear", env=env)
    assert json.loads(run_cli("cache", "list", "--json", env=env).stdout) == []


def test_scene_commands_do_not_import_torch(tmp_path):
    tif = write_raster(tmp_path / "a.tif", 64, 48, 3)
    code = (
        "import sys; from zoomearth.cli import main; "
        f"main(['info', {str(tif)!r}]); main(['view', {str(tif)!r}, '-o', {str(tmp_path / 'v.png')!r}]); "
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'langgraph') if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_models_command_shows_budget_from_settings():
    out = json.loads(run_cli("--set", "model_pool_budget_bytes=123456789", "models", "--json").stdout)
    assert out["budgets"]["cpu"] == 123456789
    assert out["stats"]["misses"] == 0
    text = run_cli("--set", "model_pool_budget_bytes=123456789", "models").stdout
    assert "setting model_pool_budget_bytes (flag)" in text
