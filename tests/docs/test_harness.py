"""The docs harness itself: what it flags, and that a failing or hanging example fails."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.docs.test_docs_examples import _execute, _failure, find_problems, parse_page


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text), encoding="utf-8")
    return page


def _problems(tmp_path: Path, text: str) -> list[str]:
    return find_problems([parse_page(_page(tmp_path, text))])


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("```\nzoomearth ask scene.tif 'hi'\n```\n", "looks like a command"),
        ("```text\nls\npython -m zoomearth.demo out\n```\n", "line 2 looks like a command"),
        ("```text\n$ make demo\n```\n", "looks like a command"),
        ("```text\nZOOMEARTH_API_TOKEN=x zoomearth serve\n```\n", "looks like a command"),
        ("<!-- docs-test: needs gpus -->\n```bash\nnvidia-smi\n```\n", "unknown docs-test marker"),
        ("<!-- docs-test: expct ok -->\n```bash\ntrue\n```\n", "unknown docs-test marker"),
        ("<!-- docs-test: needs gpu -->\n\nSome text.\n\n```bash\ntrue\n```\n", "not right before"),
        (
            "text <!-- docs-test: synopsis -->\n```bash\ntrue\n```\n",
            None,
        ),  # a mention, not a marker
        ("<!-- docs-test: synopsis --> more\n```bash\ntrue\n```\n", "stand alone"),
        ("<!-- docs-test: expect ok -->\n```text\nok\n```\n", "does not run"),
        ("```console\nzoomearth tools\n```\n", "nothing to run"),
        ("```bash\nzoomearth tools\n", "never closed"),
        ("<!-- docs-test: file a b -->\n```yaml\nx: 1\n```\n", "one relative path"),
    ],
)
def test_inventory_flags(tmp_path: Path, text: str, flagged: str | None) -> None:
    problems = _problems(tmp_path, text)
    if flagged is None:
        assert problems == []
    else:
        assert any(flagged in p for p in problems), problems


def test_inventory_accepts_what_is_run_or_excused(tmp_path: Path) -> None:
    text = """
    ```text
    zoomearth/   the package: a directory tree, not a command
    ```

    <!-- docs-test: needs server (runs until stopped) -->

    ```bash
    zoomearth serve
    ```

    <!-- docs-test: synopsis -->
    ```text
    zoomearth ask IMAGE QUESTION
    ```

    <!-- docs-test: file plan.yaml -->
    ```yaml
    turns: []
    ```

    <!-- docs-test: expect nothing -->
    ```bash
    echo nothing
    ```
    """
    page = parse_page(_page(tmp_path, text))
    assert find_problems([page]) == []
    kinds = [b.kind for b in page.blocks]
    assert kinds == ["data", "skipped", "synopsis", "file", "shell"]
    assert page.blocks[1].skip_reason == "needs server"


def test_indented_fence_in_a_list(tmp_path: Path) -> None:
    text = """
    1. run it:

       ```bash
       zoomearth tools
       ```
    """
    (block,) = parse_page(_page(tmp_path, text)).blocks
    assert block.kind == "shell" and block.text == "zoomearth tools\n"


def _run(tmp_path: Path, text: str, timeout_s: float = 60) -> str | None:
    (block,) = parse_page(_page(tmp_path, text)).blocks
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return _failure(block, _execute(block, work, timeout_s=timeout_s))


def test_a_failing_example_fails(tmp_path: Path) -> None:
    assert _run(tmp_path, "```bash\nfalse\necho never\n```\n") == "exited 1"
    assert _run(tmp_path, "```bash\nfalse | cat\n```\n") == "exited 1"  # pipefail
    assert _run(tmp_path, "```python\nraise SystemExit(3)\n```\n") == "exited 3"
    traceback = "```bash\necho 'Traceback (most recent call last):'\n```\n"
    assert _run(tmp_path, traceback) == "printed a Python traceback"
    missing = "<!-- docs-test: expect answer: yes -->\n```bash\necho 'error: no'\n```\n"
    assert "lacks" in (_run(tmp_path, missing) or "")
    assert _run(tmp_path, "<!-- docs-test: expect yes -->\n```console\n$ echo yes\n```\n") is None


def test_a_hanging_example_is_killed(tmp_path: Path) -> None:
    why = _run(tmp_path, "```bash\nsleep 30 &\nsleep 30\n```\n", timeout_s=1)
    assert why is not None and why.startswith("timed out")
