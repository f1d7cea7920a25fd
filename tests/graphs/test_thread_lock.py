"""One writer per thread: a second run of a running thread is refused, a killed run's lock is
taken over, and one process may run two different threads at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.graphs.fakes import NoteArgs, ScriptedPlanner
from tests.scene.rasters import write_raster
from zoomearth.tools.base import Tool, ToolResult

REPO = Path(__file__).resolve().parents[2]
GATE_ENV = "ZOOMEARTH_TEST_GATE_DIR"
#: `zoomearth ask` with the blocking test tool registered in the process-wide registry.
DRIVER = (
    "import sys\n"
    "from tests.graphs.test_thread_lock import BlockingTool\n"
    "from zoomearth.tools.registry import get_registry\n"
    "get_registry().register(BlockingTool)\n"
    "from zoomearth.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
PLAN = (
    "turns:\n"
    "  - - {zoom: [0, 0, 256, 256], frame: full}\n"
    "    - {tool: gate_stats, args: {note: a}}\n"
    "  - - {answer: gate passed}\n"
)


class BlockingTool(Tool):
    """Writes ``GATE/inside-<note>`` (its pid), waits for ``GATE/release-<note>``, logs a run."""

    name = "gate_stats"
    description = "Waits at a gate, then writes a small JSON artifact."
    Args = NoteArgs

    def run(self, ctx, args):
        gate = Path(os.environ[GATE_ENV])
        with open(gate / "runs.log", "a") as fh:
            fh.write(f"{args.note}\n")
        (gate / f"inside-{args.note}").write_text(str(os.getpid()))
        deadline = time.time() + 120
        while not (gate / f"release-{args.note}").exists():
            if time.time() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.02)
        out = ctx.output_path("gate.json")
        out.write_text(json.dumps({"note": args.note}))
        art = ctx.artifact(out, kind="table", summary=f"gate {args.note}")
        return ToolResult(text=f"gate {args.note} passed", artifacts=[art])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("lock") / "scene.tif"
    return write_raster(path, 1024, 1024, 3, block=256)


def _env(tmp_path: Path) -> dict[str, str]:
    gate = tmp_path / "gate"
    gate.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ZOOMEARTH_DATA_DIR": str(tmp_path / "data"),
        GATE_ENV: str(gate),
    }


def _cli(*args: str, tmp_path: Path) -> list[str]:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    return [sys.executable, "-c", DRIVER, "ask", *args, "--plan", str(plan)]


def _start(tmp_path: Path, scene: Path, thread: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cli(str(scene), "gate the corner", "--thread", thread, "--json", tmp_path=tmp_path),
        env=_env(tmp_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )


def _wait_inside(proc: subprocess.Popen[str], marker: Path) -> None:
    deadline = time.time() + 120
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exit {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        assert time.time() < deadline, "the tool never started"
        time.sleep(0.05)


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args, tmp_path=tmp_path), env=_env(tmp_path), cwd=REPO,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_second_writer_is_refused_with_pid_and_first_finishes(scene, tmp_path):
    from zoomearth.threadlock import running_holder

    first = _start(tmp_path, scene, "T1")
    try:
        _wait_inside(first, tmp_path / "gate" / "inside-a")
        holder = running_holder(tmp_path / "data" / "locks", "T1")
        assert holder is not None and holder.pid == first.pid

        for args in (("--thread", "T1", "and again?"), ("--thread", "T1", "--resume")):
            second = _run(*args, tmp_path=tmp_path)
            assert second.returncode == 2, second.stderr
            assert f"is running in process {first.pid}" in second.stderr
            assert "stopped or killed" not in second.stderr
            assert not second.stdout.strip()
        (tmp_path / "gate" / "release-a").write_text("go")
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    record = json.loads(out)
    assert record["status"] == "answered" and record["answer"] == "gate passed"
    assert len(record["artifacts"]) == 1 and record["artifacts"][0]["id"] == 1
    # The tool ran once: the refused processes touched nothing.
    assert (tmp_path / "gate" / "runs.log").read_text().split() == ["a"]
    assert running_holder(tmp_path / "data" / "locks", "T1") is None


def test_sigkilled_run_leaves_a_lock_that_resume_takes_over(scene, tmp_path):
    from zoomearth.threadlock import lock_path, running_holder

    first = _start(tmp_path, scene, "T2")
    _wait_inside(first, tmp_path / "gate" / "inside-a")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    locks = tmp_path / "data" / "locks"
    path = lock_path(locks, "T2")
    assert json.loads(path.read_text())["pid"] == first.pid  # left behind, not locked
    assert running_holder(locks, "T2") is None

    (tmp_path / "gate" / "release-a").write_text("go")
    done = _run("--thread", "T2", "--resume", "--json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"left locked by process {first.pid}" in done.stderr
    assert "took the lock over" in done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "answered" and len(record["artifacts"]) == 1
    assert path.read_text() == ""  # released cleanly


def _agent(tmp_path: Path, turns: list[str], on_event=None):
    from zoomearth.api import Agent
    from zoomearth.config import load_settings
    from zoomearth.tools.registry import ToolRegistry

    settings = load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache"}
    )
    return Agent(
        settings,
        planner=ScriptedPlanner(turns),
        registry=ToolRegistry(builtins={"gate_stats": BlockingTool}, entry_point_group=None),
        strict=True,
        on_event=on_event,
    )


def _turns(note: str) -> list[str]:
    return [
        '{"bbox_2d": [0, 0, 64, 64], "label": "corner"}'
        f'<tool_call>{{"name": "gate_stats", "arguments": {{"note": "{note}"}}}}</tool_call>',
        f"<answer>done {note}</answer>",
    ]


def test_one_process_runs_two_threads_at_once(scene, tmp_path, monkeypatch):
    from zoomearth.api import ThreadBusyError

    env = _env(tmp_path)
    monkeypatch.setenv(GATE_ENV, env[GATE_ENV])
    gate = Path(env[GATE_ENV])
    agents = {note: _agent(tmp_path, _turns(note)) for note in ("a", "b")}
    results: dict[str, object] = {}

    def ask(note: str) -> None:
        try:
            results[note] = agents[note].ask(str(scene), "gate", thread=f"in-process-{note}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[note] = exc

    workers = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b")]
    for w in workers:
        w.start()
    try:
        deadline = time.time() + 120
        while not all((gate / f"inside-{n}").exists() for n in ("a", "b")):
            assert time.time() < deadline, results
            time.sleep(0.05)
        # Both threads are inside their tool at the same time; the same thread is refused even
        # from another thread of this process.
        assert agents["a"].running("in-process-a").pid == os.getpid()
        with pytest.raises(ThreadBusyError, match=f"process {os.getpid()}") as info:
            agents["b"].resume("in-process-a")
        assert info.value.pid == os.getpid()
    finally:
        for n in ("a", "b"):
            (gate / f"release-{n}").write_text("go")
        for w in workers:
            w.join(timeout=120)
    for note in ("a", "b"):
        result = results[note]
        assert not isinstance(result, BaseException), result
        assert result.status == "answered" and result.answer == f"done {note}"  # type: ignore[attr-defined]
        assert agents[note].running(f"in-process-{note}") is None
        agents[note].close()


def test_lock_is_released_on_keyboard_interrupt(scene, tmp_path, monkeypatch):
    env = _env(tmp_path)
    monkeypatch.setenv(GATE_ENV, env[GATE_ENV])
    (tmp_path / "gate" / "release-a").write_text("go")

    def interrupt(event: dict) -> None:
        if event.get("event") == "tool_start":
            raise KeyboardInterrupt

    agent = _agent(tmp_path, _turns("a"), on_event=interrupt)
    with pytest.raises(KeyboardInterrupt):
        agent.ask(str(scene), "gate", thread="ctrl-c")
    assert agent.running("ctrl-c") is None
    notes: list[dict] = []
    agent.on_event = notes.append
    with agent.thread_lock("ctrl-c"):  # free again: no refusal, and no takeover note
        pass
    assert not [e for e in notes if e.get("event") == "note"]
    agent.close()


class _FakeConn:
    def __init__(self, db: dict) -> None:
        self.db = db
        self.closed = False

    def execute(self, sql: str, params: tuple = ()) -> _FakeConn:
        self.row: dict | None = None
        if "pg_try_advisory_lock" in sql:
            ok = self.db.setdefault(params[0], self) is self
            self.row = {"ok": ok}
        elif "pg_locks" in sql:
            self.row = {"pid": 4242}
        elif "pg_advisory_unlock" in sql:
            if self.db.get(params[0]) is self:
                del self.db[params[0]]
        return self

    def fetchone(self) -> dict | None:
        return self.row

    def close(self) -> None:
        self.closed = True


class _FakePool:
    def __init__(self, db: dict) -> None:
        self.db = db
        self.out: list[_FakeConn] = []

    def getconn(self) -> _FakeConn:
        conn = _FakeConn(self.db)
        self.out.append(conn)
        return conn

    def putconn(self, conn: _FakeConn) -> None:
        self.out.remove(conn)


def test_postgres_advisory_lock_one_holder_per_thread():
    from zoomearth.threadlock import PgAdvisoryLock, ThreadBusy, pg_lock_key

    db: dict = {}
    first, second = _FakePool(db), _FakePool(db)  # two workers sharing one database
    assert pg_lock_key("T") == pg_lock_key("T") != pg_lock_key("U")
    assert -(2**63) <= pg_lock_key("T") < 2**63
    with PgAdvisoryLock(first, "T"):
        assert len(first.out) == 1  # a connection is held for the whole run
        with pytest.raises(ThreadBusy) as info:
            PgAdvisoryLock(second, "T").acquire()
        assert "database session 4242" in info.value.where
        assert not second.out  # the refused worker gave its connection back
        with PgAdvisoryLock(second, "U"):  # another thread is free
            pass
    assert not first.out and not db
    with PgAdvisoryLock(second, "T"):
        pass
