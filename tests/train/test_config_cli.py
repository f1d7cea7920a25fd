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
    # The per-stage keys (not the older both-stage ones): 512 tokens at temperature 1.0 each.
    assert (grpo.grpo.max_stage_tokens, grpo.grpo.temperature, grpo.grpo.top_p) == (None,) * 3
    stage1, stage2 = grpo.grpo.stages()
    assert (stage1.temperature, stage1.max_new_tokens, stage1.top_p, stage1.top_k) == (
        1.0, 512, 1.0, 50
    )
    assert (stage2.temperature, stage2.max_new_tokens, stage2.top_p, stage2.top_k) == (
        1.0, 512, None, None
    )


def test_reference_example_config_loads_with_the_reference_values() -> None:
    path = REPO / "examples" / "train" / "grpo_reference.yaml"
    config = load_train_config(path)
    config.check_grpo()
    t, g, r = config.training, config.grpo, config.rewards
    assert (g.beta, t.learning_rate, g.num_generations) == (0.04, 1e-7, 4)
    assert (t.batch_size, t.grad_accum, t.epochs, t.max_steps) == (4, 2, 1.0, -1)
    assert (t.precision, t.gradient_checkpointing, t.attn_implementation) == ("bf16", True, "sdpa")
    assert (t.save_steps, t.data_seed, t.seed, t.logging_steps) == (50, 42, 42, 1)
    assert config.data.limit == 2400 and not config.lora.enabled
    stage1, stage2 = g.stages()
    assert (stage1.temperature, stage1.max_new_tokens, stage1.top_p, stage1.top_k) == (
        1.0, 2048, 1.0, 50
    )
    assert (stage2.temperature, stage2.max_new_tokens, stage2.top_p, stage2.top_k) == (
        0.7, 800, None, None
    )
    assert (g.scale_rewards, g.loss_type, g.epsilon) == ("none", "grpo", 0.2)
    assert (r.box_frame, r.exact_match_frame) == ("reference", "reference")
    assert r.region_guided_scale == 200
    assert r.weight_list() == [1.0, 1.0, 1.0] and (r.min_crop, r.answer_threshold) == (512, 0.8)
    # Every value says where it comes from.
    for line in path.read_text().splitlines():
        code = line.split("#", 1)[0]
        if ":" in code and code.split(":", 1)[1].strip():
            assert "#" in line, f"no origin noted for: {line.strip()}"


def test_grpo_stage_defaults_and_older_keys(tmp_path: Path) -> None:
    from zoomearth.train.config import GRPOSection

    stage1, stage2 = GRPOSection().stages()
    assert (stage1.temperature, stage1.max_new_tokens) == (1.0, 2048)
    assert (stage2.temperature, stage2.max_new_tokens) == (0.7, 800)
    assert GRPOSection().scale_rewards == "none" and GRPOSection().loss_type == "grpo"
    # The older both-stage keys still load.
    older = GRPOSection.model_validate({"max_stage_tokens": 8, "temperature": 0.9})
    assert [(s.max_new_tokens, s.temperature) for s in older.stages()] == [(8, 0.9), (8, 0.9)]
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: m\noutput_dir: o\ndata: {path: x}\n"
        "grpo: {max_stage_tokens: 8, stage2: {temperature: 0.7, max_new_tokens: 9}}\n"
    )
    with pytest.raises(TrainConfigError, match="cannot be combined with grpo.stage2"):
        load_train_config(path)
    path.write_text("model: m\noutput_dir: o\ndata: {path: x}\ngrpo: {scale_rewards: std}\n")
    with pytest.raises(TrainConfigError, match="grpo.scale_rewards"):
        load_train_config(path)


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
    # The agent prompt offers the tool registry's tools by default.
    written = json.loads((tmp_path / "o" / "agent_prompt.json").read_text())
    assert written["tools"] and written["coord_mode"] == "pixels"
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
    # Resuming with other tools would mix two prompts in one data set.
    no_tools = _parser().parse_args(
        ["train", "prepare", str(records), "--images", str(scenes["folder"]), "-o",
         str(tmp_path / "o"), "--no-tools"]
    )
    from zoomearth.train.data import PrepareError

    with pytest.raises(PrepareError, match="other prompt sections or tools"):
        cmd_train(no_tools, make_settings(tmp_path))
    assert cmd_train(
        _parser().parse_args(
            ["train", "prepare", str(records), "--images", str(scenes["folder"]), "-o",
             str(tmp_path / "o2"), "--no-tools", "--json"]
        ),
        make_settings(tmp_path),
    ) == 0
    assert json.loads((tmp_path / "o2" / "agent_prompt.json").read_text())["tools"] == []


def test_cli_prepare_zoomearth_profile(
    tmp_path: Path, scenes: dict, prompt_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zoomearth.train.cli import cmd_train

    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in scenes["records"][2:3]))
    args = _parser().parse_args(
        ["train", "prepare", str(records), "--images", str(scenes["folder"]), "-o",
         str(tmp_path / "o"), "--profile", "zoomearth", "--json"]
    )
    assert cmd_train(args, make_settings(tmp_path, planner_prompt=prompt_file)) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["profile"], stats["written"], stats["inexact_overviews"]) == ("zoomearth", 1, 0)


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
