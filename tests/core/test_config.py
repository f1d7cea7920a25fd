"""Settings: precedence flags > environment > file > defaults, provenance, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoomearth.config import describe_settings, load_settings, parse_set_flags
from zoomearth.errors import ConfigError


def test_precedence_and_sources(tmp_path):
    cfg = tmp_path / "zoomearth.toml"
    cfg.write_text("min_crop = 600\noverview_side = 700\nview_side = 800\n")
    env = {"ZOOMEARTH_OVERVIEW_SIDE": "900", "ZOOMEARTH_VIEW_SIDE": "1000"}
    s = load_settings(flags={"view_side": 1100}, config_file=cfg, environ=env)
    assert (s.min_crop, s.overview_side, s.view_side) == (600, 900, 1100)
    assert (s.source_of("min_crop"), s.source_of("overview_side"), s.source_of("view_side")) == (
        "file",
        "env",
        "flag",
    )
    assert s.source_of("gdal_cache_mb") == "default"


def test_user_config_dir_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "zoomearth").mkdir()
    (tmp_path / "zoomearth" / "zoomearth.toml").write_text("[zoomearth]\nmin_crop = 333\n")
    s = load_settings(environ={})
    assert s.min_crop == 333 and s.source_of("min_crop") == "file"


def test_derived_paths_follow_data_dir(tmp_path):
    s = load_settings(flags={"data_dir": tmp_path}, environ={})
    assert s.runs_dir == tmp_path / "runs"
    assert s.checkpoint_db == tmp_path / "checkpoints.sqlite"
    rows = {r["key"]: r for r in describe_settings(s)}
    assert rows["runs_dir"]["source"] == "derived"
    assert rows["data_dir"]["source"] == "flag"


def test_env_lists_are_json(tmp_path):
    s = load_settings(environ={"ZOOMEARTH_ALLOWED_ROOTS": json.dumps([str(tmp_path)])})
    assert s.allowed_roots == [tmp_path]
    with pytest.raises(ConfigError, match="JSON"):
        load_settings(environ={"ZOOMEARTH_ALLOWED_ROOTS": "[not json"})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("nonsense = 1\n", "Unknown setting"),
        ("min_crop = = 3\n", "Cannot read"),
        ("min_crop = -3\n", "min_crop"),
    ],
)
def test_bad_files(tmp_path, content, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_settings(config_file=cfg, environ={})


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "none.toml", environ={})


def test_set_flags():
    assert parse_set_flags(["min_crop=256", "allowed_roots=[\"/a\"]"]) == {
        "min_crop": 256,
        "allowed_roots": ["/a"],
    }
    with pytest.raises(ConfigError, match="Unknown setting"):
        parse_set_flags(["bogus=1"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_flags(["min_crop"])


def test_config_command_shows_sources(tmp_path):
    cfg = tmp_path / "z.toml"
    cfg.write_text("min_crop = 640\n")
    env = {"ZOOMEARTH_VIEW_SIDE": "768"}
    out = subprocess.run(
        [sys.executable, "-m", "zoomearth.cli", "--config", str(cfg), "--set", "overview_side=1024",
         "config", "--json"],
        capture_output=True, text=True, check=True, env={**__import__("os").environ, **env},
    ).stdout
    rows = {r["key"]: r for r in json.loads(out)}
    assert rows["min_crop"] == {**rows["min_crop"], "value": 640, "source": "file"}
    assert rows["view_side"]["value"] == 768 and rows["view_side"]["source"] == "env"
    assert rows["overview_side"]["value"] == 1024 and rows["overview_side"]["source"] == "flag"


def test_empty_api_token_is_refused_with_a_clear_message():
    # An empty token used to become "must be JSON" (and a blank one would silently mean no token).
    from zoomearth.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="ZOOMEARTH_API_TOKEN is empty"):
        load_settings(environ={"ZOOMEARTH_API_TOKEN": ""})
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(environ={"ZOOMEARTH_API_TOKEN": "   "})
    assert load_settings(environ={"ZOOMEARTH_PLANNER_MODEL": ""}).planner_model is None
