"""Issue #13: run directories are absolute where they are created; typed paths are per run.

* A relative run directory used to be joined twice (``toolrun/toolrun/...``) when the runner
  checked and registered artifacts; every context now holds an absolute run directory.
* Paths the user typed on a command line (``ToolContext.typed_paths``) are allowed for that run;
  a path only a planner wrote stays confined to ``allowed_roots``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from tests.scene.rasters import write_raster
from tests.tools.helpers import EchoTool, make_ctx, open_scene
from zoomearth.geometry import PixelBox
from zoomearth.tools import Tool, ToolContext, ToolInputError, ToolResult, input_path, run_tool
from zoomearth.tools.base import absolute_dir, path_argument_values

SMALL = PixelBox(0, 0, 16, 16)


@pytest.fixture()
def scene(tmp_path, settings):
    return open_scene(write_raster(tmp_path / "img.tif", 64, 48, 3), settings)


# -- run directories -------------------------------------------------------------------------
def test_relative_run_dir_is_made_absolute_once(scene, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = make_ctx(scene, Path("toolrun"), SMALL)
    assert ctx.run_dir == tmp_path / "toolrun" and ctx.run_dir.is_absolute()
    out = run_tool(EchoTool, ctx, {})
    (art,) = out.artifacts
    assert Path(art.path).parent == tmp_path / "toolrun" and Path(art.path).is_file()
    assert not (tmp_path / "toolrun" / "toolrun").exists()


def test_string_run_dir_with_tilde_and_dots(scene, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    ctx = make_ctx(scene, "~/a/../runs dir", SMALL)
    assert ctx.run_dir == tmp_path / "runs dir"
    assert Path(run_tool(EchoTool, ctx, {}).artifacts[0].path).parent == tmp_path / "runs dir"


def test_run_dir_does_not_move_with_the_working_directory(scene, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = make_ctx(scene, "rel", SMALL)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = run_tool(EchoTool, ctx, {})
    assert Path(out.artifacts[0].path).parent == tmp_path / "rel"
    assert not (elsewhere / "rel").exists()


def test_relative_draft_path_is_inside_the_run_dir(scene, tmp_path, monkeypatch):
    """A draft named relative to the run directory is joined to it exactly once."""

    class RelativeDraft(Tool):
        name = "relative_draft"
        description = "Writes a file and names it relative to the run directory."

        def run(self, ctx: ToolContext, args: BaseModel) -> ToolResult:
            path = ctx.output_path("note.txt")
            path.write_text("x")
            return ToolResult(text="ok", artifacts=[ctx.artifact(path.name, "text")])

    monkeypatch.chdir(tmp_path)
    out = run_tool(RelativeDraft, make_ctx(scene, "toolrun", SMALL), {})
    assert Path(out.artifacts[0].path).parent == tmp_path / "toolrun"


def test_absolute_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_dir("x/../y z") == tmp_path / "y z"
    assert absolute_dir(tmp_path) == tmp_path


# -- typed paths -----------------------------------------------------------------------------
@pytest.fixture()
def beside(tmp_path):
    """A file next to the input, outside any allowed root (allowed_roots is empty)."""
    path = tmp_path / "dir with space" / "ñandú é.tif"
    path.parent.mkdir()
    path.write_text("x")
    return path


def test_typed_path_is_allowed_without_allowed_roots(scene, beside):
    assert scene.settings.allowed_roots == []
    ctx = make_ctx(scene, scene.path.parent / "run", SMALL, typed_paths=[str(beside)])
    out = run_tool(EchoTool, ctx, {"others": [str(beside)]})
    assert out.data["others"] == [str(beside.resolve())]


def test_typed_relative_path_matches_from_the_working_directory(scene, beside, monkeypatch):
    monkeypatch.chdir(beside.parent)
    ctx = make_ctx(scene, "run", SMALL, typed_paths=[beside.name])
    out = run_tool(EchoTool, ctx, {"others": [beside.name]})
    assert out.data["others"] == [str(beside.resolve())]


def test_untyped_path_stays_confined(scene, beside):
    """The planner's side: no typed paths, the same file is refused (allowed_roots is empty)."""
    with pytest.raises(ToolInputError, match="allowed_roots is empty") as info:
        run_tool(
            EchoTool, make_ctx(scene, scene.path.parent / "run", SMALL), {"others": [str(beside)]}
        )
    assert info.value.code == "path_not_allowed"


def test_typed_paths_allow_exact_files_only(scene, beside):
    sibling = beside.with_name("other.tif")
    sibling.write_text("y")
    ctx = make_ctx(scene, scene.path.parent / "run", SMALL, typed_paths=[beside])
    with pytest.raises(ToolInputError, match="allowed_roots is empty"):
        run_tool(EchoTool, ctx, {"others": [str(beside), str(sibling)]})
    # A typed directory allows nothing below it, and is not a file itself.
    ctx = make_ctx(scene, scene.path.parent / "run", SMALL, typed_paths=[beside.parent])
    with pytest.raises(ToolInputError, match="allowed_roots is empty"):
        run_tool(EchoTool, ctx, {"others": [str(beside)]})
    with pytest.raises(ToolInputError, match="typed on the command line.*is a directory"):
        run_tool(EchoTool, ctx, {"others": [str(beside.parent)]})


def test_typed_missing_path_says_so(scene, tmp_path):
    missing = tmp_path / "missing.tif"
    ctx = make_ctx(scene, tmp_path / "run", SMALL, typed_paths=[missing])
    with pytest.raises(ToolInputError, match="typed on the command line.*does not exist") as info:
        run_tool(EchoTool, ctx, {"others": [str(missing)]})
    assert info.value.code == "path_not_allowed"


def test_typed_paths_survive_the_runner_copy(scene, beside, tmp_path):
    ctx = make_ctx(scene, tmp_path / "run", SMALL, typed_paths=[beside])
    assert ctx.typed_paths == (beside.resolve(),)
    run_tool(EchoTool, ctx, {"others": [str(beside)]})
    assert ctx.typed_paths == (beside.resolve(),)  # the caller's context is not changed


def test_typed_path_through_a_symlink(scene, beside, tmp_path):
    link = tmp_path / "link.tif"
    os.symlink(beside, link)
    ctx = make_ctx(scene, tmp_path / "run", SMALL, typed_paths=[link])
    assert run_tool(EchoTool, ctx, {"others": [str(beside)]}).data["others"] == [
        str(beside.resolve())
    ]


def test_typed_input_is_protected_from_overwrite(scene, beside, tmp_path):
    ctx = make_ctx(scene, tmp_path / "run", SMALL, typed_paths=[beside])
    before = beside.read_bytes()
    run_tool(EchoTool, ctx, {"others": [str(beside)]})
    assert beside.read_bytes() == before


class Aliased(Tool):
    name = "aliased_paths"
    description = "Has path arguments with an alias and a list."

    class Args(BaseModel):
        first: input_path() = Field(alias="source")  # type: ignore[valid-type]
        more: list[input_path()] = Field(default_factory=list)  # type: ignore[valid-type]
        label: str = "x"

    def run(self, ctx: ToolContext, args: BaseModel) -> ToolResult:
        return ToolResult(text="ok")


def test_path_argument_values():
    assert path_argument_values(
        Aliased.Args, {"source": "a.tif", "more": ["b.tif", None, 3], "label": "c.tif"}
    ) == ["a.tif", "b.tif"]
    assert path_argument_values(Aliased.Args, {"more": "single.tif"}) == ["single.tif"]
    assert path_argument_values(EchoTool.Args, {"threshold": 0.1}) == []


def test_cloud_removal_others_next_to_the_input(tmp_path, settings):
    """The issue's example, in process: others next to the input, typed by the user."""
    src = write_raster(tmp_path / "scene.tif", 64, 48, 3)
    other = tmp_path / "scene-2.tif"
    shutil.copy(src, other)
    scene = open_scene(src, settings)
    args = {"others": [str(other)], "method": "composite"}
    from zoomearth.tools.cloud_removal import CloudRemoval

    with pytest.raises(ToolInputError, match="allowed_roots"):
        run_tool(CloudRemoval, make_ctx(scene, tmp_path / "run", None), args)
    typed = [src, *path_argument_values(CloudRemoval.Args, args)]
    out = run_tool(CloudRemoval, make_ctx(scene, tmp_path / "run", None, typed_paths=typed), args)
    assert out.artifacts and all(Path(a.path).is_file() for a in out.artifacts)
