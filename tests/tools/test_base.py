"""The tool contract: definition-time validation, context helpers, results and artifacts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.scene.rasters import write_raster
from tests.tools.helpers import EchoTool, make_ctx, open_scene
from zoomearth.artifacts import (
    Artifact,
    ArtifactDraft,
    ArtifactError,
    ArtifactStore,
    parse_artifact_ref,
)
from zoomearth.errors import ZoomEarthError
from zoomearth.geometry import PixelBox
from zoomearth.tools import (
    Capabilities,
    Tool,
    ToolCancelled,
    ToolDefinitionError,
    ToolFailure,
    ToolInputError,
    ToolOutcome,
    ToolResult,
    describe_arguments,
    split_region_args,
)


def _define(**attrs):
    """Define a Tool subclass with the given class attributes (a valid one by default)."""

    def run(self, ctx, args):
        return ToolResult(text="ok")

    body = {"name": "good_tool", "description": "Does something useful.", "run": run}
    body.update(attrs)
    return type("Probe", (Tool,), body)


def test_valid_definition():
    cls = _define()
    assert cls.name == "good_tool" and cls.capabilities == Capabilities()


@pytest.mark.parametrize("name", ["Bad-Name", "1abc", "", "a", "UPPER", "has space", None, 3])
def test_bad_name_is_rejected_naming_the_problem(name):
    with pytest.raises(ToolDefinitionError, match="not a valid tool name") as info:
        _define(name=name)
    assert "Probe" in str(info.value)  # names the class


def test_keyword_name_rejected():
    with pytest.raises(ToolDefinitionError, match="keyword"):
        _define(name="class")


@pytest.mark.parametrize("desc", ["", "   ", None])
def test_missing_description(desc):
    with pytest.raises(ToolDefinitionError, match="description"):
        _define(description=desc)


def test_args_must_be_pydantic():
    with pytest.raises(ToolDefinitionError, match="BaseModel"):
        _define(Args=dict)


def test_unserialisable_schema_is_rejected():
    class ArrayArgs(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        weights: np.ndarray

    with pytest.raises(ToolDefinitionError, match="JSON schema of Args"):
        _define(Args=ArrayArgs)


def test_unserialisable_default_is_rejected():
    class SetArgs(BaseModel):
        ids: object = Field(default=object())

    with pytest.raises(ToolDefinitionError, match="JSON schema of Args"):
        _define(Args=SetArgs)


def test_reserved_argument_names():
    class RegionArgs(BaseModel):
        bbox_2d: list[float]

    with pytest.raises(ToolDefinitionError, match="bbox_2d"):
        _define(Args=RegionArgs)


def test_capabilities_validated_and_coerced():
    cls = _define(capabilities={"max_side": 64, "streaming": True, "dtypes": ["u1"]})
    assert cls.capabilities.max_side == 64 and cls.capabilities.dtypes == ("uint8",)
    with pytest.raises(ToolDefinitionError, match="capabilities"):
        _define(capabilities={"max_side": 0})
    with pytest.raises(ToolDefinitionError, match="capabilities"):
        _define(capabilities={"dtypes": ["notatype"]})
    with pytest.raises(ToolDefinitionError, match="capabilities"):
        _define(capabilities=42)


def test_run_required_with_signature():
    with pytest.raises(ToolDefinitionError, match="run"):
        type("NoRun", (Tool,), {"name": "no_run", "description": "x"})
    with pytest.raises(ToolDefinitionError, match="run must take"):
        _define(run=lambda self: None)


def test_contract_version_and_approval_checked():
    with pytest.raises(ToolDefinitionError, match="contract_version"):
        _define(contract_version=99)
    with pytest.raises(ToolDefinitionError, match="needs_approval"):
        _define(needs_approval="yes")


def test_abstract_base_is_not_validated():
    class Base(Tool, abstract=True):
        pass

    class Concrete(Base):
        name = "concrete_tool"
        description = "A concrete tool."

        def run(self, ctx, args):
            return ToolResult(text="ok")

    assert Concrete.name == "concrete_tool"


def test_error_hierarchy():
    assert issubclass(ToolInputError, ValueError) and issubclass(ToolInputError, ZoomEarthError)
    assert issubclass(ToolFailure, RuntimeError) and issubclass(ToolFailure, ZoomEarthError)
    assert issubclass(ToolCancelled, ZoomEarthError)
    assert issubclass(ToolDefinitionError, TypeError)
    assert ToolInputError("x", code="region_too_large").code == "region_too_large"


def test_import_is_light():
    code = (
        "import sys, zoomearth.tools, zoomearth.artifacts, zoomearth.tools.registry;"
        "heavy = [m for m in ('torch', 'rasterio', 'cv2', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_describe_arguments_lists_types_defaults_and_descriptions():
    text = describe_arguments(EchoTool.Args)
    assert "threshold (number 0..1, default 0.5): A number between 0 and 1" in text
    assert "mask ('artifact:N' or null, default null)" in text
    assert "others (list of file path" in text
    assert describe_arguments(_define().Args).startswith("none")


def test_split_region_args():
    region, rest = split_region_args({"bbox_2d": [1, 2, 3, 4], "view": 1, "threshold": 0.2})
    assert region == {"bbox_2d": [1, 2, 3, 4], "view": 1} and rest == {"threshold": 0.2}


def test_tiles_partition_region_with_overlap(tmp_path, settings):
    scene = open_scene(write_raster(tmp_path / "a.tif", 100, 60, 1), settings)
    ctx = make_ctx(scene, tmp_path / "run", PixelBox(10, 5, 90, 55))
    ctx.region = PixelBox(10, 5, 90, 55)
    ctx._caps = Capabilities(max_side=32, streaming=True, tile_overlap=4)
    tiles = ctx.tiles()
    assert [t.index for t in tiles] == list(range(len(tiles))) and tiles[0].count == 6
    covered = np.zeros((60, 100), int)
    for t in tiles:
        x1, y1, x2, y2 = (int(v) for v in t.box.as_list())
        covered[y1:y2, x1:x2] += 1
        assert max(t.read_box.width, t.read_box.height) <= 32 + 8
        data = ctx.read(t.read_box)
        core = t.crop(data)
        assert core.shape[1:] == (y2 - y1, x2 - x1)
        np.testing.assert_array_equal(core, scene.read(t.box))
        col, row, w, h = t.window
        assert (col, row) == (x1 - 10, y1 - 5) and (w, h) == (x2 - x1, y2 - y1)
    assert covered[5:55, 10:90].min() == 1 and covered.sum() == 80 * 50
    # A full-resolution read above the declared limit is a contract breach.
    with pytest.raises(ToolFailure, match="one-piece"):
        ctx.read(PixelBox(0, 0, 100, 60))
    # A decimated read within the limit is fine.
    assert ctx.read(PixelBox(0, 0, 100, 60), out_size=(30, 18)).shape == (1, 18, 30)


def test_output_path_is_unique_and_validated(tmp_path, settings):
    scene = open_scene(write_raster(tmp_path / "a.tif", 16, 16, 1), settings)
    ctx = make_ctx(scene, tmp_path / "run")
    a, b = ctx.output_path("x.tif"), ctx.output_path("x.tif")
    assert a != b and a.parent == b.parent == tmp_path / "run"
    for bad in ("../x.tif", "sub/x.tif", ".hidden", ""):
        with pytest.raises(ToolFailure, match="plain file name"):
            ctx.output_path(bad)


def test_cancel_and_progress(tmp_path, settings):
    scene = open_scene(write_raster(tmp_path / "a.tif", 16, 16, 1), settings)
    seen = []
    ctx = make_ctx(
        scene,
        tmp_path / "run",
        progress=lambda d, t, m: seen.append((d, t, m)),
        is_cancelled=lambda: len(seen) >= 2,
    )
    ctx.report(1, 3, "one")
    with pytest.raises(ToolCancelled):
        ctx.report(2, 3, "two")
    assert seen == [(1, 3, "one"), (2, 3, "two")]


def test_outcome_is_small_json_with_observation(tmp_path):
    art = Artifact(id=3, path=str(tmp_path / "m.tif"), kind="mask", summary="water\nmask")
    out = ToolOutcome(
        tool="t",
        text="Found water.",
        artifacts=[art],
        region_xyxy=(0, 0, 10, 10),
        warnings=["Box clipped"],
    )
    dumped = json.dumps(out.model_dump(mode="json"))
    assert len(dumped) < 1000
    assert ToolOutcome.model_validate_json(dumped) == out
    obs = out.observation()
    assert "artifact:3 (mask, m.tif): water mask" in obs and "Note: Box clipped" in obs


def test_artifact_store_ids_persist(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    store = ArtifactStore(tmp_path)
    assert not (tmp_path / "artifacts.jsonl").exists() and len(store) == 0
    first = store.register([ArtifactDraft(path=tmp_path / "a.txt", kind="text")], tool="t")
    again = ArtifactStore(tmp_path).register(
        [
            ArtifactDraft(path=tmp_path / "a.txt", kind="table"),
            ArtifactDraft(path=tmp_path / "a.txt", kind="text"),
        ]
    )
    assert [a.id for a in first + again] == [1, 2, 3]
    assert first[0].media_type == "text/plain" and first[0].ref == "artifact:1"
    assert set(ArtifactStore(tmp_path).all()) == {1, 2, 3}


def test_parse_artifact_ref():
    assert parse_artifact_ref("artifact:12") == 12 and parse_artifact_ref(4) == 4
    for bad in ("artifact:0", "art:1", "artifact:x", "", -1, True):
        with pytest.raises(ArtifactError, match="artifact:N"):
            parse_artifact_ref(bad)
