"""Docs are tests: every example in README.md and docs/*.md runs as written, or says why not.

The rules are defined once, in ``docs/docs-tests.md`` (the one definition of the marker); in short:

* A fenced block tagged ``bash``/``sh``/``shell`` is a shell example: it runs with
  ``bash -e -o pipefail`` in a scratch working directory (one per page, shared by the page's
  blocks in order, so a block may use files an earlier one wrote), with the project's
  ``zoomearth`` and ``python`` on ``PATH``. A ``console`` block runs its ``$ `` lines. A
  ``python`` block runs as a script there.
* The scratch directory starts with ``scene.tif`` (a 2048 px synthetic georeferenced scene with
  clouds) and ``small.tif`` (600 px). ``HOME``, the XDG folders and zoomearth's data and cache
  folders are inside it, so pages never see each other's runs or the user's settings.
* An HTML comment right before a block changes what happens to it::

      <!-- docs-test: needs gpu -->        not run here (also: needs weights, needs network,
                                           needs server); listed in the inventory
      <!-- docs-test: synopsis -->         a usage synopsis with placeholders, not a command
      <!-- docs-test: file plan.yaml -->   the block's text is written to that file
      <!-- docs-test: expect TEXT -->      the block's output must contain TEXT

  Text after a ``needs ...`` or ``synopsis`` marker's keyword is the reason, for the reader.
* The inventory test fails on a block that looks like a command but would not run (tagged
  ``text`` or untagged, without a marker), an unknown or misplaced marker, an unclosed fence, a
  ``console`` block without ``$ `` lines.
* Every example plan (a ``yaml``/``json`` block holding ``turns`` or per-question scripts), on any
  page, runs on ``scene.tif`` with every tool call ``ok`` and the run ``answered``.

Output checks: exit status 0 within the time limit, no Python traceback, and the ``expect`` texts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

MARKER_RE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE_RE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([\w+-]*)[^`]*$")
SKIP_REASONS = ("needs gpu", "needs weights", "needs network", "needs server")
SHELL_TAGS = {"bash", "sh", "shell"}
RUN_KINDS = ("shell", "console", "python")
# A line that starts like a command a user would paste: the command word followed by a space (or
# the end of the line), so that `zoomearth/` in a directory tree is not a command.
COMMAND_START = re.compile(
    r"^\s*(\$\s+)?([A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"(zoomearth|make|python3?|pip3?|vllm|curl|langgraph|npx|apt-get|apt|export|docker|git"
    r"|bash|sh|cd|mkdir|cat|\.venv/bin/\S+|\.)(\s|$)"
)
BLOCK_TIMEOUT_S = 300


def _name(page: Path) -> str:
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    tag: str
    text: str
    markers: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{_name(self.page)}:{self.line}"

    def marker(self, name: str) -> list[str]:
        return [m[len(name) :].strip() for m in self.markers if m.split(" ", 1)[0] == name]

    @property
    def skip_reason(self) -> str | None:
        for m in self.markers:
            for reason in SKIP_REASONS:
                if m == reason or m.startswith(reason + " "):
                    return reason
        return None

    @property
    def is_synopsis(self) -> bool:
        return any(m == "synopsis" or m.startswith("synopsis ") for m in self.markers)

    @property
    def kind(self) -> str:
        """``shell``, ``console``, ``python``, ``file``, ``skipped``, ``synopsis`` or ``data``."""
        if self.skip_reason:
            return "skipped"
        if self.is_synopsis:
            return "synopsis"
        if self.marker("file"):
            return "file"
        if self.tag in SHELL_TAGS:
            return "shell"
        if self.tag == "console":
            return "console"
        if self.tag == "python":
            return "python"
        return "data"

    def script(self) -> str:
        if self.kind == "console":
            return "\n".join(ln[2:] for ln in self.text.splitlines() if ln.startswith("$ ")) + "\n"
        return self.text


@dataclass
class Page:
    """The blocks of one page and the problems found while reading it."""

    path: Path
    blocks: list[Block]
    problems: list[str]


def parse_page(page: Path) -> Page:
    """The fenced blocks of a page, with the docs-test markers right before each.

    A marker applies to the next block when only blank lines or other markers stand between
    them; anywhere else it is a problem (it would silently apply to nothing).
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    name = _name(page)
    blocks: list[Block] = []
    problems: list[str] = []
    pending: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = MARKER_RE.search(line)
        if marker and line.lstrip().startswith("<!--"):  # not a mention in running text
            if line.strip() != marker.group(0):
                problems.append(f"{name}:{i + 1}: a docs-test marker must stand alone on its line")
            pending.append((i + 1, marker.group(1)))
            i += 1
            continue
        fence = FENCE_RE.match(line)
        if fence:
            indent, ticks, tag = len(fence.group(1)), fence.group(2), fence.group(3).lower()
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not (
                lines[j].lstrip().startswith(ticks) and not lines[j].strip().strip(ticks[0])
            ):
                body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
                j += 1
            if j >= len(lines):
                problems.append(f"{name}:{i + 1}: the fenced block is never closed")
            blocks.append(Block(page, i + 1, tag, "\n".join(body) + "\n", [m for _, m in pending]))
            pending = []
            i = j + 1
            continue
        if line.strip():
            for at, m in pending:
                problems.append(f"{name}:{at}: marker {m!r} is not right before a fenced block")
            pending = []
        i += 1
    for at, m in pending:
        problems.append(f"{name}:{at}: marker {m!r} is not right before a fenced block")
    return Page(page, blocks, problems)


PARSED = [parse_page(p) for p in PAGES]
ALL_BLOCKS = [b for page in PARSED for b in page.blocks]
RUNNABLE = [b for b in ALL_BLOCKS if b.kind in (*RUN_KINDS, "file")]


def inventory() -> dict[str, Any]:
    """Counts of the docs' blocks: executed, files, skipped by reason, synopses, data."""
    skipped: dict[str, int] = {}
    counts = {"executed": 0, "file": 0, "synopsis": 0, "data": 0}
    for block in ALL_BLOCKS:
        kind = block.kind
        if kind in RUN_KINDS:
            counts["executed"] += 1
        elif kind == "skipped":
            reason = block.skip_reason or "?"
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            counts[kind] += 1
    return {**counts, "skipped": dict(sorted(skipped.items())), "pages": len(PAGES)}


def inventory_line() -> str:
    inv = inventory()
    skipped = ", ".join(f"{k}: {v}" for k, v in inv["skipped"].items()) or "none"
    return (
        f"docs examples in {inv['pages']} pages: {inv['executed']} executed, {inv['file']} "
        f"written as files, skipped {sum(inv['skipped'].values())} ({skipped}), "
        f"{inv['synopsis']} synopsis, {inv['data']} data, {len(DOC_PLANS)} plans run"
    )


def find_problems(pages: list[Page]) -> list[str]:
    """What keeps the pages' examples from being run or excused (empty when all is well)."""
    problems = [p for page in pages for p in page.problems]
    known = ("synopsis", "file", "expect", *SKIP_REASONS)
    for block in (b for page in pages for b in page.blocks):
        for m in block.markers:
            if not any(m == k or m.startswith(k + " ") for k in known):
                hint = f"; use one of {SKIP_REASONS}" if m.startswith("needs") else ""
                problems.append(f"{block.id}: unknown docs-test marker {m!r}{hint}")
        names = block.marker("file")
        if len(names) > 1 or any(not n or " " in n or n.startswith("/") for n in names):
            problems.append(f"{block.id}: a file marker names one relative path: {names}")
        if block.marker("expect") and block.kind not in RUN_KINDS:
            problems.append(f"{block.id}: an expect marker on a block that does not run")
        if any(not e for e in block.marker("expect")):
            problems.append(f"{block.id}: an empty expect marker")
        if block.kind in RUN_KINDS and not block.script().strip():
            problems.append(f"{block.id}: a {block.tag} block with nothing to run")
        if block.kind == "data":
            for n, ln in enumerate(block.text.splitlines(), start=1):
                if COMMAND_START.match(ln):
                    problems.append(
                        f"{block.id}: line {n} looks like a command ({ln.strip()[:50]!r}) but the "
                        f"block is tagged {block.tag or 'nothing'}; tag it bash (it then runs), or "
                        "put a docs-test marker before it (docs/docs-tests.md)"
                    )
                    break
    return problems


def test_every_example_is_run_or_excused() -> None:
    problems = find_problems(PARSED)
    print(inventory_line())
    assert not problems, "\n".join(problems)
    inv = inventory()
    assert inv["executed"] >= 15, inv  # the harness found the examples (18 when written)


# ----------------------------------------------------------------------------------------------
# running the examples
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def doc_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the examples name: built once, copied into each page's scratch directory."""
    from zoomearth.scene.synth import generate_scene

    root = tmp_path_factory.mktemp("doc-fixtures")
    scene = generate_scene(root / "scene.tif", 2048, seed=3, clouds=0.35, progress=False)
    small = generate_scene(root / "small.tif", 600, seed=2, progress=False)
    for extra in (scene.sidecar_path, small.sidecar_path):
        if extra is not None and Path(extra).exists():
            Path(extra).unlink()
    for extra in root.iterdir():  # the cloud mask the generator writes beside the scene
        if extra.name not in {"scene.tif", "small.tif"}:
            extra.unlink()
    return root


@dataclass
class Outcome:
    """What running one block gave."""

    rc: int | None  # None: timed out
    output: str
    seconds: float


@dataclass
class PageRun:
    """A page's scratch directory and the outcomes of its blocks so far."""

    work: Path
    outcomes: dict[int, Outcome] = field(default_factory=dict)


_page_runs: dict[Path, PageRun] = {}


def _env(work: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ZOOMEARTH_", "XDG_", "VIRTUAL_ENV", "PYTHON"))
    }
    bin_dir = str(Path(sys.executable).parent)
    home = work / ".home"
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        ZOOMEARTH_DATA_DIR=str(work / ".data"),
        ZOOMEARTH_CACHE_DIR=str(work / ".cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        # A cache, not state: shared by the pages so matplotlib builds its font list once.
        MPLCONFIGDIR=str(work.parent / ".matplotlib"),
    )
    return env


def _execute(block: Block, work: Path, timeout_s: float = BLOCK_TIMEOUT_S) -> Outcome:
    """Run one block in ``work``; a block past the time limit is killed with its children."""
    if block.kind == "file":
        (target,) = block.marker("file")
        (work / target).parent.mkdir(parents=True, exist_ok=True)
        (work / target).write_text(block.text, encoding="utf-8")
        return Outcome(0, "", 0.0)
    if block.kind == "python":
        script = work / ".docs-test" / f"example_{block.line}.py"
        script.parent.mkdir(exist_ok=True)
        script.write_text(block.text, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.script()]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        env=_env(work),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a timeout kills the whole example
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc = None
    return Outcome(rc, output, time.monotonic() - t0)


def _page_run(page: Path, fixtures: Path, root: Path) -> PageRun:
    if page not in _page_runs:
        work = root / page.relative_to(REPO).as_posix().replace("/", "__").removesuffix(".md")
        work.mkdir(parents=True)
        for f in fixtures.iterdir():
            shutil.copy2(f, work / f.name)
        _page_runs[page] = PageRun(work)
    return _page_runs[page]


def _failure(block: Block, outcome: Outcome) -> str | None:
    if outcome.rc is None:
        return f"timed out (killed after {outcome.seconds:.0f} s)"
    if outcome.rc != 0:
        return f"exited {outcome.rc}"
    if "Traceback (most recent call last)" in outcome.output:
        return "printed a Python traceback"
    missing = [e for e in block.marker("expect") if e not in outcome.output]
    if missing:
        return f"output lacks {missing}"
    return None


def _run_through(block: Block, fixtures: Path, root: Path) -> tuple[Outcome, Path]:
    """Run ``block`` after every earlier runnable block of its page (each block runs once).

    So a single example can be selected with ``-k`` and still finds what earlier ones wrote.
    """
    run = _page_run(block.page, fixtures, root)
    for earlier in (b for b in RUNNABLE if b.page == block.page and b.line <= block.line):
        if earlier.line not in run.outcomes:
            run.outcomes[earlier.line] = _execute(earlier, run.work)
        if earlier is not block:
            why = _failure(earlier, run.outcomes[earlier.line])
            if why:
                out = run.outcomes[earlier.line].output[-2000:]
                pytest.fail(f"{block.id} not run: the earlier example {earlier.id} {why}:\n{out}")
    return run.outcomes[block.line], run.work


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_example_runs(block: Block, doc_fixtures: Path, tmp_path_factory) -> None:
    root = tmp_path_factory.getbasetemp() / "doc-pages"
    outcome, work = _run_through(block, doc_fixtures, root)
    why = _failure(block, outcome)
    assert why is None, (
        f"{block.id} {why} (ran in {work}, {outcome.seconds:.1f} s):\n{outcome.output[-4000:]}"
    )


# ----------------------------------------------------------------------------------------------
# the example plans
# ----------------------------------------------------------------------------------------------
def _plans() -> list[tuple[str, dict[str, Any], str | None]]:
    """(id, plan, question id) for every plan in the docs: script turns or per-question scripts."""
    plans = []
    for block in ALL_BLOCKS:
        if block.tag not in {"yaml", "yml", "json"}:
            continue
        try:
            data = json.loads(block.text) if block.tag == "json" else yaml.safe_load(block.text)
        except (ValueError, yaml.YAMLError):
            continue  # a fragment, not a plan; a plan that does not parse fails where it is run
        if not isinstance(data, dict):
            continue
        if "turns" in data:
            plans.append((block.id, data, None))
        for qid in data.get("questions") or {}:
            plans.append((f"{block.id} {qid}", data, qid))
        if "questions" in data and "default" in data:
            plans.append((f"{block.id} default", data, "no-such-question"))
    return plans


DOC_PLANS = _plans()


@pytest.mark.parametrize(("label", "plan", "qid"), DOC_PLANS, ids=[p[0] for p in DOC_PLANS])
def test_doc_plan_runs_cleanly(
    label: str, plan: dict[str, Any], qid: str | None, doc_fixtures: Path, tmp_path: Path
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    from zoomearth.agent.backends.script import ScriptPlanner
    from zoomearth.api import Agent
    from zoomearth.config import load_settings
    from zoomearth.tools.registry import get_registry

    settings = load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache"}, environ={}
    )
    planner = ScriptPlanner(settings, plan=plan)
    planner.set_question(qid)
    agent = Agent(
        settings,
        planner=planner,
        registry=get_registry(),
        checkpointer=InMemorySaver(),
        auto_approve=True,
    )
    try:
        result = agent.ask(doc_fixtures / "scene.tif", "the documented plan")
    finally:
        agent.close()
    calls = [(c["name"], c["status"], c["error"]) for c in result.tool_calls]
    assert calls == [(name, "ok", None) for name, _, _ in calls], label
    assert result.problems == [], label
    assert result.status == "answered" and result.answer_kind == "answer", result.status_reason
