"""Shared training fixtures: synthetic scenes with planted objects, LRS-GRO-format records whose
boxes come from those objects, prepared data (agent and zoomearth profiles), and a tiny random
Qwen2.5-VL built offline.

The zoomearth profile's prompt file here is made up for the tests (the checkpoint's own text is
never used in tests): a chat-shaped raw text with the overview placeholder and ``{{question}}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

#: Small rendered sides keep the tiny model's sequences short (the frames logic is the same).
SIDES = {"overview_side": 224, "view_side": 224, "min_crop": 512}

#: A made-up zoomearth-profile prompt (not the checkpoint's text).
TEST_PROMPT = (
    "<|im_start|>system\nTest helper.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Q: {{question}}\n"
    'Think in <think> </think>; to look closer write {"bbox_2d": [x1, y1, x2, y2]}; '
    "answer in <answer> </answer>.<|im_end|>\n<|im_start|>assistant\n"
)


def make_settings(root: Path, **flags: Any) -> Any:
    from zoomearth.config import load_settings

    return load_settings(
        flags={"data_dir": root / "data", "cache_dir": root / "cache", **SIDES, **flags},
        environ={},
    )


def scene_records(image_name: str, size: tuple[int, int], objects: Any, prefix: str) -> list[dict]:
    """LRS-GRO records: two object questions (bbox in the long-side-1024 frame) + one global."""
    width, height = size
    scale = 1024 / max(width, height)
    records = []
    for i, obj in enumerate(objects[:2]):
        records.append(
            {
                "question_id": f"{prefix}-{i}",
                "image_name": image_name,
                "category": "Object category",
                "question": f"What kind of object is at the marked place ({i})?",
                "higher_level": "perception",
                "ground_truth": obj.label.replace("_", " "),
                "bbox": [round(v * scale, 2) for v in obj.box_xyxy],
                "type": "object",
                "split": "SFT",
            }
        )
    records.append(
        {
            "question_id": f"{prefix}-g",
            "image_name": image_name,
            "category": "Urban-Rural",
            "question": "Does this image mainly depict an urban or rural area?",
            "higher_level": "reasoning",
            "ground_truth": "rural",
            "bbox": [],
            "type": "global",
            "split": "SFT",
        }
    )
    return records


@pytest.fixture(scope="session")
def train_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="session")
def scenes(train_root: Path) -> dict[str, Any]:
    """Two synthetic scenes and their records."""
    from zoomearth.scene.synth import generate_scene

    folder = train_root / "scenes"
    folder.mkdir()
    a = generate_scene(folder / "a.tif", (1536, 1024), seed=3)
    b = generate_scene(folder / "b.tif", (1024, 1024), seed=4)
    records = scene_records("a.tif", a.size, a.objects, "A") + scene_records(
        "b.tif", b.size, b.objects, "B"
    )
    return {"folder": folder, "a": a, "b": b, "records": records}


@pytest.fixture(scope="session")
def prepared(train_root: Path, scenes: dict[str, Any]) -> Path:
    from zoomearth.train.data import prepare

    out = train_root / "prepared"
    # No tools section: the tiny model's byte-level tokenizer makes the registry's ~15,000
    # characters of tool descriptions as many tokens (test_agent_layout covers the tools).
    prepare(
        scenes["records"], scenes["folder"], out, settings=make_settings(train_root), tools=[]
    )
    return out


@pytest.fixture(scope="session")
def prompt_file(train_root: Path) -> Path:
    path = train_root / "test_prompt.txt"
    path.write_bytes(TEST_PROMPT.encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def prepared_zoomearth(train_root: Path, scenes: dict[str, Any], prompt_file: Path) -> Path:
    from zoomearth.train.data import prepare

    out = train_root / "prepared-zoomearth"
    settings = make_settings(train_root, planner_prompt=prompt_file)
    prepare(scenes["records"], scenes["folder"], out, settings=settings, profile="zoomearth")
    return out


@pytest.fixture(scope="session")
def tiny_model(train_root: Path) -> Path:
    from zoomearth.testing_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(train_root / "tiny")
