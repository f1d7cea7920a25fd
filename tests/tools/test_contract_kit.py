"""The contract kit: passes on the built-in and the example plugin, fails bad tools readably."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from zoomearth.testing import check_tool, write_kit_scene
from zoomearth.tools import Capabilities, Tool, ToolResult
from zoomearth.tools.export import ExportRegion


def test_export_region_passes_the_kit(tmp_path):
    report = check_tool(ExportRegion, workdir=tmp_path)
    assert report.ok
    assert report.result("above_limit").message == "streamed a 2064 x 16 px region"
    assert report.result("cancellation").message == "stopped inside run() at the first check"


def test_example_plugin_passes_the_kit():
    zoomearth_example_plugin = pytest.importorskip(
        "zoomearth_example_plugin",
        reason="install the example plugin: pip install -e tests/plugins/example_plugin",
    )
    report = check_tool(zoomearth_example_plugin.BrightnessStats)
    assert report.result("nodata_region").message.startswith("refused clearly")


class SloppyTool(Tool):
    """Breaks the contract in several ways the kit must report."""

    name = "sloppy_tool"
    description = "Crashes on tiny regions and refuses one-band images it claims to accept."
    capabilities = Capabilities(max_side=32)  # declares no streaming

    def run(self, ctx, args):
        data = ctx.read()
        if data.shape[1] < 2:
            return ToolResult(text=str(data[0, 1, 1]))  # IndexError on a 1x1 region
        if ctx.scene.count == 1:
            raise RuntimeError("grey images are not supported")
        path = ctx.run_dir / "unmanaged.txt"  # not through output_path, not atomic
        path.write_text("x")
        ctx.check_cancelled()
        return ToolResult(text="ok", artifacts=[ctx.artifact(path, "text")])


def test_bad_tool_fails_with_a_readable_list(tmp_path):
    with pytest.raises(AssertionError) as info:
        check_tool(SloppyTool, workdir=tmp_path)
    text = str(info.value)
    assert text.startswith("zoomearth contract kit: tool 'sloppy_tool'")
    assert "FAILED  tiny_region: the 1x1 region" in text and "IndexError" in text
    assert "FAILED  one_band: a 1-band uint8 scene (accepted by the declared capabilities)" in text
    assert "grey images are not supported" in text
    assert (
        "FAILED  cancellation: a call that raised ToolCancelled left new or changed files in the "
        "run directory: unmanaged.txt"
    ) in text
    # Reusing a path overwrote the first call's artifact: refused by run_tool, reported here.
    assert "overwrites the earlier artifact:1" in text
    report = check_tool(SloppyTool, workdir=tmp_path / "again", raise_on_failure=False)
    assert report.result("basic").status == "passed"
    # The limit check passes for a non-streaming tool: refused, naming the limit.
    assert report.result("above_limit").message == "refused naming the limit 32"
    assert report.result("input_untouched").status == "passed"


class NeedsArgs(Tool):
    name = "needs_args"
    description = "Has a required argument."
    capabilities = Capabilities(max_side=64)

    class Args(BaseModel):
        label: str

    def run(self, ctx, args):
        return ToolResult(text=args.label)


def test_required_arguments_must_be_given():
    report = check_tool(NeedsArgs, raise_on_failure=False)
    (failure,) = report.failures
    assert failure.name == "definition" and "pass check_tool(MyTool, args=" in failure.message
    assert check_tool(NeedsArgs, args={"label": "x"}).ok
    report = check_tool(NeedsArgs, args={"label": "x"}, checks={"basic"})
    assert [c.name for c in report.checks] == ["definition", "basic", "input_untouched"]
    assert report.result("basic").status == "passed"


def test_args_callable_gets_scene_and_run_dir():
    report = check_tool(NeedsArgs, args=lambda scene, run_dir: {"label": scene.path.stem})
    assert report.ok and report.result("above_limit").message == "refused naming the limit 64"


class Unbounded(Tool):
    """Reads any region in one piece: max_side None, no streaming (issue #13)."""

    name = "unbounded"
    description = "Reads the whole region at once."

    def run(self, ctx, args):
        data = ctx.read()
        return ToolResult(text=f"read {data.shape}")


def test_unbounded_tool_without_streaming_fails_the_kit(tmp_path):
    assert Unbounded.capabilities.max_side is None and not Unbounded.capabilities.streaming
    report = check_tool(Unbounded, workdir=tmp_path, raise_on_failure=False)
    check = report.result("above_limit")
    assert check.status == "failed" and not report.ok  # never a skip that passes the kit
    assert "max_side is None" in check.message and "streaming" in check.message
    assert "declare Capabilities(max_side=N)" in check.message
    with pytest.raises(AssertionError, match="FAILED  above_limit"):
        check_tool(Unbounded, workdir=tmp_path / "again")


def test_unbounded_streaming_tool_passes_the_kit(tmp_path):
    class UnboundedStreaming(Unbounded):
        name = "unbounded_streaming"
        capabilities = Capabilities(streaming=True)

    report = check_tool(UnboundedStreaming, workdir=tmp_path)
    assert report.result("above_limit").status == "passed"
    assert "streaming declared" in report.result("above_limit").message


def test_uncheckably_large_limit_without_streaming_fails_the_kit(tmp_path):
    class HugeLimit(Unbounded):
        name = "huge_limit"
        capabilities = Capabilities(max_side=10**9)

    report = check_tool(HugeLimit, workdir=tmp_path, checks={"above_limit"}, raise_on_failure=False)
    check = report.result("above_limit")
    assert check.status == "failed" and "max_side=1000000000" in check.message


def test_every_registered_tool_declares_a_limit_or_streaming():
    """The above_limit rule holds for built-ins and plugins (each runs the kit elsewhere)."""
    from zoomearth.tools import BUILTIN_TOOLS, get_registry

    rows = get_registry().describe()
    assert set(BUILTIN_TOOLS) <= {r["name"] for r in rows}
    for row in rows:
        caps = row["capabilities"]
        assert caps["streaming"] or caps["max_side"] is not None, row["name"]


def test_relative_workdir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = check_tool(NeedsArgs, args={"label": "x"}, workdir="kit dir", checks={"basic"})
    assert report.result("basic").status == "passed"
    assert (tmp_path / "kit dir" / "run").is_dir()


def test_check_tool_rejects_non_tools():
    with pytest.raises(TypeError, match="Tool subclass"):
        check_tool(object)  # type: ignore[arg-type]


def test_kit_scene_has_nodata_block(tmp_path):
    import rasterio

    path = write_kit_scene(tmp_path / "s.tif", dtype="uint16", count=2)
    with rasterio.open(path) as ds:
        data = ds.read(masked=True)
    assert data.mask[:, :16, :16].all() and not data.mask[:, 16:, 16:].any()
    assert data.dtype == "uint16" and ds.crs == "EPSG:32633"


class _RunningSum(Tool):
    """Declares independent tiles, but each tile's output adds the previous tiles' sum."""

    name = "running_sum"
    description = "Writes each tile plus a running total (breaks independent_tiles; test tool)."
    capabilities = Capabilities(max_side=32, streaming=True, independent_tiles=True)
    use_map_tiles = True

    def run(self, ctx, args):
        import numpy as np

        from zoomearth.scene.writing import TiledRasterWriter

        box = ctx.box
        out = ctx.output_path("sum.tif")
        state = {"total": 0}

        def tile_fn(tile):
            data = np.ma.getdata(tile.crop(ctx.read(tile.read_box))).astype(np.int64)
            state["total"] += 1  # depends on the tiles before: resumed calls differ
            return (data + state["total"]).astype(np.int64)

        writer = TiledRasterWriter.for_window(
            out, ctx.scene, box.to_window(), dtype="int64", protect=ctx.protected_paths
        )
        with writer:
            if self.use_map_tiles:
                for tile, res in ctx.map_tiles(tile_fn):
                    writer.write(res, tile.window)
            else:
                for tile in ctx.tiles():
                    writer.write(tile_fn(tile), tile.window)
                    ctx.report(tile.index + 1, tile.count)
        return ToolResult(text="summed", artifacts=[ctx.artifact(out, "raster", "sums")])


def test_kit_checks_the_resume_of_independent_tiles(tmp_path, monkeypatch):
    report = check_tool(_RunningSum, workdir=tmp_path / "a", raise_on_failure=False)
    result = report.result("tile_resume")
    assert result.status == "failed" and "differs from the uninterrupted call's" in result.message
    monkeypatch.setattr(_RunningSum, "use_map_tiles", False)
    report = check_tool(_RunningSum, workdir=tmp_path / "b", raise_on_failure=False)
    result = report.result("tile_resume")
    assert result.status == "failed" and "no finished tile was kept" in result.message
    # Tools that do not declare it are not held to it.
    assert check_tool(ExportRegion, workdir=tmp_path / "c").result("tile_resume").status == (
        "skipped"
    )
