"""The runner's box error codes come from the error's type, not from words in its message.

``validate_box`` raises typed :class:`~zoomearth.errors.BoxError` subclasses that carry their
``code``; the runner passes the code on in :class:`ToolInputError` with the message unchanged
(``Tool 'name': <the BoxError's message>``), for the region check, the preflight
(:meth:`Tool.check`) and a box error raised inside ``run``.
"""

from __future__ import annotations

import pytest

from tests.scene.rasters import write_raster
from tests.tools.helpers import make_ctx, open_scene
from zoomearth.errors import BoxError, BoxOutsideImageError, InvertedBoxError
from zoomearth.geometry import (
    BOX_INVERTED_TEMPLATE,
    BOX_OUTSIDE_TEMPLATE,
    PixelBox,
    validate_box,
)
from zoomearth.tools import Tool, ToolInputError, ToolResult, check_tool_call, run_tool


@pytest.fixture()
def scene(tmp_path, settings):
    return open_scene(write_raster(tmp_path / "img.tif", 64, 48, 3), settings)


def test_validate_box_raises_typed_errors_with_the_same_messages():
    box = PixelBox(10, 10, 5, 5)
    with pytest.raises(InvertedBoxError) as info:
        validate_box(box, 64, 48)
    assert str(info.value) == BOX_INVERTED_TEMPLATE.format(box=box)
    assert info.value.code == "inverted_box" and isinstance(info.value, BoxError | ValueError)
    box = PixelBox(100, 100, 200, 200)
    with pytest.raises(BoxOutsideImageError) as info:
        validate_box(box, 64, 48)
    assert str(info.value) == BOX_OUTSIDE_TEMPLATE.format(box=box, width=64, height=48)
    assert info.value.code == "box_outside_image"
    with pytest.raises(BoxError) as info:
        validate_box(PixelBox(3, 3, 3, 9), 64, 48)
    assert type(info.value) is BoxError and info.value.code == "bad_box"


class _WordyBoxError(BoxError):
    code = "custom_box_code"


class BoxInCheck(Tool):
    name = "box_in_check"
    description = "Refuses every call in its preflight with a box error (test tool)."

    def check(self, ctx, args):
        # The words "inverted" and "outside" no longer decide the code.
        raise BoxError("this box is inverted and outside everything")

    def run(self, ctx, args):
        return ToolResult(text="never")


class TypedBoxInRun(Tool):
    name = "typed_box_in_run"
    description = "Raises a BoxError subclass carrying its own code inside run (test tool)."

    def run(self, ctx, args):
        raise _WordyBoxError("the box lies entirely outside the image")


def test_preflight_box_error_code_comes_from_the_type(scene, tmp_path):
    ctx = make_ctx(scene, tmp_path / "run", PixelBox(0, 0, 8, 8))
    with pytest.raises(ToolInputError) as info:
        check_tool_call(BoxInCheck, ctx, {})
    assert info.value.code == "bad_box"
    assert str(info.value) == "Tool 'box_in_check': this box is inverted and outside everything"


def test_box_error_in_run_keeps_its_code(scene, tmp_path):
    ctx = make_ctx(scene, tmp_path / "run", PixelBox(0, 0, 8, 8))
    with pytest.raises(ToolInputError) as info:
        run_tool(TypedBoxInRun, ctx, {})
    assert info.value.code == "custom_box_code" and info.value.tool == "typed_box_in_run"
    assert str(info.value) == "Tool 'typed_box_in_run': the box lies entirely outside the image"


def test_the_old_contract_module_keeps_every_name_plugins_imported() -> None:
    # tools/base.py was split; plugins written against it import these names from it.
    import zoomearth.tools.base as base

    for name in ("Tool", "ToolContext", "ToolResult", "Capabilities", "Tile", "run_tool",
                 "ToolInputError", "ToolFailure", "Artifact", "ArtifactDraft", "ArtifactKind",
                 "ArtifactStore", "guess_media_type", "parse_artifact_ref", "BoxError",
                 "PixelBox", "ViewSpec", "prompt_schema", "TILE_CACHE_DIR"):
        assert hasattr(base, name), name
