"""Shared fixtures and the test-run policy.

* ``slow`` tests run only with ``--runslow``; ``gpu`` tests only where CUDA is available.
* With ``CI=true`` the run prints the number of skipped tests and fails if any test outside the
  ``slow`` and ``gpu`` markers was skipped (real-data tests read ``../shared/data``, which CI has).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Keep tests away from the user's config, data and cache directories (XDG, read by platformdirs),
# also for the CLI subprocesses the tests start.
_XDG_ROOT = Path(tempfile.mkdtemp(prefix="zoomearth-tests-"))
for _var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
    os.environ[_var] = str(_XDG_ROOT / _var.lower())
for _var in [k for k in os.environ if k.startswith("ZOOMEARTH_")]:
    del os.environ[_var]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

_ALLOWED_SKIP_MARKERS = {"slow", "gpu"}
_unexpected_skips: list[str] = []
_skip_count = 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow")
    has_gpu = False
    if any("gpu" in item.keywords for item in items):
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: use --runslow"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _skip_count
    if report.skipped and not hasattr(report, "wasxfail"):
        _skip_count += 1
        if not (_ALLOWED_SKIP_MARKERS & set(report.keywords)):
            _unexpected_skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in {"1", "true", "yes"}:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write("\n")  # the progress line may not be finished yet
    write = reporter.write_line if reporter else print
    write(f"CI: {_skip_count} test(s) skipped")
    if _unexpected_skips:
        write("CI: these tests were skipped outside the 'slow'/'gpu' markers:")
        for nodeid in _unexpected_skips:
            write(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; tests using it skip cleanly when it is absent (never in CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture()
def settings(tmp_path: Path):
    """Settings isolated from the user's files: data and cache directories under tmp_path."""
    from zoomearth.config import load_settings

    return load_settings(
        flags={"data_dir": tmp_path / "data", "cache_dir": tmp_path / "cache"},
        environ={},
    )
