"""``zoomearth planner``: see exactly what a planner model is fed, and get ZoomEarth's prompt text.

``zoomearth planner inputs IMAGE QUESTION --profile zoomearth --prompt-file FILE --out DIR``
renders, without weights, the inputs the ``transformers`` backend would hand the processor:

* ``stage1.txt`` -- the stage-1 text, byte for byte (UTF-8, no newline translation);
* ``stage1_image1.png`` -- the overview;
* given ``--stage1-output`` (text, or ``@FILE``): ``stage2.txt``, ``stage2_image1.png`` (the
  overview) and ``stage2_image2.png`` (the crop) when the output holds a usable box;
* ``inputs.json`` -- the profile, sizes, the box as written and in full-resolution pixels, the crop
  window, and notes.

With ``--profile agent`` the general profile's inputs are rendered the same way: the chat template
(the checkpoint's, with ``--model DIR``; the packaged Qwen2-VL template otherwise) over the agent's
messages, tools from the registry included.

``zoomearth planner extract-prompt REFERENCE_CLONE -o FILE`` writes the ``zoomearth`` profile's
prompt file from a local clone of the reference repository: it reads the two string literals of
``src/eval/infer.py`` (the ``prefix`` and ``instruction`` assignments) with :mod:`ast` -- no code of
that repository is run -- and joins them around ``{{question}}``.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path
from typing import Any, Final

from zoomearth.errors import ZoomEarthError

__all__ = ["add_planner_command", "extract_reference_prompt"]

REFERENCE_INFER: Final = Path("src") / "eval" / "infer.py"

NO_INFER_TEMPLATE: Final = (
    "{path} does not exist: give the root of a local clone of the ZoomEarth reference repository "
    "(it holds src/eval/infer.py)."
)
NO_LITERALS_TEMPLATE: Final = (
    "{path} has no string assignments named 'prefix' and 'instruction' (found: {found}); the "
    "reference repository changed -- copy the stage-1 text by hand (see docs/reproduce.md)."
)
OUTPUT_EXISTS_TEMPLATE: Final = "{path} exists; pass --force to overwrite it."
READ_OUTPUT_TEMPLATE: Final = "Cannot read the stage-1 output file {path}: {error}."


class PlannerCliError(ZoomEarthError, ValueError):
    """A ``zoomearth planner`` command was given something it cannot use."""


def extract_reference_prompt(repo: str | Path) -> str:
    """The ``zoomearth`` prompt file's text, read from a clone of the reference repository.

    Args:
        repo: The clone's root directory.

    Returns:
        ``prefix + "{{question}}" + instruction``, the string literals of ``src/eval/infer.py``
        byte for byte.

    Raises:
        PlannerCliError: The file is missing or does not hold the two literals.
    """
    path = Path(repo).expanduser() / REFERENCE_INFER
    if not path.is_file():
        raise PlannerCliError(NO_INFER_TEMPLATE.format(path=path))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.setdefault(node.targets[0].id, node.value.value)
    if "prefix" not in found or "instruction" not in found:
        raise PlannerCliError(
            NO_LITERALS_TEMPLATE.format(path=path, found=", ".join(sorted(found)) or "none")
        )
    return found["prefix"] + "{{question}}" + found["instruction"]


def add_planner_command(sub: Any) -> None:
    """Register ``zoomearth planner inputs|extract-prompt``."""
    from zoomearth.cli_common import command

    p = sub.add_parser(
        "planner", help="render a planner's exact inputs; extract ZoomEarth's prompt text"
    )
    psub = p.add_subparsers(dest="planner_command", metavar="ACTION", required=True)

    s = psub.add_parser("inputs", help="write what the model is fed (texts, images, boxes)")
    s.add_argument("image")
    s.add_argument("question")
    s.add_argument("--profile", choices=("zoomearth", "agent"), default="zoomearth")
    s.add_argument(
        "--prompt-file",
        help="zoomearth: the stage-1 text with {{question}}; agent: a prompt template file",
    )
    s.add_argument(
        "--stage1-output", help="the model's stage-1 output (text, or @FILE) to render stage 2"
    )
    s.add_argument(
        "--model", help="agent profile: a checkpoint directory whose chat template to use"
    )
    s.add_argument("--bands", help="1-based band mapping shown as RGB, e.g. 3,2,1")
    s.add_argument("--out", required=True, help="output directory (created)")

    s = psub.add_parser(
        "extract-prompt", help="write the zoomearth prompt file from a clone of the reference"
    )
    s.add_argument("repo", help="root of a local clone of the ZoomEarth reference repository")
    s.add_argument("-o", "--output", required=True, help="the prompt file to write")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")

    command("planner")(cmd_planner)


def cmd_planner(args: argparse.Namespace, settings: Any) -> int:
    """Dispatch ``zoomearth planner ACTION``."""
    if args.planner_command == "extract-prompt":
        out = Path(args.output)
        if out.exists() and not args.force:
            raise PlannerCliError(OUTPUT_EXISTS_TEMPLATE.format(path=out))
        text = extract_reference_prompt(args.repo)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(text.encode("utf-8"))
        print(f"wrote {out} ({len(text)} characters; the question goes at {{{{question}}}})")
        return 0
    return _inputs(args, settings)


def _stage1_output(value: str | None) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlannerCliError(READ_OUTPUT_TEMPLATE.format(path=path, error=exc)) from None


def _write_png(path: Path, rgb: Any) -> None:
    from PIL import Image

    Image.fromarray(rgb, "RGB").save(path, format="PNG")


def _inputs(args: argparse.Namespace, settings: Any) -> int:
    from zoomearth.cli_common import _parse_bands
    from zoomearth.scene import Scene

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    output = _stage1_output(args.stage1_output)
    with Scene.open(args.image, bands=_parse_bands(args.bands), settings=settings) as scene:
        if args.profile == "zoomearth":
            record = _zoomearth_inputs(args, settings, scene, output, out)
        else:
            record = _agent_inputs(args, settings, scene, output, out)
    (out / "inputs.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {', '.join(files)} to {out}")
    for note in record.get("notes", []):
        print(f"note: {note}")
    return 0


def _zoomearth_inputs(
    args: argparse.Namespace, settings: Any, scene: Any, output: str | None, out: Path
) -> dict[str, Any]:
    from zoomearth.agent.profiles import (
        ZoomEarthProfile,
        load_zoomearth_prompt,
        reference_box_factor,
    )
    from zoomearth.agent.protocol import reference_answer, reference_first_box
    from zoomearth.scene.reference import render_reference_crop, render_reference_overview

    prompt = load_zoomearth_prompt(args.prompt_file or settings.planner_prompt)
    profile = ZoomEarthProfile(prompt)
    overview, exact = render_reference_overview(
        scene, exact_max_pixels=settings.zoomearth_exact_overview_max_pixels
    )
    stage1 = profile.stage1_text(args.question)
    (out / "stage1.txt").write_bytes(stage1.encode("utf-8"))
    _write_png(out / "stage1_image1.png", overview)
    record: dict[str, Any] = {
        "profile": "zoomearth",
        "image": scene.source,
        "image_size": [scene.width, scene.height],
        "overview_size": [int(overview.shape[1]), int(overview.shape[0])],
        "overview_exact": exact,
        "box_factor": reference_box_factor(scene.width, scene.height),
        "stage1_text": "stage1.txt",
        "stage1_images": ["stage1_image1.png"],
        "notes": [],
    }
    if not exact:
        record["notes"].append(
            "the overview was resampled from an internal overview level (image above "
            "zoomearth_exact_overview_max_pixels); see docs/reproduce.md"
        )
    if output is None:
        return record
    box, note = reference_first_box(output)
    record["stage1_box"] = box
    if note:
        record["notes"].append(note)
    if box is None:
        record["stage2"] = None
        record["stage1_answer"] = reference_answer(output)
        record["notes"].append("no usable box in stage 1: there is no stage 2")
        return record
    full = profile.box_to_full(box, scene.width, scene.height)
    crop = profile.crop_xyxy(full, scene.width, scene.height)
    crop_rgb = render_reference_crop(scene, tuple(int(v) for v in crop))  # type: ignore[arg-type]
    (out / "stage2.txt").write_bytes(profile.stage2_text(args.question, output).encode("utf-8"))
    _write_png(out / "stage2_image1.png", overview)
    _write_png(out / "stage2_image2.png", crop_rgb)
    record.update(
        stage1_box_full_xyxy=full,
        crop_xyxy=list(crop),
        crop_size=[int(crop_rgb.shape[1]), int(crop_rgb.shape[0])],
        stage2_text="stage2.txt",
        stage2_images=["stage2_image1.png", "stage2_image2.png"],
    )
    return record


def _agent_inputs(
    args: argparse.Namespace, settings: Any, scene: Any, output: str | None, out: Path
) -> dict[str, Any]:
    from zoomearth.agent.base import PlanRequest, TranscriptEntry
    from zoomearth.agent.conversation import build_conversation, to_chat_dicts
    from zoomearth.agent.frames import planner_box_to_full, seen_size, zoom_region
    from zoomearth.agent.parsing import parse_response
    from zoomearth.agent.prompting import load_template
    from zoomearth.geometry import ViewSpec
    from zoomearth.tools.registry import get_registry

    template = load_template(args.prompt_file or settings.planner_prompt)
    ow, oh = scene.output_size(scene.full_box, settings.overview_side)
    views = {0: ViewSpec(0, scene.full_box, ow, oh)}
    pixels: dict[int, Any] = {0: scene.render(None, max_side=settings.overview_side).rgb}
    tools = get_registry().tool_specs_for_prompt()
    info = {"width": scene.width, "height": scene.height, "crs": scene.crs_string}
    record: dict[str, Any] = {
        "profile": "agent",
        "image": scene.source,
        "image_size": [scene.width, scene.height],
        "overview_size": [ow, oh],
        "overview_seen_size": list(seen_size(ow, oh)),
        "notes": [],
    }

    def render(request: PlanRequest, stage: int) -> None:
        conversation = build_conversation(request, "chat", "pixels", template)
        # As the transformers backend does: special-token strings in text cannot forge structure.
        chat = to_chat_dicts(
            conversation,
            lambda _v: {"type": "image"},
            text=lambda t: re.sub(r"<\|[a-z_]{1,40}\|>", "", t),
        )
        text = _chat_template_text(chat, args.model)
        (out / f"stage{stage}.txt").write_bytes(text.encode("utf-8"))
        names = []
        for i, vid in enumerate(conversation.image_view_ids, start=1):
            name = f"stage{stage}_image{i}.png"
            _write_png(out / name, pixels[vid])
            names.append(name)
        record[f"stage{stage}_text"] = f"stage{stage}.txt"
        record[f"stage{stage}_images"] = names

    def request(transcript: list[TranscriptEntry]) -> PlanRequest:
        return PlanRequest(
            question=args.question,
            overview_id=0,
            transcript=transcript,
            views=views,
            render=lambda vid: pixels[vid],
            tools=tools,
            scene_info=info,
        )

    render(request([]), 1)
    if output is None:
        return record
    parsed = parse_response(output)
    if not parsed.zooms:
        record["notes"].append("the stage-1 output asks for no zoom: there is no stage 2")
        return record
    zoom = parsed.zooms[0]
    full = planner_box_to_full(zoom.box, "pixels", views[0], seen_size(ow, oh))
    crop, _ = zoom_region(full, scene.width, scene.height, settings.min_crop, snap=True)
    view = scene.render(crop, max_side=settings.view_side)
    views[1] = ViewSpec(1, crop, view.spec.width, view.spec.height)
    pixels[1] = view.rgb
    render(
        request([TranscriptEntry("planner", output), TranscriptEntry("zoom", "View 1", view_id=1)]),
        2,
    )
    record.update(stage1_box=list(zoom.box), crop_xyxy=crop.as_list())
    return record


def _chat_template_text(chat: list[dict[str, Any]], model: str | None) -> str:
    """Render messages with a checkpoint's chat template (or the packaged Qwen2-VL one)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from zoomearth.agent.prompting import qwen2_vl_chat_template

    template = None
    if model:
        from transformers import AutoProcessor

        template = getattr(AutoProcessor.from_pretrained(model), "chat_template", None)
    rendered = render_jinja_template(
        conversations=[chat],
        chat_template=template or qwen2_vl_chat_template(),
        add_generation_prompt=True,
    )
    # Older and newer transformers return the text or a (texts, indices) pair.
    if isinstance(rendered, tuple):
        rendered = rendered[0]
    if isinstance(rendered, list):
        rendered = rendered[0]
    return str(rendered)
