"""`zoomearth planner inputs` equals an independent construction of the reference's inputs.

The reference construction is written here from the reference evaluation's description: PIL
``Image.open().convert("RGB")``, bicubic to long side 512 with ``int()`` sizes, its crop rule on
the box scaled by ``1 / (512 / max(W, H))``, and string concatenation. The project's side reads
windows only (never the whole image at once), so equality shows the windowed path is exact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.scene.rasters import write_raster
from zoomearth.cli import main

# A made-up instruction with the reference's whitespace quirks.
PROMPT = (
    "\n<|im_start|>system\nYou are a careful test model. <|im_end|>\n<|im_start|>user\n"
    '<|vision_start|><|image_pad|><|vision_end|>{{question}}\nWrite [{"bbox_2d": [x1,y1,x2,y2],'
    ' "label": "..."}] then <answer>.\n  - Rules: \n<|im_end|><|im_start|>assistant\n'
)
QUESTION = "Is there a boat near the edge?"
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def ref_cut(img: Image.Image, bbox: list[float], min_size: int = 512) -> Image.Image:
    x1, y1, x2, y2 = map(int, bbox)
    if x2 - x1 >= min_size and y2 - y1 >= min_size:
        return img.crop((x1, y1, x2, y2))
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left = min(max(cx - min_size // 2, 0), img.width - min_size)
    top = min(max(cy - min_size // 2, 0), img.height - min_size)
    left, top = max(left, 0), max(top, 0)
    return img.crop((left, top, min(img.width, left + min_size), min(img.height, top + min_size)))


def ref_resize(img: Image.Image) -> Image.Image:
    w, h = img.size
    scale = 512 / max(w, h)
    if scale < 1:
        return img.resize((int(w * scale), int(h * scale)), Image.BICUBIC)
    return img


def reference_inputs(path: Path, output: str) -> dict:
    img = Image.open(path).convert("RGB")
    scale = 512 / max(img.size)
    prefix, instruction = PROMPT.split("{{question}}")
    text1 = prefix + QUESTION + instruction
    inner = re.findall(r'"bbox_2d"\s*:\s*\[(.*?)\]', output, re.DOTALL)[0]
    bbox = [float(x.strip()) * (1 / scale) for x in inner.split(",")]
    return {
        "text1": text1,
        "overview": np.asarray(ref_resize(img)),
        "text2": text1 + output.split("<answer>")[0] + PLACEHOLDER,
        "crop": np.asarray(ref_resize(ref_cut(img, bbox))),
    }


@pytest.fixture(scope="module", params=[(5000, 3000), (3000, 5000)], ids=["5000x3000", "3000x5000"])
def image(request, tmp_path_factory):
    w, h = request.param
    rng = np.random.default_rng(w)
    # Smooth structure plus noise, so bicubic weights matter everywhere.
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 37.0) * 60 + np.cos(yy / 23.0) * 60 + 128).astype(np.int16)
    data = np.stack([base, base[::-1], base[:, ::-1]]) + rng.integers(-40, 40, (3, h, w))
    data = np.clip(data, 0, 255).astype(np.uint8)
    # Uncompressed tiled GeoTIFF: PIL opens it too (the reference's reader).
    path = tmp_path_factory.mktemp("inputs") / f"scene_{w}x{h}.tif"
    return write_raster(path, w, h, 3, data=data, block=256, overviews=[2, 4, 8])


def boxes_512(w: int, h: int) -> list[list[float]]:
    ow, oh = (512, int(h * 512 / w)) if w >= h else (int(w * 512 / h), 512)
    return [
        [0, oh / 2 - 5, 12, oh / 2 + 5],  # left edge, small
        [ow - 12, oh / 2 - 5, ow, oh / 2 + 5],  # right edge, small
        [ow / 2 - 5, 0, ow / 2 + 5, 9],  # top edge
        [ow / 2 - 5, oh - 9, ow / 2 + 5, oh],  # bottom edge
        [0, 0, 20, 20],  # top-left corner
        [ow - 20, oh - 20, ow, oh],  # bottom-right corner
        [ow - 140.5, 3.7, ow, 130.2],  # top-right, over 512 full-res on both sides
        [-30, oh - 120, 90, oh + 25],  # reaching outside, over 512: raw window, black padding
        [10.9, 10.9, 70.2, 20.4],  # one side over 512, the other under: a square
    ]


def test_stage_texts_and_images_equal_the_reference_construction(image, tmp_path, settings):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(PROMPT.encode("utf-8"))
    with Image.open(image) as im:
        w, h = im.size
    for i, box in enumerate(boxes_512(w, h)):
        output = (
            f'<think>Look. [{{"bbox_2d": [{", ".join(f"{v:g}" for v in box)}], "label": "b"}}]'
            "</think>\n<answer>yes</answer>"
        )
        out = tmp_path / f"run{i}"
        code = main(
            [
                "--set",
                f"data_dir={tmp_path / 'data'}",
                "--set",
                f"cache_dir={tmp_path / 'c'}",
                "planner",
                "inputs",
                str(image),
                QUESTION,
                "--prompt-file",
                str(prompt),
                "--stage1-output",
                output,
                "--out",
                str(out),
            ]
        )
        assert code == 0
        ref = reference_inputs(image, output)
        assert (out / "stage1.txt").read_bytes() == ref["text1"].encode("utf-8")
        assert (out / "stage2.txt").read_bytes() == ref["text2"].encode("utf-8")
        crop = np.asarray(Image.open(out / "stage2_image2.png"))
        assert crop.shape == ref["crop"].shape, box
        assert np.array_equal(crop, ref["crop"]), box
        if i == 0:
            overview = np.asarray(Image.open(out / "stage1_image1.png"))
            assert np.array_equal(overview, ref["overview"])
            assert np.array_equal(np.asarray(Image.open(out / "stage2_image1.png")), overview)
        record = json.loads((out / "inputs.json").read_text())
        assert record["overview_exact"] is True and record["stage1_box"] == box


def test_no_box_means_no_stage_two(image, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(PROMPT.encode("utf-8"))
    out = tmp_path / "run"
    assert (
        main(
            [
                "--set",
                f"cache_dir={tmp_path / 'c'}",
                "planner",
                "inputs",
                str(image),
                QUESTION,
                "--prompt-file",
                str(prompt),
                "--stage1-output",
                "<answer>no</answer>",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "inputs.json",
        "stage1.txt",
        "stage1_image1.png",
    ]
    assert json.loads((out / "inputs.json").read_text())["stage1_answer"] == "no"


def test_agent_profile_inputs(image, tmp_path):
    out = tmp_path / "agent"
    output = '<think>{"bbox_2d": [100, 100, 140, 140], "label": "boat"}</think>'
    assert (
        main(
            [
                "--set",
                f"cache_dir={tmp_path / 'c'}",
                "planner",
                "inputs",
                str(image),
                QUESTION,
                "--profile",
                "agent",
                "--stage1-output",
                output,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text1 = (out / "stage1.txt").read_text(encoding="utf-8")
    assert text1.startswith("<|im_start|>system\n") and text1.endswith("<|im_start|>assistant\n")
    assert QUESTION in text1 and "<tools>" in text1  # the agent profile offers the registry's tools
    text2 = (out / "stage2.txt").read_text(encoding="utf-8")
    assert text2.count(PLACEHOLDER) == 2 and output in text2
    assert Image.open(out / "stage2_image2.png").size[0] <= 512


def test_extract_prompt_reads_the_literals_without_running_code(tmp_path):
    repo = tmp_path / "clone"
    (repo / "src" / "eval").mkdir(parents=True)
    (repo / "src" / "eval" / "infer.py").write_text(
        'import sys\nsys.exit("must not run")\n'
        "def f():\n"
        '    prefix = """\\n<|im_start|>system\\nSys. <|im_end|>\\n<|im_start|>user\\nIMG"""\n'
        '    instruction = """\\nDo it.\\n<|im_end|><|im_start|>assistant\\n"""\n',
        encoding="utf-8",
    )
    out = tmp_path / "prompt.txt"
    assert main(["planner", "extract-prompt", str(repo), "-o", str(out)]) == 0
    assert out.read_bytes() == (
        b"\n<|im_start|>system\nSys. <|im_end|>\n<|im_start|>user\nIMG{{question}}"
        b"\nDo it.\n<|im_end|><|im_start|>assistant\n"
    )
    assert main(["planner", "extract-prompt", str(repo), "-o", str(out)]) == 2  # no overwrite
    assert main(["planner", "extract-prompt", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
