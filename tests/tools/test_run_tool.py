"""run_tool: argument validation, capabilities, the one-piece limit, artifact references,
allowed roots, output checks, failures and cancellation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.scene.rasters import write_raster
from tests.tools.helpers import EchoTool, make_ctx, open_scene
from zoomearth.artifacts import ArtifactDraft, ArtifactStore
from zoomearth.geometry import PixelBox
from zoomearth.tools import (
    Capabilities,
    PathNotAllowedError,
    Tool,
    ToolCancelled,
    ToolFailure,
    ToolInputError,
    ToolResult,
    check_allowed_path,
    run_tool,
)


@pytest.fixture()
def scene(tmp_path, settings):
    return open_scene(write_raster(tmp_path / "img.tif", 64, 48, 3), settings)


@pytest.fixture()
def run_dir(tmp_path):
    return tmp_path / "run"


SMALL = PixelBox(0, 0, 16, 16)


def test_success_registers_artifacts(scene, run_dir):
    out = run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), {"threshold": 0.2})
    assert out.text == "echo [0, 0, 16, 16]" and out.region_xyxy == (0, 0, 16, 16)
    (art,) = out.artifacts
    assert art.id == 1 and art.tool == "echo_region" and Path(art.path).parent == run_dir
    assert out.data["shape"] == [3, 16, 16]
    again = run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), {})
    assert again.artifacts[0].id == 2
    json.dumps(out.model_dump(mode="json"))


def test_context_of_caller_is_not_mutated(scene, run_dir):
    ctx = make_ctx(scene, run_dir, PixelBox(-4, -4, 10.5, 10))
    out = run_tool(EchoTool, ctx, {})
    assert ctx.region == PixelBox(-4, -4, 10.5, 10) and ctx.warnings == []
    assert out.region_xyxy == (0, 0, 11, 10) and "clipped" in out.warnings[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"thresold": 0.2}, "has no argument 'thresold'. Valid arguments: threshold (number 0..1"),
        ({"threshold": 3}, "'threshold': Input should be less than or equal to 1 (got 3)"),
        ({"threshold": "high"}, "'threshold': Input should be a valid number"),
        ({"mask": "mask1"}, "'mask': String should match pattern"),
        ({"bbox_2d": [0, 0, 1, 1]}, "bbox_2d is the region of the call"),
    ],
)
def test_invalid_arguments_are_input_errors_for_the_planner(scene, run_dir, args, expected):
    with pytest.raises(ToolInputError) as info:
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), args)
    assert expected in str(info.value)
    assert "Valid arguments:" in str(info.value) or "bbox_2d" in expected
    assert not run_dir.exists()


def test_arguments_must_be_an_object(scene, run_dir):
    with pytest.raises(ToolInputError, match="must be a JSON object"):
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), [1, 2])  # type: ignore[arg-type]


def test_capabilities_refuse_band_count_and_dtype(tmp_path, settings, run_dir):
    four = open_scene(write_raster(tmp_path / "four.tif", 32, 32, 4), settings)
    with pytest.raises(ToolInputError, match="accepts images with 1 or 3 band") as info:
        run_tool(EchoTool, make_ctx(four, run_dir, SMALL), {})
    assert info.value.code == "unsupported_image" and "has 4" in str(info.value)
    u16 = open_scene(write_raster(tmp_path / "u16.tif", 32, 32, 3, "uint16"), settings)
    with pytest.raises(ToolInputError, match="accepts pixel types uint8; this image is uint16"):
        run_tool(EchoTool, make_ctx(u16, run_dir, SMALL), {})


@pytest.mark.parametrize(
    ("box", "code"),
    [
        (PixelBox(10, 10, 5, 5), "inverted_box"),
        (PixelBox(100, 100, 200, 200), "box_outside_image"),
        (PixelBox(float("nan"), 0, 1, 1), "bad_box"),
        (PixelBox(3, 3, 3, 9), "bad_box"),
    ],
)
def test_bad_boxes_are_input_errors(scene, run_dir, box, code):
    with pytest.raises(ToolInputError) as info:
        run_tool(EchoTool, make_ctx(scene, run_dir, box), {})
    assert info.value.code == code and "echo_region" in str(info.value)


def test_region_above_limit_is_refused_naming_the_limit(scene, run_dir):
    with pytest.raises(ToolInputError) as info:
        run_tool(EchoTool, make_ctx(scene, run_dir, None), {})  # whole 64x48 scene, limit 32
    msg = str(info.value)
    assert "at most 32 x 32" in msg and "64 x 48 px" in msg and "cannot stream" in msg
    assert info.value.code == "region_too_large"


class StreamingSum(Tool):
    name = "streaming_sum"
    description = "Sum of the region, tile by tile (test tool)."
    capabilities = Capabilities(max_side=20, streaming=True, tile_overlap=2)

    def run(self, ctx, args):
        total = 0
        tiles = ctx.tiles()
        for t in tiles:
            total += int(t.crop(ctx.read(t.read_box)).sum())
            ctx.report(t.index + 1, len(tiles))
        return ToolResult(text=f"sum {total}", data={"sum": total, "tiles": len(tiles)})


class GreedyStreamer(StreamingSum):
    name = "greedy_streamer"

    def run(self, ctx, args):
        ctx.read()  # the whole region at once, despite the declared limit
        return ToolResult(text="read it all")


def test_region_above_limit_is_streamed_by_streaming_tools(scene, run_dir):
    seen = []
    ctx = make_ctx(scene, run_dir, None, progress=lambda d, t, m: seen.append((d, t)))
    out = run_tool(StreamingSum, ctx, {})
    assert out.streamed and out.data["tiles"] == 12
    assert out.data["sum"] == int(scene.read().sum())
    assert seen[-1] == (12, 12)
    small = run_tool(StreamingSum, make_ctx(scene, run_dir, SMALL), {})
    assert not small.streamed and small.data["tiles"] == 1


def test_reading_above_the_limit_is_a_contract_failure(scene, run_dir):
    with pytest.raises(ToolFailure, match="one-piece limit of 24 px"):
        run_tool(GreedyStreamer, make_ctx(scene, run_dir, None), {})


# -- artifact references ---------------------------------------------------------------------
def _register(run_dir: Path, kind: str, name: str) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text("x")
    (art,) = ArtifactStore(run_dir).register([ArtifactDraft(path=run_dir / name, kind=kind)])
    return art.id


def test_artifact_reference_resolves(scene, run_dir):
    mask_id = _register(run_dir, "mask", "mask.tif")
    out = run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), {"mask": f"artifact:{mask_id}"})
    assert out.data["mask"] == str((run_dir / "mask.tif").resolve())


def test_artifact_references_from_state_mapping(scene, run_dir, tmp_path):
    (tmp_path / "m.tif").write_text("x")
    from zoomearth.artifacts import Artifact

    given = {7: Artifact(id=7, path=str(tmp_path / "m.tif"), kind="mask", summary="water")}
    out = run_tool(
        EchoTool, make_ctx(scene, run_dir, SMALL, artifacts=given), {"mask": "artifact:7"}
    )
    assert out.data["mask"].endswith("m.tif")


def test_unknown_or_wrong_kind_artifact_is_an_input_error(scene, run_dir):
    _register(run_dir, "mask", "mask.tif")
    prev = _register(run_dir, "preview", "p.png")
    with pytest.raises(ToolInputError) as info:
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), {"mask": "artifact:9"})
    assert "names artifact:9, which does not exist. Available: artifact:1 (mask" in str(info.value)
    with pytest.raises(ToolInputError, match=f"needs an artifact of kind mask; artifact:{prev} is"):
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), {"mask": f"artifact:{prev}"})
    (run_dir / "mask.tif").unlink()
    with pytest.raises(ToolInputError, match="no longer exists"):
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL), {"mask": "artifact:1"})


# -- allowed roots -----------------------------------------------------------------------------
@pytest.fixture()
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "other.tif").write_text("x")
    (outside / "secret.tif").write_text("x")
    os.symlink(outside / "secret.tif", allowed / "link.tif")
    os.symlink(outside, allowed / "dirlink")
    return allowed, outside


def _ctx_with_roots(scene, run_dir, roots_list):
    settings = scene.settings.model_copy(update={"allowed_roots": roots_list})
    return make_ctx(scene, run_dir, SMALL, settings=settings)


def test_path_argument_inside_allowed_root(scene, run_dir, roots):
    allowed, _ = roots
    ctx = _ctx_with_roots(scene, run_dir, [allowed])
    out = run_tool(EchoTool, ctx, {"others": [str(allowed / "other.tif")]})
    assert out.data["others"] == [str((allowed / "other.tif").resolve())]


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("../outside/secret.tif", "contains a '..' component"),
        ("link.tif", "a symbolic link leads out"),
        ("dirlink/secret.tif", "a symbolic link leads out"),
        ("missing.tif", "does not exist"),
    ],
)
def test_path_argument_refused(scene, run_dir, roots, rel, expected):
    allowed, _ = roots
    ctx = _ctx_with_roots(scene, run_dir, [allowed])
    with pytest.raises(ToolInputError) as info:
        run_tool(EchoTool, ctx, {"others": [str(allowed / rel)]})
    assert expected in str(info.value) and info.value.code == "path_not_allowed"
    assert "Argument 'others'" in str(info.value)


def test_path_outside_roots_names_roots_and_setting(scene, run_dir, roots):
    allowed, outside = roots
    ctx = _ctx_with_roots(scene, run_dir, [allowed])
    with pytest.raises(ToolInputError) as info:
        run_tool(EchoTool, ctx, {"others": [str(outside / "secret.tif")]})
    msg = str(info.value)
    assert str(allowed.resolve()) in msg and "allowed_roots" in msg
    with pytest.raises(ToolInputError, match="allowed_roots is empty"):
        run_tool(EchoTool, _ctx_with_roots(scene, run_dir, []), {"others": [str(allowed)]})


def test_check_allowed_path_direct(roots, tmp_path, monkeypatch):
    allowed, outside = roots
    assert (
        check_allowed_path(f"file://{allowed}/other.tif", [allowed])
        == (allowed / "other.tif").resolve()
    )
    monkeypatch.chdir(allowed)
    assert check_allowed_path("other.tif", [allowed]).name == "other.tif"
    with pytest.raises(PathNotAllowedError, match="is a directory"):
        check_allowed_path(allowed, [allowed])
    assert check_allowed_path(allowed, [allowed], allow_dir=True) == allowed.resolve()
    assert check_allowed_path(allowed / "new.tif", [allowed], must_exist=False).name == "new.tif"
    with pytest.raises(PathNotAllowedError, match="NUL"):
        check_allowed_path("a\x00b", [allowed])
    with pytest.raises(PathNotAllowedError, match="file:// URLs"):
        check_allowed_path("file://host/x.tif", [allowed])
    # A root given through a symlink still works (roots are resolved too).
    os.symlink(allowed, tmp_path / "root_link")
    assert check_allowed_path(tmp_path / "root_link" / "other.tif", [tmp_path / "root_link"])
    assert isinstance(PathNotAllowedError("x"), PermissionError)


# -- the runner's guards ---------------------------------------------------------------------
def _tool(tool_name, run):
    return type("T", (Tool,), {"name": tool_name, "description": "Test tool.", "run": run})


def test_unexpected_exception_is_a_failure_with_cause(scene, run_dir):
    def run(self, ctx, args):
        path = ctx.output_path("half.txt")
        path.write_text("partial")  # non-atomic, then crash
        raise KeyError("oops")

    with pytest.raises(ToolFailure, match="Tool 'crasher' failed: KeyError") as info:
        run_tool(_tool("crasher", run), make_ctx(scene, run_dir, SMALL), {})
    assert isinstance(info.value.__cause__, KeyError)
    # Issued files removed, and the run directory the call created (left empty) with them.
    assert not run_dir.exists()


def test_artifact_outside_run_dir_is_refused(scene, run_dir, tmp_path):
    def run(self, ctx, args):
        p = tmp_path / "elsewhere.txt"
        p.write_text("x")
        return ToolResult(text="t", artifacts=[ctx.artifact(p, "text")])

    with pytest.raises(ToolFailure, match="outside the run directory"):
        run_tool(_tool("escaper", run), make_ctx(scene, run_dir, SMALL), {})


def test_artifact_over_input_is_refused(scene, tmp_path):
    def run(self, ctx, args):
        return ToolResult(text="t", artifacts=[ctx.artifact(ctx.scene.path, "raster")])

    # The run directory holds the input here, so only the "never the input" check stops it.
    with pytest.raises(ToolFailure, match="tools never write over input"):
        run_tool(_tool("over_input", run), make_ctx(scene, tmp_path, SMALL), {})


def test_modified_input_is_detected(scene, run_dir):
    def run(self, ctx, args):
        with open(ctx.scene.path, "ab") as fh:
            fh.write(b"\0")
        return ToolResult(text="t")

    with pytest.raises(ToolFailure, match="was modified during the call"):
        run_tool(_tool("vandal", run), make_ctx(scene, run_dir, SMALL), {})


def test_bad_return_value_and_data(scene, run_dir):
    with pytest.raises(ToolFailure, match="expected a ToolResult"):
        run_tool(_tool("returns_str", lambda self, ctx, args: "done"), make_ctx(scene, run_dir), {})

    def run(self, ctx, args):
        return ToolResult(text="t", data={"array": np.zeros(2)})

    with pytest.raises(ToolFailure, match="JSON object"):
        run_tool(_tool("bad_data", run), make_ctx(scene, run_dir, SMALL), {})


def test_tool_input_error_from_run_passes_through(scene, run_dir):
    def run(self, ctx, args):
        raise ToolInputError("choose a box over water")

    with pytest.raises(ToolInputError, match="over water"):
        run_tool(_tool("picky", run), make_ctx(scene, run_dir, SMALL), {})


def test_cancellation_keeps_nothing(scene, run_dir):
    checks = []

    def cancelled():
        checks.append(1)
        return len(checks) > 1

    with pytest.raises(ToolCancelled, match="no artifacts were kept"):
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL, is_cancelled=cancelled), {})
    assert not run_dir.exists()  # nothing kept, not even the (empty) folder the call made
    run_dir.mkdir()
    checks.clear()
    with pytest.raises(ToolCancelled):  # a folder the caller made is left in place, empty
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL, is_cancelled=cancelled), {})
    assert list(run_dir.iterdir()) == []
    with pytest.raises(ToolCancelled):  # cancelled before the call: nothing runs
        run_tool(EchoTool, make_ctx(scene, run_dir, SMALL, is_cancelled=lambda: True), {})


def test_long_text_is_truncated(scene, run_dir):
    out = run_tool(
        _tool("chatty", lambda self, ctx, args: ToolResult(text="x" * 5000)),
        make_ctx(scene, run_dir, SMALL),
        {},
    )
    assert len(out.text) <= 2000 and out.text.endswith("(truncated)")


def test_tool_by_name_uses_registry(scene, run_dir):
    out = run_tool("export_region", make_ctx(scene, run_dir, SMALL), {"preview": False})
    assert out.tool == "export_region" and len(out.artifacts) == 1


def test_export_keeps_a_source_mask(tmp_path):
    """A source whose invalid pixels are marked by a mask band (no nodata value) exports them
    as invalid too."""
    import numpy as np
    import rasterio

    from zoomearth.scene import Scene
    from zoomearth.tools.base import ToolContext, run_tool
    from zoomearth.tools.export import ExportRegion

    src = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        src, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
        tiled=True, blockxsize=32, blockysize=32, crs="EPSG:32633",
        transform=rasterio.Affine(1, 0, 500_000, 0, -1, 5_000_000),
    ) as dst:
        dst.write(np.full((3, 64, 64), 90, np.uint8))
        mask = np.full((64, 64), 255, np.uint8)
        mask[:, :16] = 0
        dst.write_mask(mask)
    ctx = ToolContext(scene=Scene.open(src), run_dir=tmp_path / "run")
    outcome = run_tool(ExportRegion, ctx, {})
    tif = next(a for a in outcome.artifacts if a.kind == "raster")
    with rasterio.open(tif.path) as ds:
        m = ds.read_masks(1)
    assert (m[:, :16] == 0).all() and (m[:, 16:] == 255).all()
