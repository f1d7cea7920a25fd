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
from zoomearth.cli import build_parser, main


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
    png = str(tmp_path / "v.png")
    code = (
        "import sys; from zoomearth.cli import main; "
        f"main(['info', {str(tif)!r}]); main(['view', {str(tif)!r}, '-o', {png!r}]); "
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'langgraph') "
        "if m in sys.modules]; "
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_models_command_shows_budget_from_settings():
    flag = "model_pool_budget_bytes=123456789"
    out = json.loads(run_cli("--set", flag, "models", "--json").stdout)
    assert out["budgets"]["cpu"] == 123456789
    assert out["stats"]["misses"] == 0
    text = run_cli("--set", "model_pool_budget_bytes=123456789", "models").stdout
    assert "setting model_pool_budget_bytes (flag)" in text


# ---- --set / --config before and after the subcommand (issue #13) ----------------------------


def _config_rows(capsys, argv: list[str]) -> dict[str, dict]:
    assert main([*argv, "--json"]) == 0
    return {r["key"]: r for r in json.loads(capsys.readouterr().out)}


def test_set_after_the_subcommand(capsys):
    rows = _config_rows(capsys, ["config", "--set", "max_steps=3"])
    assert rows["max_steps"]["value"] == 3 and rows["max_steps"]["source"] == "flag"


def test_set_before_and_after_merge_and_the_later_wins(capsys):
    argv = ["--set", "max_steps=2", "--set", "min_crop=300", "config", "--set", "max_steps=5"]
    rows = _config_rows(capsys, argv)
    assert rows["max_steps"]["value"] == 5  # the subcommand's value wins
    assert rows["min_crop"]["value"] == 300  # the global one still applies


def test_config_after_the_subcommand_wins(tmp_path, capsys):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text("min_crop = 640\nmax_steps = 4\n")
    second.write_text("min_crop = 700\n")
    rows = _config_rows(capsys, ["--config", str(first), "config", "--config", str(second)])
    assert rows["min_crop"]["value"] == 700 and rows["min_crop"]["source"] == "file"
    assert rows["max_steps"]["value"] != 4  # one file is read: the one after the command
    rows = _config_rows(capsys, ["--config", str(first), "config"])
    assert rows["min_crop"]["value"] == 640


def test_unknown_setting_after_the_subcommand_is_one_clear_line(tmp_path):
    proc = run_cli("config", "--set", "bogus=1", check=False)
    assert proc.returncode == 2 and "Unknown setting" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["ask", "img.tif", "what is here?", "--set", "max_steps=3"],
        ["info", "img.tif", "--set", "max_steps=3"],
        ["planner", "inputs", "img.tif", "what?", "--out", "o", "--set", "max_steps=3"],
        ["planner", "--set", "max_steps=3", "inputs", "img.tif", "what?", "--out", "o"],
        ["eval", "lrs-gro", "--questions", "q.jsonl", "--images", "i", "--set", "max_steps=3"],
        ["train", "sft", "--config", "train.yaml", "--set", "max_steps=3"],
        ["train", "--set", "max_steps=3", "prepare", "r.jsonl", "--images", "i", "-o", "o"],
        ["serve", "--port", "9000", "--set", "max_steps=3"],
        ["tool", "segmentation", "img.tif", "--set", "max_steps=3"],
        ["tools", "--set", "max_steps=3"],
        ["models", "--set", "max_steps=3"],
    ],
)
def test_every_subcommand_accepts_set(argv):
    from zoomearth.cli import _settings_arguments

    args = build_parser().parse_args(["--set", "min_crop=300", *argv])
    pairs, config = _settings_arguments(args)
    assert pairs == ["min_crop=300", "max_steps=3"] and config is None


def test_nested_levels_keep_their_order():
    from zoomearth.cli import _settings_arguments

    argv = ["--set", "a=1", "planner", "--set", "a=2", "--config", "p.toml", "inputs", "x.tif",
            "q", "--out", "o", "--set", "a=3", "--config", "i.toml"]  # fmt: skip
    pairs, config = _settings_arguments(build_parser().parse_args(argv))
    assert pairs == ["a=1", "a=2", "a=3"] and config == "i.toml"


def test_subcommand_options_named_config_are_kept():
    args = build_parser().parse_args(["--config", "s.toml", "train", "grpo", "--config", "t.yaml"])
    assert args.train_config == "t.yaml" and args.config == "s.toml"


def test_help_documents_the_precedence():
    text = build_parser().format_help()
    assert "after the command wins" in text
    text = " ".join(run_cli("ask", "--help").stdout.split())
    assert "--set KEY=VALUE" in text and "wins over --set given before the command" in text


# ---- the tool commands are always there (issue #13) --------------------------------------------


def test_tool_help_works():
    proc = run_cli("tool", "--help")
    assert proc.stdout.startswith("usage: zoomearth tool") and "--args" in proc.stdout
    assert "tools" in run_cli("--help").stdout


def test_a_broken_cli_tools_module_is_not_hidden(monkeypatch):
    monkeypatch.setitem(sys.modules, "zoomearth.cli_tools", None)  # import now raises ImportError
    with pytest.raises(ImportError):
        build_parser()


# ---- `zoomearth models` counts devices without torch (issue #13) ------------------------------

_FAKE_NVIDIA_SMI = """#!/bin/sh
echo "0, GPU-aaaa-1111, 1000, 2000"
echo "1, GPU-bbbb-2222, 3000, 4000"
"""
_NO_TORCH_WRAPPER = (
    "import json, sys; from zoomearth.cli import main; rc = main(sys.argv[1:]); "
    "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}), file=sys.stderr)"
)


def _models_without_torch(tmp_path, *args: str, visible: str | None = None) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(_FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_WRAPPER, *args, "models", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status == {"rc": 0, "torch": False}, proc.stderr
    return json.loads(proc.stdout)


def test_models_command_does_not_import_torch(tmp_path):
    out = _models_without_torch(tmp_path, "--set", "model_pool_fraction=0.5")
    mib = 2**20
    assert out["budgets"]["cuda:0"] == 500 * mib and out["budgets"]["cuda:1"] == 1500 * mib
    assert out["budgets"]["cpu"] > 0


def test_models_command_follows_cuda_visible_devices(tmp_path):
    out = _models_without_torch(tmp_path, "--set", "model_pool_budget_bytes=42", visible="1")
    assert out["budgets"] == {"cpu": 42, "cuda:0": 42}
    out = _models_without_torch(tmp_path, visible="")
    assert list(out["budgets"]) == ["cpu"]
