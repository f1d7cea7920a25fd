"""Agent-profile training sequences are the planner's inputs at inference, token for token.

The reference is the running agent: the graph (``zoomearth.api.Agent``) drives a
``TransformersPlanner`` whose ``plan`` replays the prepared targets and records each request; the
planner's own ``build`` + ``build_prompt_text`` of those requests is what the model would be fed.
The SFT sequence of the same question (``sft_sequence``) and the GRPO rollout's stage inputs
(``TwoStageRollout`` with a scripted sampler) must be exactly that: text, token ids and pixels.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from zoomearth.agent.backends.hf import TransformersPlanner, build_prompt_text
from zoomearth.agent.base import PlanReply, PlanRequest
from zoomearth.agent.frames import seen_size

from .conftest import make_settings

CUSTOM_PROMPT = """\
system: "You look at satellite images for a living."
zoom_caption: "Closer look {{ view_id }}: {{ caption }}"
"""


class RecordingPlanner(TransformersPlanner):
    """The transformers planner with its generation replaced by a script; records requests."""

    def __init__(self, settings: Any, turns: list[str]) -> None:
        super().__init__(settings)
        self.turns = turns
        self.requests: list[PlanRequest] = []

    def plan(self, request: PlanRequest) -> PlanReply:
        self.requests.append(request)
        text = self.turns[len(self.requests) - 1]
        seen = {vid: seen_size(v.width, v.height) for vid, v in request.views.items()}
        return PlanReply(text=text, seen_sizes=seen, backend="recording")


class _Accelerator:
    device = "cpu"

    def unwrap_model(self, model: Any) -> Any:
        return model


class _Model:
    training = False

    def eval(self) -> None:
        pass

    def train(self, mode: bool = True) -> None:
        pass


def _scripted(processor: Any, texts: dict[int, str], seen: list[tuple[int, Any]]) -> Any:
    import torch

    tok = processor.tokenizer

    def sample(model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Any) -> Any:
        seen.append((stage, inputs))
        ids = tok(texts[stage] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        return torch.tensor([ids] * n)

    return sample


def _pil(rgb: Any) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


@pytest.fixture(scope="module")
def processor(tiny_model: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


@pytest.mark.parametrize("variant", ["registry-tools", "no-tools-custom-prompt"])
def test_training_sequences_are_the_planners_inputs(
    variant: str, tmp_path: Path, scenes: dict, tiny_model: Path, processor: Any
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    from zoomearth.api import Agent
    from zoomearth.tools.registry import ToolRegistry
    from zoomearth.train.common import load_image
    from zoomearth.train.data import load_jsonl, prepare
    from zoomearth.train.grpo import TwoStageRollout
    from zoomearth.train.sft import sft_sequence

    flags: dict[str, Any] = {
        "planner": "transformers",
        "planner_model": str(tiny_model),
        "planner_profile": "agent",
        "planner_device": "cpu",
        "runs_dir": tmp_path / "runs",
    }
    if variant == "registry-tools":
        registry = ToolRegistry(entry_point_group=None)
        tools = registry.tool_specs_for_prompt()
        assert tools
    else:
        registry = ToolRegistry(builtins={}, entry_point_group=None)
        tools = []
        (tmp_path / "prompt.yaml").write_text(CUSTOM_PROMPT)
        flags["planner_prompt"] = tmp_path / "prompt.yaml"
    settings = make_settings(tmp_path, **flags)
    records = [r for r in scenes["records"] if r["question_id"] in ("A-0", "A-g")]
    out = tmp_path / "prepared"
    prepare(records, scenes["folder"], out, settings=settings, profile="agent", tools=tools)
    sft = {r["question_id"]: r for r in load_jsonl(out / "sft.jsonl")}
    grpo = {r["question_id"]: r for r in load_jsonl(out / "grpo.jsonl")}
    tok = processor.tokenizer

    for qid in ("A-0", "A-g"):
        row = sft[qid]
        turns = [row["stage1"]] + ([row["stage2"]] if row["stage2"] else [])

        # Inference: the graph asks the planner; its requests rendered as the planner renders them.
        planner = RecordingPlanner(settings, turns)
        agent = Agent(
            settings, planner=planner, registry=registry, checkpointer=InMemorySaver(), strict=True
        )
        try:
            result = agent.ask(scenes["a"].image_path, row["question"])
        finally:
            agent.close()
        assert result.answer == row["ground_truth"]
        requests = planner.requests
        assert len(requests) == len(turns)
        inputs = [build_prompt_text(processor, planner.build(r)) for r in requests]
        if variant != "registry-tools":
            assert inputs[0].startswith(
                "<|im_start|>system\nYou look at satellite images for a living.<|im_end|>"
            )
            assert "# Tools" not in inputs[0]
        else:
            assert "# Tools" in inputs[0] and '"name": "cloud_removal"' in inputs[0]

        # SFT: the planner's input before each turn, the turns (with <|im_end|>) trained.
        sequence = sft_sequence(processor, row)
        for turn, expected in enumerate(inputs, 1):
            assert sequence.before(turn) == expected
        assert sequence.targets == [t + "<|im_end|>" for t in turns]
        assert sequence.text == inputs[-1] + turns[-1] + "<|im_end|>"
        # ... with the pixels the graph renders, in the order the planner sends them.
        last = requests[-1]
        order = planner.build(last).image_view_ids
        assert len(order) == len(sequence.images)
        for view_id, path in zip(order, sequence.images, strict=True):
            assert np.array_equal(np.asarray(load_image(out, path)), last.render(view_id))
        if row["crop"] is not None:
            assert last.views[1].region.as_list() == row["crop_spec"]["region_xyxy"]
            caption = next(e for e in last.transcript if e.kind == "zoom").text
            shown_as = "View 1" if variant == "registry-tools" else "Closer look 1"
            expected_caption = f"{shown_as}: {caption}\n"
            zoom_message = [m for m in row["messages"] if m["role"] == "user"][-1]
            assert zoom_message["content"][0]["text"] == expected_caption

        # GRPO: the rollout's stage inputs are the planner's, token for token and pixel for pixel.
        seen: list[tuple[int, Any]] = []
        rollout = TwoStageRollout(
            grpo,
            out,
            box_frame="processor",
            view_side=settings.view_side,
            min_crop=settings.min_crop,
            settings=settings,
            sample=_scripted(processor, dict(enumerate(turns, 1)), seen),
        )
        end_ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        trainer = SimpleNamespace(
            processing_class=processor,
            accelerator=_Accelerator(),
            model=_Model(),
            eos_token_ids=end_ids,
            pad_token_id=tok.pad_token_id,
        )
        produced = rollout([qid], trainer)
        assert [stage for stage, _ in seen] == list(range(1, len(turns) + 1))
        images = [_pil(last.render(v)) for v in order]
        for (stage, given), text in zip(seen, inputs, strict=True):
            expected = processor(text=[text], images=images[:stage], return_tensors="pt")
            for key in ("input_ids", "pixel_values", "image_grid_thw"):
                assert np.array_equal(given[key].numpy(), expected[key].numpy()), (qid, key)
        assert [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
            rollout.last_images[0], images, strict=True
        )] == [True] * len(images)
        # The trained completion: the model's turns; the user turn between them is masked.
        ids = produced["completion_ids"][0]
        mask = produced["env_mask"][0]
        learned = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert learned == "".join(t + "<|im_end|>" for t in turns)
        whole = tok.decode(produced["prompt_ids"][0] + ids)
        collapse = re.compile(r"(<\|image_pad\|>)+")
        assert collapse.sub("<|image_pad|>", whole) == collapse.sub(
            "<|image_pad|>", inputs[-1] + turns[-1] + "<|im_end|>"
        )
        assert produced["stage1"] == [turns[0]]


def test_stage1_turn_cut_short_keeps_the_templates_end_out_of_the_loss(
    prepared: Path, scenes: dict, processor: Any, train_root: Path
) -> None:
    """A stage-1 sample that hit max_new_tokens did not write its end-of-turn token: the chat
    template adds it, and it is not trained."""
    import torch

    from zoomearth.train.data import load_jsonl
    from zoomearth.train.grpo import TwoStageRollout

    tok = processor.tokenizer
    rows = {r["question_id"]: r for r in load_jsonl(prepared / "grpo.jsonl")}
    box = ", ".join(str(int(v)) for v in rows["A-0"]["gt_box_view"])
    stage1 = f'<think>look {{"bbox_2d": [{box}]}} and then'

    def sample(model: Any, inputs: Any, n: int, max_new: int, stage: int, row: Any) -> Any:
        text = stage1 if stage == 1 else "<think>ok</think><answer>x</answer><|im_end|>"
        return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]] * n)

    rollout = TwoStageRollout(
        rows, prepared, box_frame="processor", view_side=224,
        settings=make_settings(train_root), sample=sample,
    )
    end_ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    trainer = SimpleNamespace(
        processing_class=processor, accelerator=_Accelerator(), model=_Model(),
        eos_token_ids=end_ids, pad_token_id=tok.pad_token_id,
    )
    produced = rollout(["A-0"], trainer)
    ids, mask = produced["completion_ids"][0], produced["env_mask"][0]
    learned = tok.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert learned == stage1 + "<think>ok</think><answer>x</answer><|im_end|>"
    first_end = ids.index(end_ids[0])
    assert mask[first_end] == 0 and tok.decode(ids[:first_end]) == stage1


def test_grpo_agent_data_needs_its_prompt_file(tmp_path: Path) -> None:
    import json

    from zoomearth.train.chat import AgentPrompt, ChatLayoutError

    with pytest.raises(ChatLayoutError, match="prepare"):
        AgentPrompt.read(tmp_path)
    (tmp_path / "agent_prompt.json").write_text(json.dumps({"sections": {}}))
    with pytest.raises(ChatLayoutError, match="not a valid"):
        AgentPrompt.read(tmp_path)
