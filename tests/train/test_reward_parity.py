"""The default GRPO rewards equal the reference's reward semantics, the box term included.

The reference's semantics are written out here independently of ``zoomearth.train.rewards`` (the
reward functions ``get_format_reward``, ``get_bbox_reward``, ``get_answer_reward`` of the
reference's ``custom/customized_funcs.py`` and the ``scale`` of its ``trainer/grpo_trainer.py``):
regular expressions instead of the protocol's scanners, numpy's tanh formula, NLTK's own
``WordNetLemmatizer`` and ``wordnet`` corpus loader. Cases are generated: stage-1 and stage-2
texts of many shapes (the ground-truth box in the 512 frame, shifted, the raw LRS-GRO numbers,
several boxes, wrong lengths, no box, large boxes, broken tags, answers equal / synonyms / wrong)
on image sizes drawn per scene.

* held-out: the 76 real LRS-GRO records of ``../shared/data`` x 4 generations = 304 cases;
* synthetic: 400 records on random image sizes, always run.

A case matches when each of the three rewards agrees within 1e-9 (the Region-Guided term is
``tanh`` computed two ways).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoomearth.agent.frames import seen_size
from zoomearth.agent.profiles import reference_resized_size
from zoomearth.train.data import bbox_to_full
from zoomearth.train.grpo import grpo_dataset_rows
from zoomearth.train.rewards import make_reward_funcs

TOLERANCE = 1e-9
WORDS = ["car", "automobile", "ship", "boat", "road", "street", "tree", "forest", "river",
         "water", "building", "house", "field", "urban", "rural", "bridge", "grey", "red"]


# ---- the reference's semantics, written independently -----------------------------------------


def ref_boxes(text: str) -> list[list[float]]:
    found = []
    for inner in re.findall(r'"bbox_2d"\s*:\s*\[(.*?)\]', text, re.DOTALL):
        try:
            found.append([float(part.strip()) for part in inner.split(",")])
        except ValueError:
            pass
    return found


def ref_tag(text: str | None, tag: str) -> str | None:
    match = re.search(rf"<{tag}\s*>\s*(.*?)\s*</{tag}\s*>", text or "", re.S)
    return None if match is None else match.group(1).strip()


def ref_format(stage1: str, stage2: str) -> float:
    if stage2 != "":
        ok = ref_tag(stage1, "think") and ref_tag(stage2, "think") and ref_tag(stage2, "answer")
        return 1.0 if ok and ref_boxes(stage1) != [] else 0.0
    return 1.0 if ref_tag(stage1, "think") and ref_tag(stage1, "answer") else 0.0


def ref_min_area(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 - x1 >= 512 and y2 - y1 >= 512:
        return list(box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    return [max(0, cx - 256), max(0, cy - 256), cx - 256 + 512, cy - 256 + 512]


def ref_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax1, ay1, ax2, ay2 = ref_min_area(a)
    bx1, by1, bx2, by2 = ref_min_area(b)
    ax1, ax2 = sorted((ax1, ax2))
    ay1, ay2 = sorted((ay1, ay2))
    bx1, bx2 = sorted((bx1, bx2))
    by1, by2 = sorted((by1, by2))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return 0.0 if union == 0 else inter / union


def ref_box(stage1: str, lrs_bbox: Sequence[float], width: int, height: int) -> float:
    found = ref_boxes(stage1)
    if not found:
        return 0.0
    box = found[0]
    if len(box) != 4 or len(lrs_bbox) != 4:
        return 0.0
    if box == list(lrs_bbox):
        return 2.0
    scale = max(max(width, height) / 512, 1)  # the trainer's scale
    gt = [v * scale / 2 for v in lrs_bbox]
    full = [v * scale for v in box]
    dx = (gt[0] + gt[2]) / 2.0 - (full[0] + full[2]) / 2.0
    dy = (gt[1] + gt[3]) / 2.0 - (full[1] + full[3]) / 2.0
    x = 200 / ((dx * dx + dy * dy) ** 0.5 + 1e-6)
    return float(ref_iou(full, gt) + (2 / (1 + np.exp(-2 * x)) - 1))


def nltk_similarity() -> Callable[[str, str], float]:
    """The reference's ``synonyms_degree`` on NLTK's own lemmatiser and corpus loader."""
    import nltk

    from zoomearth.eval.scoring import install_wordnet

    root = install_wordnet(None)  # the Debian WordNet as an NLTK data folder
    if str(root.parent.parent) not in nltk.data.path:
        nltk.data.path.insert(0, str(root.parent.parent))
    from nltk.corpus import wordnet as wn
    from nltk.stem import WordNetLemmatizer

    lemmatizer = WordNetLemmatizer()

    def degree(a: str, b: str) -> float:
        w1, w2 = lemmatizer.lemmatize(a.lower()), lemmatizer.lemmatize(b.lower())
        try:
            pairs = [(s1, s2) for s1 in wn.synsets(w1) for s2 in wn.synsets(w2)]
        except Exception:  # noqa: BLE001 - the reference's bare except
            return 0.0
        best = 0.0
        for s1, s2 in pairs:
            sim = s1.path_similarity(s2)
            if sim is not None and sim > best:
                best = sim
        return best if best < 0.8 else 1.0

    return degree


def ref_answer(
    stage1: str, stage2: str, truth: str, degree: Callable[[str, str], float]
) -> float:
    answer = ref_tag(stage2 if stage2 != "" else stage1, "answer") or ""
    answer = answer.strip().lower().rstrip(".")
    gt = (truth or "").strip().lower().rstrip(".")
    if not gt:
        return 0.0
    return 1.0 if answer == gt else float(degree(gt, answer))


# ---- generated cases ---------------------------------------------------------------------------


def _num(rng: random.Random, v: float) -> str:
    return str(round(v, 1)) if rng.random() < 0.2 else str(int(round(v)))


def stage1_text(rng: random.Random, record: Mapping[str, Any], width: int, height: int) -> str:
    """One stage-1 output of many shapes around the record's box."""
    bbox = list(record.get("bbox") or [])
    ow, oh = reference_resized_size(width, height)
    if bbox:
        x1, y1, x2, y2 = (v / 2 for v in bbox)  # the ground truth in the 512 frame
    else:
        x1, y1 = rng.uniform(0, ow - 20), rng.uniform(0, oh - 20)
        x2, y2 = x1 + rng.uniform(2, 60), y1 + rng.uniform(2, 60)
    think = rng.choice(["I look at the scene.", "", "  ", "The target is small."])
    kind = rng.randrange(10)
    if kind == 0:  # the ground truth (or a random box) in the 512 frame
        nums = [x1, y1, x2, y2]
    elif kind == 1:  # shifted
        d = [rng.uniform(-80, 80) for _ in range(2)]
        nums = [x1 + d[0], y1 + d[1], x2 + d[0], y2 + d[1]]
    elif kind == 2 and bbox:  # the LRS-GRO numbers as written: the reference's exact match
        return f'<think>{think} {{"bbox_2d": {json.dumps(bbox)}, "label": "x"}}</think>'
    elif kind == 3:  # a large box (>= 512 px at full resolution on both sides)
        nums = [rng.uniform(0, ow / 3), rng.uniform(0, oh / 3), ow * rng.uniform(0.6, 1.2),
                oh * rng.uniform(0.6, 1.2)]
    elif kind == 4:  # three numbers
        return f'<think>{think} {{"bbox_2d": [{int(x1)}, {int(y1)}, {int(x2)}]}}</think>'
    elif kind == 5:  # no box, an answer
        return f"<think>{think}</think><answer>{rng.choice(WORDS)}</answer>"
    elif kind == 6:  # two boxes, the first one somewhere else
        a = [rng.uniform(0, ow), rng.uniform(0, oh)]
        first = "[" + ", ".join(_num(rng, v) for v in (a[0], a[1], a[0] + 9, a[1] + 9)) + "]"
        second = f"[{int(x1)}, {int(y1)}, {int(x2)}, {int(y2)}]"
        return f'<think>{think} {{"bbox_2d": {first}}} or {{"bbox_2d": {second}}}</think>'
    elif kind == 7:  # a box of non-numbers, then a good one
        return f'<think>{think} {{"bbox_2d": ["a", 1]}} {{"bbox_2d": [{int(x1)}, {int(y1)}, {int(x2)}, {int(y2)}]}}</think>'  # noqa: E501
    elif kind == 8:  # inverted, near the edges
        nums = [x2, y2, x1, y1] if rng.random() < 0.5 else [0, 0, 6, 6]
    else:  # broken tags around a box, maybe an answer in stage 1
        box = f"[{int(x1)}, {int(y1)}, {int(x2)}, {int(y2)}]"
        return rng.choice([
            f'<think>{think} {{"bbox_2d": {box}}}',
            f'{{"bbox_2d": {box}}}<answer>{record["ground_truth"]}</answer>',
            f'<think >{think}</think > "bbox_2d" : {box}<answer>x</answer>',
        ])
    body = ", ".join(_num(rng, v) for v in nums)
    return f'<think>{think} {{"bbox_2d": [{body}], "label": "target"}}</think>'


def stage2_text(rng: random.Random, record: Mapping[str, Any]) -> str:
    """A stage-2 output (decoded with special tokens, as the reference keeps them)."""
    if not record.get("bbox"):
        return ""  # no box in the ground truth: the reference runs no stage 2
    truth = str(record["ground_truth"])
    answer = rng.choice([truth, truth.upper() + ".", f" {truth} ", rng.choice(WORDS), "", truth])
    think = rng.choice(["The crop shows it.", "", "Closer."])
    end = rng.choice(["<|im_end|>", "", "<|endoftext|>"])
    return rng.choice([
        f"<think>{think}</think>\n<answer>{answer}</answer>{end}",
        f"<think>{think}</think>{end}",
        f"<answer>{answer}</answer>",
        f"<think>{think}</think><answer>{answer}",
    ])


def build_cases(
    records: Sequence[Mapping[str, Any]], sizes: Mapping[str, tuple[int, int]], seed: int, k: int
) -> list[dict[str, Any]]:
    """``k`` generations per record, as grpo.jsonl rows with their rollout texts."""
    rng = random.Random(seed)
    cases = []
    for record in records:
        width, height = sizes[record["image_name"]]
        bbox = list(record.get("bbox") or [])
        ow, oh = reference_resized_size(width, height)
        row = {
            "question_id": record["question_id"],
            "ground_truth": record["ground_truth"],
            "bbox": bbox,
            "gt_box_full": bbox_to_full(bbox, width, height).as_list() if len(bbox) == 4 else [],
            "gt_box_view": [],
            "scene_size": [width, height],
            "overview_spec": {"view_id": 0, "region_xyxy": [0, 0, width, height],
                              "width": ow, "height": oh},
            "overview_seen": list(seen_size(ow, oh)),
            "profile": "zoomearth",
        }
        for _ in range(k):
            cases.append({
                "row": row,
                "record": record,
                "size": (width, height),
                "stage1": stage1_text(rng, record, width, height),
                "stage2": stage2_text(rng, record),
            })
    return cases


def compare(cases: Sequence[Mapping[str, Any]], box_frame: str = "reference") -> dict[str, Any]:
    """Our TRL reward functions vs the reference's semantics, per case."""
    funcs = make_reward_funcs(box_frame=box_frame)  # type: ignore[arg-type]
    columns: dict[str, list[Any]] = {}
    for item in grpo_dataset_rows([c["row"] for c in cases]):
        for key, value in item.items():
            columns.setdefault(key, []).append(value)
    columns["stage1"] = [c["stage1"] for c in cases]
    columns["stage2"] = [c["stage2"] for c in cases]
    ours = [f(prompts=columns["prompt"], completions=[""] * len(cases), **columns) for f in funcs]
    degree = nltk_similarity()
    matched, mismatches = 0, []
    for i, case in enumerate(cases):
        w, h = case["size"]
        truth = case["record"]["ground_truth"]
        ref = (
            ref_format(case["stage1"], case["stage2"]),
            ref_box(case["stage1"], case["row"]["bbox"], w, h),
            ref_answer(case["stage1"], case["stage2"], truth, degree),
        )
        mine = tuple(values[i] for values in ours)
        if all(abs(a - b) <= TOLERANCE for a, b in zip(mine, ref, strict=True)):
            matched += 1
        else:
            mismatches.append((case["stage1"], case["stage2"], case["size"], mine, ref))
    return {"matched": matched, "total": len(cases), "mismatches": mismatches,
            "box_values": [ours[1][i] for i in range(len(cases))]}


# ---- tests -------------------------------------------------------------------------------------


def test_held_out_lrs_gro_cases_match_the_reference(shared_data: Path) -> None:
    path = shared_data / "benchmarks" / "lrs_gro_sample.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # The images are not included: each scene gets a size drawn like LRS-GRO's (thousands of px).
    rng = random.Random(2024)
    sizes = {}
    for name in sorted({r["image_name"] for r in records}):
        width = rng.randint(1500, 12000)
        sizes[name] = (width, max(600, int(width * rng.uniform(0.5, 1.5))))
    cases = build_cases(records, sizes, seed=7, k=4)
    assert len(cases) == 304
    result = compare(cases)
    assert result["mismatches"] == []
    assert result["matched"] == 304
    # The box term is exercised: most box cases score strictly between 0 and 2.
    assert sum(0 < v < 2 for v in result["box_values"]) > 100
    # The processor frame (504-pixel overview) is the old mistake for this checkpoint: it
    # misses most of the cases with a scored box.
    processor = compare(cases, box_frame="processor")
    assert processor["matched"] < 304 - 100


def test_synthetic_cases_match_the_reference() -> None:
    rng = random.Random(11)
    sizes: dict[str, tuple[int, int]] = {}
    records = []
    for i in range(100):
        name = f"s{i}.tif"
        width = rng.choice([512, 513, 737, 782, 1000, 1024, 4096, 5000]) if i < 14 else rng.randint(
            512, 20000
        )
        height = max(512, int(width * rng.uniform(0.3, 2.0)))
        sizes[name] = (width, height)
        for j in range(4):
            has_box = j < 3
            x1, y1 = rng.uniform(0, 1000), rng.uniform(0, 1000)
            bbox = [round(x1), round(y1), round(x1 + rng.uniform(3, 300)),
                    round(y1 + rng.uniform(3, 300))] if has_box else []
            records.append({
                "question_id": f"{i}-{j}",
                "image_name": name,
                "ground_truth": rng.choice(WORDS + ["3", "dark grey", "Yes"]),
                "bbox": bbox,
            })
    cases = build_cases(records, sizes, seed=3, k=1)
    result = compare(cases)
    assert result["mismatches"] == []
    assert result["matched"] == len(cases) == 400


def test_small_images_keep_their_own_ground_truth_frame() -> None:
    # The one documented difference: under 512 px the reference's clamped scale puts its ground
    # truth at bbox / 2, outside such an image; here it stays bbox * max(W, H) / 1024.
    record = {"question_id": "s", "image_name": "s.png", "ground_truth": "car",
              "bbox": [400, 400, 500, 500]}
    cases = build_cases([record], {"s.png": (400, 300)}, seed=1, k=1)
    cases[0]["stage1"] = '<think>t {"bbox_2d": [160, 160, 190, 190]}</think>'
    box = compare(cases)["box_values"][0]
    assert cases[0]["row"]["gt_box_full"] == [v * 400 / 1024 for v in record["bbox"]]
    assert box == pytest.approx(ref_box(cases[0]["stage1"], [v * 0.78125 for v in record["bbox"]],
                                        400, 300), abs=TOLERANCE)
