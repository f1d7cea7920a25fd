"""Contract kit for tool authors: ``check_tool(MyTool)`` from your own tests.

The kit writes tiny synthetic rasters into a temporary directory (georeferenced 3-band ``uint8``
with a nodata-only corner, 1-band, 16-bit, pixel-only, and a strip just above the tool's one-piece
limit) and runs the tool on them through :func:`zoomearth.tools.run_tool` -- the code path the
agent uses. It checks that

* the class is well-formed and callable with the given arguments;
* a normal call succeeds and its outcome is JSON-serialisable, with artifacts inside the run
  directory, unique ids, rasters carrying the scene's CRS, and no temporary files left behind;
* the whole scene (no region) is handled;
* bad boxes (NaN, inverted, empty, outside) are refused with
  :class:`~zoomearth.tools.ToolInputError` and a partly-outside box is clipped (or refused
  clearly) -- never a crash;
* a nodata-only region and a 1x1 region give a valid result or a clear ToolInputError;
* one-band, 16-bit and pixel-only scenes are handled when the declared capabilities accept them,
  and refused with a ToolInputError otherwise;
* a region above ``capabilities.max_side`` is streamed (``streaming=True``) or refused with a
  message naming the limit; a tool without a one-piece limit (``max_side=None``: unbounded reads)
  must declare ``streaming=True`` -- otherwise the check fails, it is never skipped;
* cancellation raises :class:`~zoomearth.tools.ToolCancelled` and leaves no file behind; refused
  or failed calls leave no file either (outputs are written atomically). The finished tiles a
  tool with ``independent_tiles`` keeps for a resume (``RUN_DIR/.tiles/``) are the exception;
* a tool declaring ``Capabilities(independent_tiles=True)``, stopped after its first finished
  tile, resumes from the kept tiles and writes the same rasters as an uninterrupted call;
* the input files' bytes and modification times never change.

Usage::

    from zoomearth.testing import check_tool

    def test_contract():
        check_tool(MyTool)                      # raises AssertionError listing every failure
        check_tool(MyTool, args={"threshold": 0.3})

:func:`check_tool` returns a :class:`ContractReport`; ``raise_on_failure=False`` returns it
without raising.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zoomearth.geometry import PixelBox
from zoomearth.tools.base import (
    TILE_CACHE_DIR,
    Tool,
    ToolCancelled,
    ToolContext,
    ToolError,
    ToolFailure,
    ToolInputError,
    ToolOutcome,
    run_tool,
)

if TYPE_CHECKING:
    from zoomearth.config import Settings
    from zoomearth.models import ModelPool
    from zoomearth.scene import Scene

__all__ = ["CheckResult", "ContractReport", "check_tool", "write_kit_scene"]

Status = Literal["passed", "failed", "skipped"]
ArgsSpec = Mapping[str, Any] | Callable[["Scene", Path], Mapping[str, Any]] | None

KIT_WIDTH = 64
KIT_HEIGHT = 48
NODATA_BLOCK = PixelBox(0, 0, 16, 16)
VALID_BOX = PixelBox(24, 16, 56, 40)
MAX_WIDE_SIDE = 200_000

REPORT_HEADER_TEMPLATE = "zoomearth contract kit: tool {name!r} ({target}): {summary}"
NOT_A_TOOL_TEMPLATE = "check_tool needs a zoomearth Tool subclass; got {got!r}"
UNBOUNDED_TEMPLATE = (
    "capabilities.max_side is None (no one-piece limit: the tool may read a whole gigapixel "
    "scene at once) and streaming is not declared; declare Capabilities(max_side=N) with the "
    "largest side the tool processes in one piece (larger regions are then refused naming N), "
    "or declare streaming=True and process large regions tile by tile through ctx.tiles() "
    "(best with max_side=N too)"
)
UNCHECKABLE_LIMIT_TEMPLATE = (
    "capabilities.max_side={limit} is above the largest side the kit can check ({most} px) and "
    "streaming is not declared, so one-piece reads are effectively unbounded; declare a "
    "max_side the tool really processes in one piece, or streaming=True and read through "
    "ctx.tiles()"
)
UNBOUNDED_STREAMING_NOTE = (
    "no one-piece limit (max_side None); streaming declared, so the tool splits large regions "
    "itself (ctx.tiles(side=...))"
)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check of the kit.

    Attributes:
        name: Check name (``basic``, ``bad_boxes``, ``above_limit`` ...).
        status: ``passed``, ``failed`` or ``skipped``.
        message: Why it failed or was skipped, or a note on a pass.
    """

    name: str
    status: Status
    message: str = ""


@dataclass
class ContractReport:
    """All checks of one :func:`check_tool` run.

    Attributes:
        tool: Tool name.
        target: ``module:Class``.
        checks: Results, in the order run.
    """

    tool: str
    target: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        """The failed checks."""
        return [c for c in self.checks if c.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures

    def result(self, name: str) -> CheckResult:
        """The result of the check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def __str__(self) -> str:
        n_fail = len(self.failures)
        summary = (
            f"all {len(self.checks)} checks passed"
            if not n_fail
            else f"{n_fail} of {len(self.checks)} checks failed"
        )
        lines = [REPORT_HEADER_TEMPLATE.format(name=self.tool, target=self.target, summary=summary)]
        order = {"failed": 0, "passed": 1, "skipped": 2}
        for c in sorted(self.checks, key=lambda c: order[c.status]):
            text = f"  {c.status.upper() if c.status == 'failed' else c.status:<7} {c.name}"
            lines.append(text + (f": {c.message}" if c.message else ""))
        return "\n".join(lines)


class _CheckFailed(Exception):
    """Internal: a check found a problem (message = the problem)."""


# --------------------------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------------------------
def _nodata_for(dtype: str) -> float:
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind == "f":
        return float("nan")
    if dt.kind == "u":
        return 0.0
    return -9999.0 if np.iinfo(dt).min <= -9999 else float(np.iinfo(dt).min)


def write_kit_scene(
    path: Path,
    *,
    width: int = KIT_WIDTH,
    height: int = KIT_HEIGHT,
    count: int = 3,
    dtype: str = "uint8",
    georef: bool = True,
    nodata_block: PixelBox | None = NODATA_BLOCK,
) -> Path:
    """Write a small position-coded raster the kit uses (also handy in a tool's own tests).

    Pixel values are valid everywhere (never the nodata value) except inside ``nodata_block``,
    where every band holds the nodata value. Band ``b`` at ``(x, y)`` is ``1 + (x + 3 y + 50 b)
    mod 250``, scaled by 16 for 16-bit types and divided by 250 for floats.

    Args:
        path: Output GeoTIFF.
        width: Width in pixels.
        height: Height in pixels.
        count: Number of bands.
        dtype: numpy dtype name.
        georef: Write a CRS (EPSG:32633) and a 0.5 m geotransform; else pixel-only.
        nodata_block: Full-resolution box filled with nodata; None for none.

    Returns:
        ``path``.
    """
    import warnings

    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    dt = np.dtype(dtype)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([1 + (x + 3 * y + 50 * b) % 250 for b in range(count)]).astype(np.float64)
    if dt.kind == "f":
        arr = arr / 250.0
    elif dt.itemsize >= 2:
        arr = arr * 16
    nodata = _nodata_for(dtype)
    if nodata_block is not None:
        c0, r0, w, h = nodata_block.to_window()
        arr[:, r0 : r0 + h, c0 : c0 + w] = nodata
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dt.name,
        "nodata": nodata,
    }
    if width >= 32 and height >= 16:
        profile.update(tiled=True, blockxsize=16 * max(1, min(16, width // 16)), blockysize=16)
    if georef:
        profile.update(crs="EPSG:32633", transform=Affine(0.5, 0, 500_000, 0, -0.5, 5_000_000))
    with warnings.catch_warnings():
        # A pixel-only scene (no geotransform) is one of the layouts the kit tests on purpose.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr.astype(dt))
    return path


def _fingerprint(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


def _listing(run_dir: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file below ``run_dir``."""
    if not run_dir.exists():
        return {}
    out = {}
    for p in run_dir.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(run_dir))] = (st.st_size, st.st_mtime_ns)
    return out


def _changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Files created or modified between two listings, except finished tiles kept for a resume."""
    kept = f"{TILE_CACHE_DIR}/"
    return sorted(k for k, v in after.items() if before.get(k) != v and not k.startswith(kept))


def _describe_exc(exc: BaseException, tool_file: str | None = None) -> str:
    """``Type: message``, plus where the cause of a ToolFailure was raised.

    The location is the innermost frame in the tool's own file when the traceback passes through
    it, else the innermost frame.
    """
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if isinstance(exc, ToolFailure) and cause is not None:
        frames = traceback.extract_tb(cause.__traceback__)
        own = [f for f in frames if tool_file and f.filename == tool_file]
        if frames:
            last = (own or frames)[-1]
            text += f" (raised at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text


# --------------------------------------------------------------------------------------------
# The kit
# --------------------------------------------------------------------------------------------
class _Kit:
    def __init__(
        self,
        tool_cls: type[Tool],
        workdir: Path,
        args: ArgsSpec,
        pool: ModelPool | None,
    ) -> None:
        from zoomearth.config import Settings

        self.tool_cls = tool_cls
        self.tool = tool_cls()
        self.caps = tool_cls.capabilities
        self.workdir = workdir
        self.args_spec = args
        self.pool = pool
        self.settings: Settings = Settings.model_validate(
            {
                "data_dir": workdir / "data",
                "cache_dir": workdir / "cache",
                "allowed_roots": [workdir],
                # Kit scenes are tiny or one-row strips: never build prepared copies of them.
                "prepare_min_side": 10**9,
            }
        )
        self.run_dir = workdir / "run"
        self.scenes: dict[str, Scene] = {}
        self.inputs: dict[Path, tuple[str, int, int]] = {}
        self.report = ContractReport(tool=tool_cls.name, target=tool_cls.source_target())
        try:
            self.tool_file: str | None = inspect.getsourcefile(tool_cls)
        except TypeError:  # pragma: no cover - classes defined without a source file
            self.tool_file = None

    # -- scenes ---------------------------------------------------------------------------------
    def base_layout(self) -> tuple[int, str]:
        caps = self.caps
        count = next((c for c in (3, 1, 4) if caps.accepts_bands(c)), None)
        if count is None:
            count = min(caps.bands or (3,))
        dtype = "uint8" if caps.accepts_dtype("uint8") else (caps.dtypes or ("uint8",))[0]
        return count, dtype

    def scene(self, key: str, **kwargs: Any) -> Scene:
        from zoomearth.scene import Scene

        if key not in self.scenes:
            path = write_kit_scene(self.workdir / f"{key}.tif", **kwargs)
            self.inputs[path] = _fingerprint(path)
            self.scenes[key] = Scene.open(path, settings=self.settings, progress=False)
        return self.scenes[key]

    def base(self) -> Scene:
        count, dtype = self.base_layout()
        return self.scene("base", count=count, dtype=dtype)

    # -- calls ----------------------------------------------------------------------------------
    def args_for(self, scene: Scene) -> dict[str, Any]:
        spec = self.args_spec
        if spec is None:
            return {}
        if callable(spec):
            return dict(spec(scene, self.run_dir))
        return dict(spec)

    def call(
        self,
        scene: Scene,
        box: PixelBox | None,
        *,
        cancel: Callable[[], bool] | None = None,
    ) -> ToolOutcome | ToolError:
        """Run through run_tool; return the outcome or the ToolError; check no litter on error."""
        args = self.args_for(scene)
        before = _listing(self.run_dir)
        ctx = ToolContext(
            scene=scene,
            run_dir=self.run_dir,
            region=box,
            pool=self.pool,
            settings=self.settings,
            is_cancelled=cancel,
        )
        try:
            outcome = run_tool(self.tool, ctx, args)
        except ToolError as exc:
            left = _changes(before, _listing(self.run_dir))
            if left:
                raise _CheckFailed(
                    f"a call that raised {type(exc).__name__} left new or changed files in the "
                    f"run directory: {', '.join(left[:5])} (write outputs atomically to "
                    f"ctx.output_path()); the error was {_describe_exc(exc, self.tool_file)}"
                ) from None
            return exc
        self.check_outcome(scene, outcome)
        return outcome

    def expect_ok(self, result: ToolOutcome | ToolError, what: str) -> ToolOutcome:
        if isinstance(result, ToolError):
            raise _CheckFailed(f"{what} failed: {_describe_exc(result, self.tool_file)}")
        return result

    def expect_ok_or_input_error(self, result: ToolOutcome | ToolError, what: str) -> str:
        if isinstance(result, ToolInputError):
            return f"refused clearly: {result}"
        if isinstance(result, ToolError):
            raise _CheckFailed(
                f"{what} must give a result or a ToolInputError; got "
                f"{_describe_exc(result, self.tool_file)}"
            )
        return "handled"

    def check_outcome(self, scene: Scene, outcome: ToolOutcome) -> None:
        try:
            json.dumps(outcome.model_dump(mode="json"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _CheckFailed(f"the outcome is not JSON-serialisable: {exc}") from None
        if not outcome.text.strip():
            raise _CheckFailed("the result text is empty; say what the tool found or did")
        run_dir = self.run_dir.resolve()
        for art in outcome.artifacts:
            path = Path(art.path)
            if run_dir not in path.resolve().parents:
                raise _CheckFailed(f"artifact {path} is outside the run directory {run_dir}")
            if not path.is_file():
                raise _CheckFailed(f"artifact {path} does not exist")
            self.check_raster_artifact(scene, art.kind, art.crs, path)
        leftovers = sorted(p.name for p in self.run_dir.glob(".*.tmp-*"))
        if leftovers:
            raise _CheckFailed(f"temporary files left in the run directory: {leftovers[:5]}")

    def check_raster_artifact(self, scene: Scene, kind: str, crs: str | None, path: Path) -> None:
        if path.suffix.lower() not in (".tif", ".tiff") or kind not in ("raster", "mask"):
            return
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                file_crs = ds.crs
        if scene.georeferenced and file_crs is None:
            raise _CheckFailed(
                f"{kind} artifact {path.name} of a georeferenced scene has no CRS; write it "
                "aligned to the source window (zoomearth.scene.writing.write_window_array)"
            )
        if crs and file_crs is not None:
            from rasterio.crs import CRS

            if CRS.from_user_input(crs) != file_crs:
                raise _CheckFailed(
                    f"artifact {path.name} declares CRS {crs} but the file has {file_crs}"
                )

    # -- checks -----------------------------------------------------------------------------------
    def run_check(self, name: str, fn: Callable[[], str | None]) -> bool:
        try:
            note = fn()
        except _CheckFailed as exc:
            self.report.checks.append(CheckResult(name, "failed", str(exc)))
            return False
        except _Skip as exc:
            self.report.checks.append(CheckResult(name, "skipped", str(exc)))
            return True
        except Exception as exc:  # noqa: BLE001 - the kit reports crashes as failures
            self.report.checks.append(
                CheckResult(name, "failed", f"unexpected {_describe_exc(exc)}")
            )
            return False
        self.report.checks.append(CheckResult(name, "passed", note or ""))
        return True

    def c_definition(self) -> str | None:
        from zoomearth.tools.base import prompt_schema

        json.dumps(prompt_schema(self.tool_cls.Args))
        args = self.args_for(self.base())
        try:
            self.tool_cls.Args.model_validate(args)
        except Exception as exc:  # noqa: BLE001 - reported
            raise _CheckFailed(
                f"the kit's arguments {args!r} are not valid for the tool ({exc}); pass "
                "check_tool(MyTool, args={...}) with values for the required arguments"
            ) from None
        return None

    def c_basic(self) -> str | None:
        out = self.expect_ok(self.call(self.base(), VALID_BOX), f"a call on region {VALID_BOX}")
        ids = [a.id for a in out.artifacts]
        if len(set(ids)) != len(ids):
            raise _CheckFailed(f"artifact ids are not unique: {ids}")
        return f"{len(out.artifacts)} artifact(s)"

    def c_whole_scene(self) -> str | None:
        return self.expect_ok_or_input_error(self.call(self.base(), None), "the whole scene")

    def c_bad_boxes(self) -> str | None:
        scene = self.base()
        nan = float("nan")
        bad = {
            "NaN": PixelBox(nan, 0, 10, 10),
            "inverted": PixelBox(30, 30, 10, 10),
            "empty": PixelBox(10, 10, 10, 20),
            "outside": PixelBox(1000, 1000, 1100, 1100),
        }
        for label, box in bad.items():
            res = self.call(scene, box)
            if not isinstance(res, ToolInputError):
                got = (
                    "a result"
                    if isinstance(res, ToolOutcome)
                    else _describe_exc(res, self.tool_file)
                )
                raise _CheckFailed(
                    f"the {label} box {box} must be refused with ToolInputError; got {got}"
                )
        partly = PixelBox(-8, -8, 20, 20)
        res = self.call(scene, partly)
        if isinstance(res, ToolOutcome):
            if not any("clipped" in w for w in res.warnings):
                raise _CheckFailed(f"the partly-outside box {partly} was used without a clip note")
            return "refused NaN/inverted/empty/outside; clipped a partly-outside box"
        self.expect_ok_or_input_error(res, f"the partly-outside box {partly}")
        return "refused NaN/inverted/empty/outside and the partly-outside box"

    def c_nodata_region(self) -> str | None:
        return self.expect_ok_or_input_error(
            self.call(self.base(), NODATA_BLOCK), f"the nodata-only region {NODATA_BLOCK}"
        )

    def c_tiny_region(self) -> str | None:
        box = PixelBox(30, 20, 31, 21)
        return self.expect_ok_or_input_error(self.call(self.base(), box), f"the 1x1 region {box}")

    def _layout_check(self, key: str, count: int, dtype: str, georef: bool = True) -> str | None:
        scene = self.scene(key, count=count, dtype=dtype, georef=georef)
        accepted = self.caps.accepts_bands(count) and self.caps.accepts_dtype(dtype)
        if not georef and self.caps.requires_georeference:
            accepted = False
        res = self.call(scene, VALID_BOX)
        what = f"a {count}-band {dtype}{'' if georef else ' pixel-only'} scene"
        if accepted:
            self.expect_ok(res, f"{what} (accepted by the declared capabilities)")
            return "handled"
        if not isinstance(res, ToolInputError):
            raise _CheckFailed(
                f"{what} is outside the declared capabilities and must be refused "
                f"with ToolInputError; got {type(res).__name__}"
            )
        return f"refused as declared: {res}"

    def c_one_band(self) -> str | None:
        _, dtype = self.base_layout()
        return self._layout_check("one_band", 1, dtype)

    def c_uint16(self) -> str | None:
        count, _ = self.base_layout()
        return self._layout_check("uint16", count, "uint16")

    def c_pixel_only(self) -> str | None:
        count, dtype = self.base_layout()
        return self._layout_check("pixel_only", count, dtype, georef=False)

    def c_above_limit(self) -> str | None:
        limit = self.caps.max_side
        if limit is None:
            # Unbounded one-piece reads pass only when the tool says it streams large regions.
            if not self.caps.streaming:
                raise _CheckFailed(UNBOUNDED_TEMPLATE)
            return UNBOUNDED_STREAMING_NOTE
        if limit + 16 > MAX_WIDE_SIDE:
            if not self.caps.streaming:
                raise _CheckFailed(
                    UNCHECKABLE_LIMIT_TEMPLATE.format(limit=limit, most=MAX_WIDE_SIDE - 16)
                )
            raise _Skip(f"max_side {limit} is too large for a quick synthetic check")
        count, dtype = self.base_layout()
        scene = self.scene(
            "above_limit", width=limit + 16, height=16, count=count, dtype=dtype, nodata_block=None
        )
        res = self.call(scene, None)
        if self.caps.streaming:
            out = self.expect_ok(res, f"a {limit + 16} x 16 px region (streaming declared)")
            if not out.streamed:
                raise _CheckFailed("the region above the limit was not marked as streamed")
            return f"streamed a {limit + 16} x 16 px region"
        if not isinstance(res, ToolInputError):
            raise _CheckFailed(
                f"a region above max_side={limit} must be refused with "
                f"ToolInputError; got {type(res).__name__}"
            )
        if str(limit) not in str(res):
            raise _CheckFailed(f"the refusal must name the limit {limit}: {res}")
        return f"refused naming the limit {limit}"

    def c_cancellation(self) -> str | None:
        calls = 0

        def cancel() -> bool:
            nonlocal calls
            calls += 1
            return calls > 1  # the runner's first check passes; every later one cancels

        before = _listing(self.run_dir)
        res = self.call(self.base(), VALID_BOX, cancel=cancel)
        if not isinstance(res, ToolCancelled):
            got = "a result" if isinstance(res, ToolOutcome) else _describe_exc(res, self.tool_file)
            raise _CheckFailed(f"a cancelled call must raise ToolCancelled; got {got}")
        left = _changes(before, _listing(self.run_dir))
        if left:
            raise _CheckFailed(f"the cancelled call left files: {left[:5]}")
        run_code = getattr(type(self.tool).run, "__code__", None)
        frames = traceback.extract_tb(res.__traceback__)
        if run_code is not None and not any(
            f.name == run_code.co_name and f.filename == run_code.co_filename for f in frames
        ):
            return (
                "note: run() never checked cancellation (call ctx.report() or "
                "ctx.check_cancelled() in loops so long calls can stop early)"
            )
        return "stopped inside run() at the first check"

    def c_tile_resume(self) -> str | None:
        # One tile at a time (tool_workers=1): "stopped after its first finished tile" is then
        # exact, and a tile that depends on the tiles before it shows in the resumed output.
        serial = self.settings.model_copy(update={"tool_workers": 1})
        saved, self.settings = self.settings, serial
        try:
            return self._tile_resume()
        finally:
            self.settings = saved

    def _tile_resume(self) -> str | None:
        if not self.caps.independent_tiles:
            raise _Skip("independent_tiles not declared: a stopped call starts over")
        limit = self.caps.max_side
        if not self.caps.streaming or limit is None or limit + 16 > MAX_WIDE_SIDE:
            raise _Skip("needs streaming and a max_side the kit can exceed to get several tiles")
        count, dtype = self.base_layout()
        scene = self.scene(
            "above_limit", width=limit + 16, height=16, count=count, dtype=dtype, nodata_block=None
        )
        reference = self.expect_ok(self.call(scene, None), "an uninterrupted streamed call")
        tiles_dir = self.run_dir / TILE_CACHE_DIR

        def kept() -> int:
            return len(list(tiles_dir.glob("*/tile-*.npz")))

        stopped = self.call(scene, None, cancel=lambda: kept() > 0)
        n_kept = kept()
        if n_kept == 0:
            raise _CheckFailed(
                "independent_tiles is declared but no finished tile was kept under "
                f"{TILE_CACHE_DIR}/ (process the tiles through ctx.map_tiles())"
            )
        if not isinstance(stopped, ToolCancelled):
            what = "a result" if isinstance(stopped, ToolOutcome) else _describe_exc(stopped)
            raise _CheckFailed(
                "a call cancelled after its first finished tile must raise ToolCancelled; got "
                f"{what} (ctx.map_tiles() checks cancellation after every tile)"
            )
        resumed = self.expect_ok(self.call(scene, None), "the resumed call")
        if not any("finished before and reused" in w for w in resumed.warnings):
            raise _CheckFailed("the resumed call computed every tile again instead of reusing")
        if kept():
            raise _CheckFailed(f"finished tiles were left under {TILE_CACHE_DIR}/ after success")
        want = [a for a in reference.artifacts if a.path.lower().endswith((".tif", ".tiff"))]
        got = [a for a in resumed.artifacts if a.path.lower().endswith((".tif", ".tiff"))]
        if len(want) != len(got):
            raise _CheckFailed(f"the resumed call wrote {len(got)} rasters, not {len(want)}")
        for a, b in zip(want, got, strict=True):
            if not _same_pixels(Path(a.path), Path(b.path)):
                raise _CheckFailed(
                    f"the resumed call's {Path(b.path).name} differs from the uninterrupted "
                    f"call's {Path(a.path).name}: a tile's result must depend only on the tile "
                    "and on values fixed for the call (pass those to map_tiles(key=...))"
                )
        return f"resumed from {n_kept} kept tile(s); {len(got)} raster(s) equal"

    def c_input_untouched(self) -> str | None:
        changed = [str(p.name) for p, fp in self.inputs.items() if _fingerprint(p) != fp]
        if changed:
            raise _CheckFailed(f"input files were modified: {changed}")
        return f"{len(self.inputs)} input file(s) unchanged"

    def run_all(self, only: set[str] | None) -> ContractReport:
        checks: list[tuple[str, Callable[[], str | None]]] = [
            ("definition", self.c_definition),
            ("basic", self.c_basic),
            ("whole_scene", self.c_whole_scene),
            ("bad_boxes", self.c_bad_boxes),
            ("nodata_region", self.c_nodata_region),
            ("tiny_region", self.c_tiny_region),
            ("one_band", self.c_one_band),
            ("uint16", self.c_uint16),
            ("pixel_only", self.c_pixel_only),
            ("above_limit", self.c_above_limit),
            ("cancellation", self.c_cancellation),
            ("tile_resume", self.c_tile_resume),
        ]
        for name, fn in checks:
            if only is not None and name not in only and name != "definition":
                continue
            if not self.run_check(name, fn) and name == "definition":
                break
        self.run_check("input_untouched", self.c_input_untouched)
        for scene in self.scenes.values():
            scene.close()
        return self.report


def _same_pixels(a: Path, b: Path) -> bool:
    import warnings

    import numpy as np
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(a) as da, rasterio.open(b) as db:
            x, y = da.read(), db.read()
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))


class _Skip(Exception):
    """Internal: a check does not apply."""


@contextmanager
def _workdir(path: str | Path | None) -> Iterator[Path]:
    if path is not None:
        p = Path(path).expanduser().resolve()  # a relative workdir must not move with the cwd
        p.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="zoomearth-kit-") as tmp:
        yield Path(tmp)


def check_tool(
    tool_cls: type[Tool],
    *,
    args: ArgsSpec = None,
    workdir: str | Path | None = None,
    pool: ModelPool | None = None,
    checks: set[str] | None = None,
    raise_on_failure: bool = True,
) -> ContractReport:
    """Run the contract checks on a tool class.

    Args:
        tool_cls: The tool class (a :class:`zoomearth.tools.Tool` subclass).
        args: Arguments for every call: a mapping, or ``fn(scene, run_dir) -> mapping`` (e.g. to
            create an earlier artifact the tool needs and return ``{"mask": "artifact:1"}``).
        workdir: Directory for scenes and the run directory (default: a temporary directory,
            removed afterwards).
        pool: Model pool passed in the context (default None: tools use ``ctx.require_pool()``).
        checks: Names of the checks to run (default: all); ``definition`` and
            ``input_untouched`` always run.
        raise_on_failure: Raise AssertionError listing the failures (default) or just return.

    Returns:
        The report (``report.ok``, ``report.failures``, ``str(report)``).

    Raises:
        AssertionError: Some check failed and ``raise_on_failure`` is true; the message lists
            every check with its status and reason.
        TypeError: ``tool_cls`` is not a Tool subclass.
    """
    if not (isinstance(tool_cls, type) and issubclass(tool_cls, Tool)):
        raise TypeError(NOT_A_TOOL_TEMPLATE.format(got=tool_cls))
    with _workdir(workdir) as wd:
        report = _Kit(tool_cls, wd, args, pool).run_all(checks)
    if raise_on_failure and not report.ok:
        raise AssertionError(str(report))
    return report
