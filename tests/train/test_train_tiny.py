"""2 SFT steps and 2 GRPO steps on CPU with a tiny random Qwen2.5-VL on synthetic scenes; the
saved checkpoint reloads into the transformers planner and completes an ``ask``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from .conftest import make_settings

pytest.importorskip("trl")
pytest.importorskip("peft")


def _config(tiny_model: Path, data_path: Path, out: Path, **extra: Any) -> Any:
    from zoomearth.train.config import TrainConfig

    raw = {
        "model": str(tiny_model),
        "output_dir": str(out),
        "data": {"path": str(data_path)},
        "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "device": "cpu"},
        "view_side": 224,
    }
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(raw)


# ---- SFT -----------------------------------------------------------------------------------------


def test_sft_collator_trains_on_assistant_text_only(prepared: Path, tiny_model: Path) -> None:
    import re

    from transformers import AutoProcessor

    from zoomearth.train.data import load_jsonl
    from zoomearth.train.sft import IGNORE_INDEX, ZoomSFTCollator

    processor = AutoProcessor.from_pretrained(tiny_model)
    rows = {r["question_id"]: r for r in load_jsonl(prepared / "sft.jsonl")}
    collator = ZoomSFTCollator(processor, prepared)
    batch = collator([{"row": json.dumps(rows["A-0"])}, {"row": json.dumps(rows["A-g"])}])
    tok = processor.tokenizer
    zoom, glob = batch["labels"][0], batch["labels"][1]
    row = rows["A-0"]
    # The model's two turns are learned, each with the end-of-turn token it stops at.
    target = tok.decode(zoom[zoom != IGNORE_INDEX])
    assert target == row["stage1"] + "<|im_end|>" + row["stage2"] + "<|im_end|>"
    assert tok.decode(glob[glob != IGNORE_INDEX]) == rows["A-g"]["stage1"] + "<|im_end|>"
    ids = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    text = re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", tok.decode(ids))
    # The chat layout: the crop comes in a user message after the stage-1 turn, with the zoom
    # caption; stage 2 is the next assistant turn.
    _system_and_user, turn1, turn2 = text.split("<|im_start|>assistant\n")
    stage1, user = turn1.split("<|im_end|>\n<|im_start|>user\n")
    assert stage1 == row["stage1"]
    assert user.startswith("View 1: full-resolution region [") and "(object)\n" in user
    assert user.endswith("<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n")
    assert turn2 == row["stage2"] + "<|im_end|>"
    # 3 images (overview + crop, overview); image pads match the grids (merge 2 x 2).
    grids = batch["image_grid_thw"]
    assert grids.shape[0] == 3
    pads = int((batch["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert pads == int(grids.prod(dim=-1).sum()) // 4


def test_sft_rejects_rows_of_the_old_continuation_layout(prepared: Path, tiny_model: Path) -> None:
    from transformers import AutoProcessor

    from zoomearth.train.common import TrainError
    from zoomearth.train.data import load_jsonl
    from zoomearth.train.sft import sft_sequence

    processor = AutoProcessor.from_pretrained(tiny_model)
    row = load_jsonl(prepared / "sft.jsonl")[0]
    user = row["messages"][0]
    old = [
        user,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": row["stage1"]},
                {"type": "image", "image": row["crop"]},
                {"type": "text", "text": row["stage2"]},
            ],
        },
    ]
    with pytest.raises(TrainError, match="earlier version"):
        sft_sequence(processor, {**row, "messages": old})


def test_sft_collator_zoomearth_profile_is_the_raw_reference_sequence(
    prepared_zoomearth: Path, tiny_model: Path
) -> None:
    import re

    from transformers import AutoProcessor

    from zoomearth.train.data import load_jsonl
    from zoomearth.train.sft import IGNORE_INDEX, ZoomSFTCollator

    processor = AutoProcessor.from_pretrained(tiny_model)
    rows = {r["question_id"]: r for r in load_jsonl(prepared_zoomearth / "sft.jsonl")}
    batch = ZoomSFTCollator(processor, prepared_zoomearth)(
        [{"row": json.dumps(rows["A-0"])}, {"row": json.dumps(rows["A-g"])}]
    )
    tok = processor.tokenizer
    row = rows["A-0"]
    ids = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    text = re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", tok.decode(ids))
    # No chat template: the raw profile text, then the stage-2 continuation and <eos>.
    assert text == row["prompt_text"] + row["target_text"] + tok.eos_token
    labels = batch["labels"][0]
    learned = tok.decode(labels[labels != IGNORE_INDEX])
    assert learned == row["stage1"] + row["stage2"] + tok.eos_token  # the crop is masked
    glob = batch["labels"][1]
    assert tok.decode(glob[glob != IGNORE_INDEX]) == rows["A-g"]["stage1"] + tok.eos_token
    assert batch["image_grid_thw"].shape[0] == 3


@pytest.fixture(scope="module")
def sft_result(prepared: Path, tiny_model: Path, train_root: Path) -> Any:
    from zoomearth.train.sft import train_sft

    return train_sft(_config(tiny_model, prepared / "sft.jsonl", train_root / "sft-out"))


def test_sft_two_steps(sft_result: Any) -> None:
    assert sft_result.steps == 2
    losses = [r["loss"] for r in sft_result.history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    out = sft_result.output_dir
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "preprocessor_config.json").exists() or (out / "processor_config.json").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    assert sft_result.plot_path is not None and sft_result.plot_path.stat().st_size > 1000


def test_sft_with_lora_saves_merged_weights(
    prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForImageTextToText

    from zoomearth.train.sft import train_sft

    config = _config(
        tiny_model,
        prepared / "sft.jsonl",
        tmp_path / "lora",
        lora={"enabled": True, "r": 4, "alpha": 8},
        training={"max_steps": 1, "batch_size": 1},
    )
    result = train_sft(config)
    assert result.steps == 1
    assert not (result.output_dir / "adapter_config.json").exists()  # merged, plain checkpoint
    model = AutoModelForImageTextToText.from_pretrained(result.output_dir)
    assert not any("lora" in name for name, _ in model.named_parameters())


# ---- GRPO ----------------------------------------------------------------------------------------


def scripted_sampler(processor: Any, seen_inputs: list[str]) -> Any:
    """Stage 1: even generations zoom near the ground truth, odd ones write garbage; stage 2
    answers correctly. Token ids are real ids of the tiny model's tokenizer."""
    import torch

    tok = processor.tokenizer

    def sample(model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Any) -> Any:
        if stage == 2:
            seen_inputs.append(tok.decode(inputs["input_ids"][0]))
            texts = [f"<think>seen</think><answer>{row['ground_truth']}</answer><|im_end|>"] * n
        else:
            texts = []
            for k in range(n):
                if k % 2 == 0 and row["gt_box_view"]:
                    x1, y1, x2, y2 = (int(v) + 3 * k for v in row["gt_box_view"])
                    texts.append(
                        f'<think>zoom {{"bbox_2d": [{x1}, {y1}, {x2}, {y2}]}}</think><|im_end|>'
                    )
                else:
                    texts.append(f"noise {k}<|im_end|>")
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(i) for i in ids)
        return torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])

    return sample


@pytest.fixture(scope="module")
def grpo_run(prepared: Path, tiny_model: Path, train_root: Path) -> Any:
    from transformers import AutoProcessor

    from zoomearth.train.common import finish
    from zoomearth.train.grpo import make_grpo_trainer

    processor = AutoProcessor.from_pretrained(tiny_model)
    seen: list[str] = []
    config = _config(
        tiny_model,
        prepared / "grpo.jsonl",
        train_root / "grpo-out",
        training={"batch_size": 4},
        grpo={"num_generations": 4, "max_stage_tokens": 32},
        data={"limit": 2},
    )
    trainer, proc, rollout = make_grpo_trainer(
        config,
        settings=make_settings(train_root),
        sample=scripted_sampler(processor, seen),
        similarity=None,
    )
    trainer.train()
    result = finish(trainer, proc, config, 1.0, "GRPO")
    return {"result": result, "rollout": rollout, "seen": seen, "trainer": trainer}


def test_grpo_two_steps_with_two_stage_rollouts(grpo_run: dict) -> None:
    result = grpo_run["result"]
    assert result.steps == 2
    logs = [r for r in result.history if "loss" in r]
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) for r in logs)
    # Rewards vary across the generations of each prompt.
    assert all(r["reward_std"] > 0 for r in logs)
    assert all(r["rewards/format_reward/std"] > 0 and r["rewards/box_reward/std"] > 0 for r in logs)
    assert all(r["frac_reward_zero_std"] == 0 for r in logs)
    # Every generation of a question with a box has a stage 2 (the reference's rule): the two
    # that zoomed get their crop, the two without a box the whole image.
    rollout = grpo_run["rollout"]
    regions = rollout.last_regions
    assert all(r is not None for r in regions) and len(regions) == 4
    assert [r.as_list() == [0, 0, 1536, 1024] for r in regions] == [False, True, False, True]
    assert rollout.last_notes[1] == "no usable bbox_2d: the whole image"
    for region in regions:
        assert region.width >= 512 and region.height >= 512
    # Stage 2 is the planner's chat prompt: the stage-1 turn, a user message with the zoom
    # caption and the crop, then the generation prompt.
    for text in grpo_run["seen"]:
        _system_and_user, turn1, generation = text.split("<|im_start|>assistant\n")
        stage1, user = turn1.split("<|im_end|>\n<|im_start|>user\n")
        assert stage1.startswith(("<think>zoom {", "noise")) and generation == ""
        assert user.startswith("View 1: full-resolution region [")
        assert user.endswith("<|vision_end|><|im_end|>\n") and text.count("<|vision_start|>") == 2
    assert (result.output_dir / "curves.png").exists()


def zoomearth_sampler(processor: Any, seen: list[tuple[int, int, str]]) -> Any:
    """Stage 1: even generations zoom on the ground truth (512 frame), odd ones answer without a
    box; stage 2 answers. Records ``(stage, max_new_tokens, decoded input)``."""
    import torch

    tok = processor.tokenizer

    def sample(model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Any) -> Any:
        seen.append((stage, max_new, tok.decode(inputs["input_ids"][0])))
        if stage == 2:
            texts = [f"<think>seen</think><answer>{row['ground_truth']}</answer><|im_end|>"] * n
        else:
            box = ", ".join(str(int(v)) for v in row["gt_box_view"])
            texts = [
                f'<think>zoom {{"bbox_2d": [{box}]}}</think><|im_end|>'
                if k % 2 == 0
                else "<think>whole</think><answer>no idea</answer><|im_end|>"
                for k in range(n)
            ]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(i) for i in ids)
        return torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])

    return sample


def test_grpo_zoomearth_profile_rollout(
    prepared_zoomearth: Path, tiny_model: Path, train_root: Path, prompt_file: Path
) -> None:
    import re

    from transformers import AutoProcessor

    from zoomearth.agent.profiles import ZoomEarthProfile, load_zoomearth_prompt
    from zoomearth.train.grpo import make_grpo_trainer

    processor = AutoProcessor.from_pretrained(tiny_model)
    seen: list[tuple[int, int, str]] = []
    config = _config(
        tiny_model,
        prepared_zoomearth / "grpo.jsonl",
        train_root / "grpo-zoomearth",
        training={"batch_size": 4, "max_steps": 1},
        data={"limit": 1},
    )
    trainer, _proc, rollout = make_grpo_trainer(
        config,
        settings=make_settings(train_root),
        sample=zoomearth_sampler(processor, seen),
        similarity=None,
    )
    # Advantages are reward minus the group mean (no std scaling); log-probs untempered.
    assert (trainer.args.scale_rewards, trainer.args.loss_type) == ("none", "grpo")
    assert trainer.args.temperature == 1.0 and rollout.box_frame == "reference"
    trainer.train()
    # Per-stage sampling: the reference's budgets (temperatures are checked in the unit test).
    assert {(stage, n) for stage, n, _ in seen} == {(1, 2048), (2, 800)}
    # Stage 1 is the raw profile text; stage 2 is ZoomEarthProfile.stage2_text exactly.
    profile = ZoomEarthProfile(load_zoomearth_prompt(prompt_file))
    row = rollout.rows["A-0"]

    def collapse(text: str) -> str:
        return re.sub(r"(<\|image_pad\|>)+", "<|image_pad|>", text)

    stage1_inputs = [collapse(t) for stage, _, t in seen if stage == 1]
    assert set(stage1_inputs) == {profile.stage1_text(row["question"])}
    numbers = ", ".join(str(int(v)) for v in row["gt_box_view"])
    zoom_text = f'<think>zoom {{"bbox_2d": [{numbers}]}}</think>'
    stage2_inputs = {collapse(t) for stage, _, t in seen if stage == 2}
    assert stage2_inputs == {
        profile.stage2_text(row["question"], zoom_text),
        profile.stage2_text(row["question"], "<think>whole</think><answer>no idea</answer>"),
    }
    # Crops: the reference window of the 512-frame box (x 3 on both axes for 1536 x 1024), and
    # without a box the whole overview mapped back: (0, 0, 512 x 3, 341 x 3).
    from zoomearth.agent.profiles import reference_crop_xyxy

    box = [v * 3 for v in row["gt_box_view"]]
    expected = list(reference_crop_xyxy(box, 1536, 1024))
    regions = [r.as_list() for r in rollout.last_regions]
    assert regions == [expected, [0, 0, 1536, 1023], expected, [0, 0, 1536, 1023]]
    assert all(max(imgs[1].size) == 512 for imgs in rollout.last_images)
    # Advantages = summed reward - group mean, not divided by the group's std.
    names = ("format_reward", "box_reward", "answer_reward")
    per_func = [trainer._logs["rewards"][n] for n in names]
    rewards = [sum(vals) for vals in zip(*per_func, strict=True)]
    mean = sum(rewards) / len(rewards)
    assert list(trainer._logs["advantages"]) == pytest.approx([r - mean for r in rewards])
    assert max(abs(a) for a in trainer._logs["advantages"]) > 1.0  # not unit-std scaled


def test_default_sampler_uses_each_stages_settings(tmp_path: Path) -> None:
    import torch

    from zoomearth.train.config import StageSampling
    from zoomearth.train.grpo import TwoStageRollout

    calls: list[dict[str, Any]] = []

    class FakeModel:
        def generate(self, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return torch.zeros((kwargs["num_return_sequences"], 5), dtype=torch.long)

    rollout = TwoStageRollout({}, tmp_path)
    sample = rollout._default_sample(None, {7}, 0)
    inputs = {"input_ids": torch.zeros((1, 3), dtype=torch.long)}
    assert sample(FakeModel(), inputs, 4, 2048, 1, {}).shape == (4, 2)
    sample(FakeModel(), inputs, 1, 800, 2, {})
    first, second = calls
    assert (first["temperature"], first["top_k"], first["top_p"]) == (1.0, 50, 1.0)
    assert first["max_new_tokens"] == 2048 and first["suppress_tokens"] == [7]
    # Stage 2: temperature 0.7; top-p / top-k left to the checkpoint's generation_config.
    assert second["temperature"] == 0.7 and "top_k" not in second and "top_p" not in second
    custom = TwoStageRollout(
        {}, tmp_path, stage2=StageSampling(temperature=0.5, max_new_tokens=9, top_k=0)
    )
    custom._default_sample(None, set(), 0)(FakeModel(), inputs, 1, 9, 2, {})
    assert (calls[-1]["temperature"], calls[-1]["top_k"]) == (0.5, 0)


@pytest.mark.slow
def test_grpo_with_the_models_own_sampling(
    prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from zoomearth.train.grpo import train_grpo

    config = _config(
        tiny_model,
        prepared / "grpo.jsonl",
        tmp_path / "grpo",
        training={"batch_size": 4},
        grpo={"num_generations": 4, "max_stage_tokens": 8},
        data={"limit": 2},
    )
    result = train_grpo(config, settings=make_settings(tmp_path), similarity=None)
    assert result.steps == 2
    assert all(math.isfinite(r["loss"]) for r in result.history if "loss" in r)


def test_grpo_checkpoint_completes_an_ask(grpo_run: dict, scenes: dict, train_root: Path) -> None:
    import zoomearth

    out = grpo_run["result"].output_dir
    settings = make_settings(
        train_root / "ask",
        planner="transformers",
        planner_model=str(out),
        planner_device="cpu",
        planner_max_new_tokens=16,
        max_steps=2,
        checkpoint_db=train_root / "ask" / "ckpt.sqlite",
        runs_dir=train_root / "ask" / "runs",
    )
    agent = zoomearth.Agent(settings)
    result = agent.ask(scenes["a"].image_path, "What kind of object is in the middle?")
    assert result.status == "answered"
    assert result.answer is not None and result.planner.startswith("transformers")


def test_stage2_inputs_appending_equals_whole_text_tokenisation(tiny_model: Path) -> None:
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from zoomearth.agent.protocol import VISION_PLACEHOLDER
    from zoomearth.train.grpo import stage2_inputs

    from .conftest import TEST_PROMPT

    processor = AutoProcessor.from_pretrained(tiny_model)
    images = [Image.new("RGB", (112, 84), (9, 80, 200)), Image.new("RGB", (56, 56), (250, 3, 7))]
    prompt = TEST_PROMPT.replace("{{question}}", "Where?")
    stage1 = processor(text=[prompt], images=images[:1], return_tensors="pt")
    continuation = '<think>look {"bbox_2d": [1, 2, 30, 40]}</think>' + VISION_PLACEHOLDER
    whole = stage2_inputs(processor, stage1, prompt, continuation, images)
    appended = stage2_inputs(processor, stage1, prompt, continuation, images, exact=False)
    assert set(whole.keys()) == set(appended.keys())
    for key in whole:
        assert torch.equal(whole[key], appended[key]), key
