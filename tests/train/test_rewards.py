"""Hand-worked cases for the format, box (IoU + Region-Guided) and answer rewards.

Frame used by the box cases: a 5120 x 5120 image and the reference's 512 x 512 overview, so one
overview pixel is 10 full-resolution pixels (``ReferenceFrame``). The parity with the reference's
reward code on generated cases is in ``test_reward_parity.py``.
"""

from __future__ import annotations

import math

import pytest

from zoomearth.geometry import PixelBox, ViewSpec
from zoomearth.train import rewards
from zoomearth.train.rewards import (
    BoxTarget,
    ProcessorFrame,
    ReferenceFrame,
    answer_reward,
    box_reward,
    crop_area_iou,
    format_reward,
    frame_from_row,
    make_reward_funcs,
    reference_crop_area,
    reference_training_box_factor,
    region_guided_term,
)

OVERVIEW = ViewSpec(0, PixelBox(0, 0, 5120, 5120), 512, 512)
FRAME = ReferenceFrame(5120, 5120)
# Ground truth: full-resolution (1000, 1000, 1100, 1100); LRS-GRO frame (x 1024/5120): 200..220.
TARGET = BoxTarget((1000.0, 1000.0, 1100.0, 1100.0), (200.0, 200.0, 220.0, 220.0), FRAME)


def stage1(box: str) -> str:
    return f'<think>look at {{"bbox_2d": {box}, "label": "ship"}}</think>'


# ---- readers ------------------------------------------------------------------------------------


def test_rewards_read_with_the_protocol_readers() -> None:
    from zoomearth.agent import protocol

    # One source for the reference's patterns: the protocol module.
    assert rewards.reference_tag is protocol.reference_tag
    assert rewards.reference_bboxes is protocol.reference_bboxes
    assert not [name for name in vars(rewards) if name.endswith("_RE") or name == "_tag_re"]
    # The readers' semantics the rewards rely on (first block, stripped; lists of numbers).
    assert protocol.reference_tag("<think>  a b \n</think>", "think") == "a b"
    assert protocol.reference_tag("<answer></answer>", "answer") == ""
    assert protocol.reference_tag("<answer>a</answer><answer>b</answer>", "answer") == "a"
    text = '"bbox_2d": [1, 2, 3, 4] "bbox_2d": [1,2,3] "bbox_2d": [] "bbox_2d": ["a", 1]'
    assert protocol.reference_bboxes(text) == [[1, 2, 3, 4], [1, 2, 3]]


# ---- format ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s1", "s2", "expected"),
    [
        ("<think>t</think><answer>a</answer>", "", 1.0),
        ("<think>t</think>", "", 0.0),  # no answer
        ("<think></think><answer>a</answer>", "", 0.0),  # empty think counts as absent
        ("<answer>a</answer>", "", 0.0),
        (stage1("[1, 2, 3, 4]"), "<think>t</think><answer>a</answer>", 1.0),
        (stage1("[1, 2, 3]"), "<think>t</think><answer>a</answer>", 1.0),  # a list is a box here
        ("<think>no box</think>", "<think>t</think><answer>a</answer>", 0.0),
        (stage1("[1, 2, 3, 4]"), "<think>t</think>", 0.0),  # stage 2 without answer
        (stage1("[1, 2, 3, 4]"), "<answer>a</answer>", 0.0),  # stage 2 without think
        ("", "", 0.0),
    ],
)
def test_format_reward(s1: str, s2: str, expected: float) -> None:
    assert format_reward(s1, s2) == expected


# ---- box ---------------------------------------------------------------------------------------


def test_reference_crop_area_cases() -> None:
    # Small box: a 512 square centred (floor) on it.
    assert reference_crop_area((1000, 1000, 1100, 1100)) == [794, 794, 1306, 1306]
    # Near the left/top edge: the corner is clamped at 0, the far edge stays (the crop shrinks).
    assert reference_crop_area((0, 0, 100, 100)) == [0, 0, 306, 306]
    # Large on both sides: the box itself, untruncated.
    assert reference_crop_area((0.5, 0, 600, 700)) == [0.5, 0, 600, 700]
    # Large on one side only: still a 512 *square* (the reference replaces both sides).
    assert reference_crop_area((0, 0, 1000, 10)) == [244, 0, 756, 261]
    # Coordinates are truncated first: 1000.9 -> 1000.
    assert reference_crop_area((1000.9, 1000.9, 1100.9, 1100.9)) == [794, 794, 1306, 1306]


def test_crop_area_iou_cases() -> None:
    assert crop_area_iou((1000, 1000, 1100, 1100), (1000, 1000, 1100, 1100)) == 1.0
    # Shifted by 500 px in x: overlap 12 x 512 of two 512^2 squares.
    expected = 12 * 512 / (2 * 512 * 512 - 12 * 512)
    assert crop_area_iou((1500, 1000, 1600, 1100), (1000, 1000, 1100, 1100)) == pytest.approx(
        expected
    )
    assert crop_area_iou((5000, 5000, 5100, 5100), (0, 0, 100, 100)) == 0.0
    assert crop_area_iou((1, 2, 3), (0, 0, 100, 100)) == 0.0


def test_region_guided_term() -> None:
    assert region_guided_term((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0  # zero distance: tanh(2e8)
    assert region_guided_term((200, 0, 210, 10), (0, 0, 10, 10)) == pytest.approx(math.tanh(1.0))
    assert region_guided_term((500, 0, 510, 10), (0, 0, 10, 10), scale=50) == pytest.approx(
        math.tanh(0.1)
    )


def test_box_reward_same_centre_is_two() -> None:
    # [100, 100, 110, 110] -> full (1000, 1000, 1100, 1100): IoU 1 + tanh(200 / 1e-6) = 2.
    assert box_reward(stage1("[100, 100, 110, 110]"), TARGET) == pytest.approx(2.0)


def test_box_reward_shifted_box() -> None:
    # [150, 100, 160, 110] -> full (1500, 1000, 1600, 1100): distance 500 px.
    iou = 12 * 512 / (2 * 512 * 512 - 12 * 512)
    value = box_reward(stage1("[150, 100, 160, 110]"), TARGET)
    assert value == pytest.approx(iou + math.tanh(200 / 500), rel=1e-6)
    assert value == pytest.approx(0.391807, abs=1e-6)
    # A larger Region-Guided scale rewards the same distance more.
    assert box_reward(stage1("[150, 100, 160, 110]"), TARGET, scale=1000) > value


def test_box_reward_exact_match_is_two() -> None:
    # The reference compares the numbers written with the LRS-GRO bbox as they are.
    assert box_reward(stage1("[200, 200, 220, 220]"), TARGET) == 2.0
    assert box_reward(stage1("[200.0, 200.0, 220.0, 220.0]"), TARGET) == 2.0


@pytest.mark.parametrize(
    "text",
    [
        "<think>no box</think><answer>x</answer>",
        stage1("[100, 100, 110]"),
        stage1("[100, 100, 110, 110, 5]"),
        stage1("[]"),
        "",
    ],
)
def test_box_reward_degenerate_is_zero(text: str) -> None:
    assert box_reward(text, TARGET) == 0.0


def test_box_reward_without_ground_truth_is_zero() -> None:
    target = BoxTarget(None, None, FRAME)
    assert box_reward(stage1("[100, 100, 110, 110]"), target) == 0.0


@pytest.mark.parametrize(
    "box", ["[nan, 1, 2, 3]", "[1, inf, 2, 3]", "[1e308, 1e308, 1e308, 1e308]"]
)
def test_box_reward_non_finite_is_zero(box: str) -> None:
    # The reference raises in int(); here such a box is worth nothing.
    assert box_reward(stage1(box), TARGET) == 0.0


def test_box_reward_uses_first_box() -> None:
    text = stage1("[150, 100, 160, 110]") + stage1("[100, 100, 110, 110]")
    assert box_reward(text, TARGET) == pytest.approx(0.391807, abs=1e-6)


def test_reference_frame_is_the_512_overview() -> None:
    # 5000 x 3000: the overview is 512 x 307 and one unit is 5000 / 512 px on *both* axes.
    frame = ReferenceFrame(5000, 3000)
    assert frame.overview_size() == (512, 307)
    assert frame.factor == 5000 / 512
    assert frame.to_full([512, 307, 0, 0]) == [5000.0, 307 * 5000 / 512, 0.0, 0.0]
    assert frame.whole() == [0.0, 0.0, 512.0, 307.0]
    # Images under 512 px are not resized, and the trainer does not scale their boxes.
    assert reference_training_box_factor(400, 300) == 1.0
    assert ReferenceFrame(400, 300).overview_size() == (400, 300)


def test_training_factor_is_the_trainers_expression() -> None:
    from zoomearth.agent.profiles import reference_box_factor

    # The trainer's max(W, H) / 512 is exact; the evaluation's 1 / (512 / W) is one unit in the
    # last place off for some sizes -- enough to move an int()-truncated crop by a pixel.
    assert reference_training_box_factor(737, 600) == 737 / 512 == 1.439453125
    assert reference_box_factor(737, 600) != reference_training_box_factor(737, 600)
    assert reference_box_factor(5120, 100) == reference_training_box_factor(5120, 100) == 10.0
    # 782 x 782: the box [246, 246, 256, 256] ends at x = 391 exactly with the trainer's factor,
    # at 390.99... with the evaluation's -- and the reward's crop area moves by one pixel.
    box = [246, 246, 256, 256]
    trainer = reference_crop_area(ReferenceFrame(782, 782).to_full(box))
    evaluation = reference_crop_area([v * reference_box_factor(782, 782) for v in box])
    assert (trainer, evaluation) == ([127, 127, 639, 639], [126, 126, 638, 638])


def test_processor_frame_is_the_seen_overview() -> None:
    # A general model that saw the 512 x 512 overview at 256 x 256: [50, 50, 55, 55] -> x 20.
    half = BoxTarget(TARGET.gt_full, TARGET.exact, ProcessorFrame(OVERVIEW, (256, 256)))
    assert box_reward(stage1("[50, 50, 55, 55]"), half) == pytest.approx(2.0)
    # Seen at 504 x 504 (Qwen2.5-VL): the same numbers land ~1.6 % further out than in the
    # reference frame, and the reward differs.
    seen504 = BoxTarget(TARGET.gt_full, TARGET.exact, ProcessorFrame(OVERVIEW, (504, 504)))
    text = stage1("[150, 100, 160, 110]")
    assert box_reward(text, seen504) != pytest.approx(box_reward(text, TARGET), abs=1e-3)


def test_frame_from_row() -> None:
    assert frame_from_row({"scene_size": [5120, 5120]}, "reference") == FRAME
    row = {"overview_spec": OVERVIEW.to_dict(), "overview_seen": [504, 504]}
    assert frame_from_row(row, "processor") == ProcessorFrame(OVERVIEW, (504, 504))
    with pytest.raises(KeyError, match="scene_size"):
        frame_from_row(row, "reference")
    with pytest.raises(ValueError, match="Unknown box frame"):
        frame_from_row(row, "seen")


# ---- answer ------------------------------------------------------------------------------------

SIMS = {("car", "automobile"): 1.0, ("car", "truck"): 0.5, ("car", "van"): 0.8}


def fake_similarity(a: str, b: str) -> float:
    return SIMS.get((a, b), 0.0)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("<answer>Car.</answer>", 1.0),  # normalised exact match
        ("<answer> car </answer>", 1.0),
        ("<answer>automobile</answer>", 1.0),  # similarity 1.0
        ("<answer>van</answer>", 1.0),  # similarity exactly at the 0.8 threshold counts as 1
        ("<answer>truck</answer>", 0.5),  # below: kept as is
        ("<answer>boat</answer>", 0.0),
        ("<answer></answer>", 0.0),  # empty answer
        ("no answer tag", 0.0),
    ],
)
def test_answer_reward_not_cut(answer: str, expected: float) -> None:
    assert answer_reward("<think>t</think>" + answer, "", "car", fake_similarity) == expected


def test_answer_reward_reads_stage2_when_cut() -> None:
    s1 = "<think>t</think><answer>car</answer>"
    assert (
        answer_reward(s1, "<think>t</think><answer>truck</answer>", "car", fake_similarity) == 0.5
    )
    assert answer_reward("<think>t</think>", "<answer>car</answer>", "car", fake_similarity) == 1.0


def test_answer_reward_degenerate() -> None:
    assert answer_reward("<answer>car</answer>", "", "", fake_similarity) == 0.0  # empty truth
    assert answer_reward("<answer>car</answer>", "", None, fake_similarity) == 0.0
    assert answer_reward("<answer>automobile</answer>", "", "car", None) == 0.0  # exact only
    assert answer_reward("<answer>truck</answer>", "", "car", fake_similarity, threshold=0.5) == 1.0


# ---- TRL wrappers --------------------------------------------------------------------------------


def test_trl_reward_functions_read_rollout_fields_and_columns() -> None:
    funcs = make_reward_funcs(similarity=fake_similarity)
    assert [f.__name__ for f in funcs] == ["format_reward", "box_reward", "answer_reward"]
    columns = {
        "stage1": [stage1("[100, 100, 110, 110]"), "<think>t</think><answer>truck</answer>"],
        "stage2": ["<think>t</think><answer>car</answer>", ""],
        "gt_box_full": [[1000, 1000, 1100, 1100], []],
        "bbox": [[200, 200, 220, 220], []],
        "gt_box_view": [[100, 100, 110, 110], []],
        "scene_size": [[5120, 5120], [5120, 5120]],
        "overview_spec": [OVERVIEW.to_dict(), OVERVIEW.to_dict()],
        "overview_seen": [[504, 504], [504, 504]],
        "ground_truth": ["car", "car"],
    }
    fmt, box, ans = (f(prompts=["q1", "q2"], completions=["", ""], **columns) for f in funcs)
    assert fmt == [1.0, 1.0]
    # The default frame is the reference's 512 overview: [100 ...] is exactly the ground truth.
    assert box[0] == pytest.approx(2.0) and box[1] == 0.0
    assert ans == [1.0, 0.5]
    # exact_match_frame=view: the numbers of the SFT target count as exact.
    view_box = make_reward_funcs(exact_match_frame="view", similarity=None)[1]
    assert view_box(completions=["", ""], **columns)[0] == 2.0
    # The processor frame (general models): the same numbers in the 504 x 504 seen overview.
    processor_box = make_reward_funcs(box_frame="processor", similarity=None)[1]
    shifted = processor_box(completions=["", ""], **columns)[0]
    assert 0.0 < shifted < 2.0
    with pytest.raises(ValueError, match="Unknown box frame"):
        make_reward_funcs(box_frame="seen")  # type: ignore[arg-type]
    del columns["scene_size"]
    with pytest.raises(KeyError, match="scene_size"):
        funcs[1](completions=["", ""], **columns)


def test_default_similarity_is_the_projects_wordnet() -> None:
    from zoomearth.train.rewards import default_similarity

    similarity = default_similarity()
    assert similarity is not None
    assert similarity("car", "automobile") == 1.0
    assert similarity("car", "cars") == 1.0  # both noun-lemmatised first, as the reference does
    assert 0.0 < similarity("ship", "boat") < 0.8
    assert answer_reward("<answer>automobile</answer>", "", "car", similarity) == 1.0
    boat = answer_reward("<answer>boat</answer>", "", "ship", similarity)
    assert boat == pytest.approx(similarity("ship", "boat"))


def test_train_modules_import_no_heavy_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import zoomearth.train.rewards, zoomearth.train.data, zoomearth.train.config\n"
        "import zoomearth.train.sft, zoomearth.train.grpo, zoomearth.train.cli\n"
        "import zoomearth.train.plots, zoomearth.train.common\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'matplotlib') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
