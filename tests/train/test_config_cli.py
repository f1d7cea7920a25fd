"""The YAML config and the ``zoomearth train`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from zoomearth.train.config import TrainConfigError, load_train_config

from .conftest import make_settings

REPO = Path(__file__).resolve().parents[2]


def test_example_configs_validate() -> None:
    for name in ("sft.yaml", "grpo.yaml"):
        config = load_train_config(REPO / "examples" / "train" / name)
        assert config.output_dir.is_absolute() and config.data.path.is_absolute()
    grpo = load_train_config(REPO / "examples" / "train" / "grpo.yaml")
    grpo.check_grpo()
    assert grpo.rewards.weight_list() == [1.0, 1.0, 1.0]
    assert grpo.rewards.region_guided_scale == 200


def test_config_paths_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: m\noutput_dir: out\ndata: {path: d/sft.jsonl}\n")
    config = load_train_config(path, {"training.max_steps": 3})
    assert (
        config.output_dir == tmp_path / "out" and config.data.path == tmp_path / "d" / "sft.jsonl"
    )
    assert config.training.max_steps == 3 and config.model == "m"
    assert config.rewards.weights == {"format": 1.0, "box": 1.0, "answer": 1.0}

    path.write_text("model: m\noutput_dir: o\ndata: {path: x}\ntraining: {batch_sise: 2}\n")
    with pytest.raises(TrainConfigError, match="training.batch_sise"):
        load_train_config(path)
    path.write_text("- a list\n")
    with pytest.raises(TrainConfigError, match="mapping"):
        load_train_config(path)
    with pytest.raises(TrainConfigError, match="does not exist"):
        load_train_config(tmp_path / "missing.yaml")
    path.write_text(
        "model: m\noutput_dir: o\ndata: {path: x}\ntraining: {batch_size: 3}\n"
        "grpo: {num_generations: 4}\n"
    )
    with pytest.raises(TrainConfigError, match="multiple of"):
        load_train_config(path).check_grpo()


def _parser() -> argparse.ArgumentParser:
    from zoomearth.train.cli import add_train_command

    parser = argparse.ArgumentParser(prog="zoomearth")
    add_train_command(parser.add_subparsers(dest="command"))
    return parser


def test_cli_prepare(tmp_path: Path, scenes: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from zoomearth.train.cli import cmd_train

    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in scenes["records"][:3]))
    args = _parser().parse_args(
        [
            "train",
            "prepare",
            str(records),
            "--images",
            str(scenes["folder"]),
            "-o",
            str(tmp_path / "o"),
            "--json",
        ]
    )
    assert cmd_train(args, make_settings(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 3
    args = _parser().parse_args(
        [
            "train",
            "prepare",
            str(records),
            "--images",
            str(scenes["folder"]),
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert cmd_train(args, make_settings(tmp_path)) == 0
    assert "skipped 3 already written" in capsys.readouterr().out


def test_cli_sft_parses_config_flag() -> None:
    args = _parser().parse_args(["train", "sft", "--config", "x.yaml", "--max-steps", "2"])
    assert (args.train_command, args.train_config, args.max_steps) == ("sft", "x.yaml", 2)
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "grpo"])  # --config is required


@pytest.mark.slow
def test_cli_sft_one_step(
    prepared: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zoomearth.train.cli import cmd_train

    config = tmp_path / "sft.yaml"
    config.write_text(
        f"model: {tiny_model}\noutput_dir: out\ndata: {{path: {prepared / 'sft.jsonl'}}}\n"
        "training: {max_steps: 1, device: cpu}\n"
    )
    args = _parser().parse_args(["train", "sft", "--config", str(config), "--json"])
    assert cmd_train(args, make_settings(tmp_path)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["last_loss"] > 0
    assert Path(summary["output_dir"], "model.safetensors").exists()
