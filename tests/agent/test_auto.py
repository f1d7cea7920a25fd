"""Tests for backend selection (agent/backends/__init__.py): auto resolution and make_planner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoomearth.agent import backends
from zoomearth.agent.backends import (
    BACKENDS,
    make_planner,
    resolve_auto,
    resolve_backend,
)
from zoomearth.agent.backends.rules import RulesPlanner
from zoomearth.agent.backends.script import ScriptError, ScriptPlanner
from zoomearth.agent.base import PlannerError
from zoomearth.config import Settings


@pytest.fixture
def empty_hf_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    return cache


def fake_checkpoint(root: Path) -> Path:
    ckpt = root / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}), encoding="utf-8")
    return ckpt


def fake_hf_cache_entry(cache: Path, repo_id: str) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# auto
# ---------------------------------------------------------------------------------------------


def test_default_is_rules_with_a_reason(empty_hf_cache: Path) -> None:
    name, reason = resolve_auto(Settings(), hf_cache_dir=empty_hf_cache)
    assert name == "rules"
    assert reason.startswith("planner=auto chose rules")
    assert "planner_model and planner_base_url are not set" in reason
    assert "planner=transformers" in reason and "planner_base_url=URL" in reason


def test_local_checkpoint_dir_chooses_transformers(tmp_path: Path, empty_hf_cache: Path) -> None:
    ckpt = fake_checkpoint(tmp_path)
    name, reason = resolve_auto(Settings(planner_model=str(ckpt)), hf_cache_dir=empty_hf_cache)
    assert name == "transformers"
    assert str(ckpt) in reason and "local checkpoint" in reason


def test_local_checkpoint_wins_over_base_url(tmp_path: Path, empty_hf_cache: Path) -> None:
    settings = Settings(
        planner_model=str(fake_checkpoint(tmp_path)), planner_base_url="http://127.0.0.1:8000/v1"
    )
    assert resolve_auto(settings, hf_cache_dir=empty_hf_cache)[0] == "transformers"


def test_directory_without_config_is_not_a_checkpoint(tmp_path: Path, empty_hf_cache: Path) -> None:
    name, reason = resolve_auto(Settings(planner_model=str(tmp_path)), hf_cache_dir=empty_hf_cache)
    assert name == "rules"
    assert "directory without config.json" in reason


def test_cached_hub_id_chooses_transformers(empty_hf_cache: Path) -> None:
    fake_hf_cache_entry(empty_hf_cache, "HappyBug/ZoomEarth-3B")
    settings = Settings(planner_model="HappyBug/ZoomEarth-3B")
    name, reason = resolve_auto(settings, hf_cache_dir=empty_hf_cache)
    assert name == "transformers"
    assert "Hugging Face cache" in reason


def test_uncached_hub_id_is_not_downloaded(empty_hf_cache: Path) -> None:
    settings = Settings(planner_model="HappyBug/ZoomEarth-3B")
    name, reason = resolve_auto(settings, hf_cache_dir=empty_hf_cache)
    assert name == "rules"
    assert "neither a local checkpoint nor in the Hugging Face cache" in reason


def test_base_url_chooses_openai(empty_hf_cache: Path) -> None:
    url = "http://127.0.0.1:8000/v1"
    settings = Settings(planner_base_url=url, planner_model="zoomearth-3b")
    name, reason = resolve_auto(settings, hf_cache_dir=empty_hf_cache)
    assert name == "openai"
    assert url in reason and "zoomearth-3b" in reason


def test_invalid_hub_id_is_just_not_cached(empty_hf_cache: Path) -> None:
    settings = Settings(planner_model="not a/valid//id")
    assert resolve_auto(settings, hf_cache_dir=empty_hf_cache)[0] == "rules"


# ---------------------------------------------------------------------------------------------
# explicit choice, make_planner
# ---------------------------------------------------------------------------------------------


def test_explicit_backend_is_reported() -> None:
    assert resolve_backend(Settings(planner="rules")) == (
        "rules",
        "planner=rules (set explicitly).",
    )


def test_unknown_backend_lists_valid_ones() -> None:
    settings = Settings().model_copy(update={"planner": "magic"})
    for call in (resolve_backend, make_planner):
        with pytest.raises(PlannerError) as info:
            call(settings)
        message = str(info.value)
        assert "'magic'" in message
        for valid in ("auto", "transformers", "openai", "rules", "script"):
            assert valid in message


def test_make_planner_rules() -> None:
    planner = make_planner(Settings(planner="rules"))
    assert isinstance(planner, RulesPlanner) and planner.name == "rules"


def test_make_planner_auto_defaults_to_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_in_hf_cache", lambda model, cache: False)
    assert isinstance(make_planner(Settings()), RulesPlanner)


def test_make_planner_script(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"turns": ["<answer>x</answer>"]}), encoding="utf-8")
    planner = make_planner(Settings(planner="script", plan_file=plan))
    assert isinstance(planner, ScriptPlanner)


def test_make_planner_script_without_plan_says_what_to_set() -> None:
    with pytest.raises(ScriptError, match="plan_file"):
        make_planner(Settings(planner="script"))


def test_missing_backend_module_is_a_planner_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "rules", "zoomearth.agent.backends.not_there:Nope")
    with pytest.raises(PlannerError, match="not available in this installation"):
        make_planner(Settings(planner="rules"))


def test_model_backends_are_referenced_by_module_path() -> None:
    assert BACKENDS["transformers"] == "zoomearth.agent.backends.hf:TransformersPlanner"
    assert BACKENDS["openai"] == "zoomearth.agent.backends.openai_compat:OpenAIPlanner"


def test_importing_backends_is_light() -> None:
    code = (
        "import sys\n"
        "import zoomearth.agent.backends, zoomearth.agent.backends.rules, "
        "zoomearth.agent.backends.script\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'rasterio', 'httpx',"
        " 'openai') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_planner_auto_builds_model_backends_without_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "_in_hf_cache", lambda model, cache: False)
    local = make_planner(Settings(planner_model=str(fake_checkpoint(tmp_path))))
    assert local.name == "transformers"
    remote = make_planner(Settings(planner_base_url="http://127.0.0.1:9/v1"))
    assert remote.name == "openai"
