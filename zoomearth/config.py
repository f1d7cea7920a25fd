"""One settings model for the whole project, with provenance of every value.

Sources, highest precedence first:

1. command-line flags (``--set key=value`` and the flags each command maps to a setting),
2. environment variables ``ZOOMEARTH_<KEY>`` (upper case; lists/dicts as JSON),
3. a TOML file: ``--config FILE`` / ``ZOOMEARTH_CONFIG``, else ``zoomearth.toml`` in the user's
   config directory (``$XDG_CONFIG_HOME/zoomearth/zoomearth.toml`` on Linux),
4. the defaults below.

Directories follow the platform's conventions through :mod:`platformdirs` (XDG on Linux): data
(checkpoints, runs), cache (prepared rasters, model downloads) and config.

``zoomearth config`` prints the effective settings and the source of each value
(:func:`describe_settings`).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from zoomearth.errors import ConfigError

__all__ = ["Settings", "describe_settings", "load_settings", "default_config_path"]

ENV_PREFIX = "ZOOMEARTH_"
APP_NAME = "zoomearth"

Source = Literal["default", "file", "env", "flag"]


def _user_dir(kind: str) -> Path:
    import platformdirs

    fn = {
        "data": platformdirs.user_data_dir,
        "cache": platformdirs.user_cache_dir,
        "config": platformdirs.user_config_dir,
    }[kind]
    return Path(fn(APP_NAME, appauthor=False))


def default_config_path() -> Path:
    """Path of the user's ``zoomearth.toml`` (it may not exist)."""
    return _user_dir("config") / "zoomearth.toml"


class Settings(BaseModel):
    """Effective configuration. Every field can be set by file, environment or flag.

    Paths left unset are derived from the platform directories after validation
    (``runs_dir`` and ``checkpoint_db`` from ``data_dir``; ``scene_cache_dir`` from ``cache_dir``).
    """

    model_config = {"extra": "forbid", "validate_assignment": True}

    # --- directories -------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=lambda: _user_dir("data"), description="Data directory")
    cache_dir: Path = Field(
        default_factory=lambda: _user_dir("cache"), description="Cache directory"
    )
    runs_dir: Path | None = Field(None, description="Run directories (default: DATA_DIR/runs)")
    scene_cache_dir: Path | None = Field(
        None,
        description="Prepared (tiled, overviewed) copies of rasters (default: CACHE_DIR/scenes)",
    )
    checkpoint_db: Path | None = Field(
        None, description="SQLite checkpoint database (default: DATA_DIR/checkpoints.sqlite)"
    )

    # --- scene engine ------------------------------------------------------------------------
    max_image_pixels: int = Field(
        20_000_000_000, gt=0, description="Refuse rasters declaring more pixels than this"
    )
    overview_side: int = Field(512, gt=0, description="Long side of the overview shown first")
    view_side: int = Field(512, gt=0, description="Long side of rendered zoom views")
    min_crop: int = Field(512, gt=0, description="Minimum crop side in full-resolution pixels")
    prepare_min_side: int = Field(
        4096,
        gt=0,
        description="Untiled or overview-less rasters with a longer side get a cached tiled copy",
    )
    scene_cache_max_bytes: int = Field(
        20 * 1024**3, ge=0, description="Size cap of the prepared-raster cache (LRU cleanup)"
    )
    max_prepare_pixels: int = Field(
        1_000_000_000,
        gt=0,
        description=(
            "Work budget: largest raster (pixels) the scene engine prepares (tiled, overviewed "
            "copy) for one request; larger rasters must come with tiles and overviews (a COG)"
        ),
    )
    gdal_cache_mb: int = Field(128, gt=0, description="GDAL block cache (GDAL_CACHEMAX) in MB")
    # --- remote scenes (https://, http://, s3://): docs/remote.md ------------------------------
    remote_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of one HTTP request of a remote scene (seconds)"
    )
    remote_max_retries: int = Field(
        3, ge=0, description="Retries of a failed remote request (exponential backoff)"
    )
    remote_cache_mb: int = Field(
        64, gt=0, description="GDAL's cache of fetched byte ranges of remote scenes (MB)"
    )
    remote_max_plain_bytes: int = Field(
        256 * 1024**2,
        ge=0,
        description="Largest remote file without tiles+overviews downloaded to be prepared "
        "(bytes); larger ones are refused with the conversion to a COG",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (e.g. http://127.0.0.1:9000); default: "
        "AWS_ENDPOINT_URL, else AWS",
    )
    stretch_percentiles: tuple[float, float] = Field(
        (2.0, 98.0), description="Percentiles for scaling 16-bit/float imagery to 8 bits"
    )

    # --- model pool --------------------------------------------------------------------------
    model_pool_budget_bytes: int | None = Field(
        None,
        ge=0,
        description="Model memory budget per device (default: a fraction of free memory)",
    )
    model_pool_fraction: float = Field(
        0.8, gt=0, le=1, description="Fraction of free device memory (or RAM) used as the budget"
    )
    model_pool_concurrency: int = Field(1, ge=1, description="Concurrent model calls per device")

    # --- planner -----------------------------------------------------------------------------
    planner: Literal["auto", "transformers", "openai", "rules", "script"] = Field(
        "auto",
        description="Planner backend; auto = transformers if local weights are configured or "
        "cached, else openai if a base URL is set, else rules",
    )
    planner_model: str | None = Field(
        None,
        description="transformers: checkpoint path or hub id (e.g. HappyBug/ZoomEarth-3B); "
        "openai: the served model name",
    )
    planner_base_url: str | None = Field(
        None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
    )
    planner_api_key: str | None = Field(None, description="API key for the openai backend")
    planner_coord_mode: Literal["pixels", "norm1000", "norm1"] | None = Field(
        None, description="Box frame the model emits (default: the backend's)"
    )
    planner_profile: Literal["auto", "agent", "zoomearth"] = Field(
        "auto",
        description="Protocol profile: zoomearth = ZoomEarth-3B as its paper evaluated it (two "
        "stages, raw prompt, 512-frame boxes); agent = the general multi-step agent; auto = "
        "zoomearth when planner_model names ZoomEarth",
    )
    planner_prompt: Path | None = Field(
        None,
        description="agent profile: a YAML/jinja prompt file over the packaged sections; "
        "zoomearth profile: the checkpoint's whole stage-1 text with {{question}} (plain text)",
    )
    planner_device: str = Field("auto", description="Device for local planners: auto, cpu, cuda:N")
    planner_dtype: str = Field(
        "auto", description="Weights dtype: auto, bfloat16, float16, float32"
    )
    planner_max_new_tokens: int | None = Field(
        None, gt=0, description="Generation length per turn (default: the profile's, agent 512, "
        "zoomearth 1024)"
    )
    planner_temperature: float | None = Field(
        None,
        ge=0,
        description="Sampling temperature (default: the profile's: agent 0 = greedy, zoomearth "
        "0.01 as the reference)",
    )
    planner_seed: int | None = Field(None, description="Seed for sampled generation")
    zoomearth_exact_overview_max_pixels: int = Field(
        400_000_000,
        ge=0,
        description="zoomearth profile: overviews of images up to this many pixels are resampled "
        "exactly as the reference (PIL bicubic over every pixel, streamed in strips); larger "
        "ones from an internal overview level (see docs/reproduce.md for the difference)",
    )
    zoomearth_tool_planner: Literal["rules", "openai", "none"] = Field(
        "rules",
        description="zoomearth profile: what decides the tool to run on ZoomEarth's region "
        "(rules = the rules planner's intent table; openai = a general VLM over "
        "tool_planner_base_url; none = no tools)",
    )
    tool_planner_base_url: str | None = Field(
        None, description="zoomearth_tool_planner=openai: server (default: planner_base_url)"
    )
    tool_planner_model: str | None = Field(
        None, description="zoomearth_tool_planner=openai: served model (default: the first listed)"
    )
    tool_planner_api_key: str | None = Field(
        None, description="zoomearth_tool_planner=openai: API key (default: planner_api_key)"
    )
    planner_timeout_s: float = Field(120.0, gt=0, description="HTTP timeout per planner call")
    planner_max_retries: int = Field(3, ge=0, description="Retries of failed planner HTTP calls")
    plan_file: Path | None = Field(None, description="Script planner: JSON/YAML plan file")
    max_steps: int = Field(6, ge=1, description="Plan -> act -> observe cycles per question")
    max_zooms: int = Field(8, ge=0, description="Zoom actions per question")

    # --- tools -------------------------------------------------------------------------------
    tool_device: str = Field(
        "auto", description="Device for learned tool backends: auto, cpu, cuda:N"
    )
    sam_checkpoint: Path | None = Field(
        None, description="segment-anything checkpoint (.pth); unset = GrabCut default backend"
    )
    sam_model_type: Literal["vit_b", "vit_l", "vit_h"] = Field(
        "vit_b", description="SAM architecture of sam_checkpoint"
    )
    inpaint_model: str | None = Field(
        None, description="diffusers inpainting model id or path (edit, cloud filling)"
    )
    instruct_edit_model: str | None = Field(
        None, description="diffusers InstructPix2Pix model id or path (generative edits)"
    )
    denoise_model: Path | None = Field(
        None, description="Restoration checkpoint spandrel can load (SwinIR, NAFNet, ...)"
    )
    tool_tile_side: int = Field(
        1024, gt=0, description="Tile side for whole-scene streaming tools (pixels)"
    )
    tool_workers: int | None = Field(
        None,
        ge=1,
        description="Threads/processes computing a tool's independent tiles "
        "(default: the CPUs this process may use; 1 = one tile after the other)",
    )

    # --- security / server -------------------------------------------------------------------
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Directories from which path arguments (and file:// URLs) may be read",
    )
    allowed_url_prefixes: list[str] = Field(
        default_factory=list,
        description="URL prefixes (https://host/path/, s3://bucket/prefix/) chat image URLs may "
        "name; empty = remote URLs off",
    )
    server_host: str = Field("127.0.0.1", description="zoomearth serve: bind address")
    server_port: int = Field(8000, ge=0, le=65535, description="zoomearth serve: port")
    api_token: str | None = Field(
        None, description="Bearer token; required when the server binds a non-loopback address"
    )
    max_upload_bytes: int = Field(200 * 1024**2, gt=0, description="Largest accepted upload")
    max_json_body_bytes: int = Field(
        8_000_000,
        gt=0,
        description="Largest JSON request body (bytes); larger images go through /v1/files",
    )
    max_upload_pixels: int = Field(
        2_000_000_000, gt=0, description="Largest accepted image (pixels) for uploads"
    )
    max_concurrent_runs: int = Field(4, ge=1, description="Agent runs executing at once")
    max_queued_runs: int = Field(64, ge=0, description="Runs waiting beyond that (then 429)")
    run_timeout_s: float = Field(600.0, gt=0, description="Longest run before it is cancelled")
    progress_in_content: bool = Field(
        False, description="Stream progress in content instead of reasoning_content"
    )
    link_ttl_s: int = Field(3600, gt=0, description="Lifetime of signed artifact links")
    public_base_url: str | None = Field(
        None,
        description=(
            "Base URL of links the server hands out (e.g. https://zoom.example.org); default: "
            "the address the server binds"
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Client addresses whose X-Forwarded-Host/-Proto headers are trusted",
    )
    postgres_url: str | None = Field(
        None, description="Postgres checkpointer URL (shared threads across server workers)"
    )

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        # Derived directories are filled in only when not set explicitly.
        if self.runs_dir is None:
            object.__setattr__(self, "runs_dir", self.data_dir / "runs")
        if self.scene_cache_dir is None:
            object.__setattr__(self, "scene_cache_dir", self.cache_dir / "scenes")
        if self.checkpoint_db is None:
            object.__setattr__(self, "checkpoint_db", self.data_dir / "checkpoints.sqlite")
        lo, hi = self.stretch_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("stretch_percentiles must satisfy 0 <= low < high <= 100")
        for prefix in self.allowed_url_prefixes:
            scheme, sep, rest = prefix.strip().partition("://")
            host = rest.split("/", 1)[0]
            if scheme.lower() not in ("http", "https", "s3") or not sep or not host or "@" in host:
                raise ValueError(
                    f"allowed_url_prefixes: {prefix!r} is not an http(s):// or s3:// prefix with "
                    "a host, e.g. https://data.example.org/cogs/ or s3://bucket/prefix/"
                )
        return self

    # Provenance of each field and the file read, filled by load_settings (not in the schema).
    _sources: dict[str, Source] = PrivateAttr(default_factory=dict)
    _config_file: Path | None = PrivateAttr(None)

    def source_of(self, key: str) -> Source:
        """Where the effective value of ``key`` came from."""
        return self._sources.get(key, "default")


def _parse_env_value(key: str, raw: str) -> Any:
    field = Settings.model_fields[key]
    text = raw.strip()
    if key == "api_token" and not text:
        # An empty token would silently mean "no token": refuse it rather than open the server.
        raise ConfigError(
            f"Environment variable {ENV_PREFIX}API_TOKEN is empty: set a token (e.g. "
            "$(openssl rand -hex 32)) or unset the variable."
        )
    # Lists, tuples and dicts are JSON in the environment; plain strings stay strings. (An empty
    # value is not JSON: "" is a substring of every string, so test for it first.)
    if (text and text[:1] in "[{") or str(field.annotation).startswith(("list", "tuple", "dict")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"Environment variable {ENV_PREFIX}{key.upper()} must be JSON for this setting "
                f'(e.g. \'["a", "b"]\'): {exc}'
            ) from None
    if text.lower() in {"none", "null", ""} and "None" in str(field.annotation):
        return None
    return text


def _env_layer(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in Settings.model_fields:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            out[key] = _parse_env_value(key, environ[name])
    return out


def _file_layer(path: Path | None, environ: dict[str, str]) -> tuple[dict[str, Any], Path | None]:
    explicit = path is not None or bool(environ.get(ENV_PREFIX + "CONFIG"))
    if path is None:
        path = Path(environ[ENV_PREFIX + "CONFIG"]) if environ.get(ENV_PREFIX + "CONFIG") else None
    if path is None:
        path = default_config_path()
    path = path.expanduser()
    if not path.exists():
        if explicit:
            raise ConfigError(f"Configuration file {path} does not exist; check the --config path.")
        return {}, None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read configuration file {path}: {exc}") from None
    # Allow an optional [zoomearth] table so the file can share space with other tools.
    if isinstance(data.get("zoomearth"), dict):
        data = data["zoomearth"]
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(
            f"Unknown setting(s) {', '.join(unknown)} in {path}; "
            f"{_renamed_hint(unknown)}run 'zoomearth config' to list valid keys."
        )
    return data, path


#: Settings that were removed, with what replaces them.
RENAMED_SETTINGS: dict[str, str] = {
    "planner_layout": "planner_layout was replaced by planner_profile (zoomearth = ZoomEarth-3B's "
    "two-stage continuation; agent = the chat layout)",
}


def _renamed_hint(keys: list[str]) -> str:
    hints = [RENAMED_SETTINGS[k] for k in keys if k in RENAMED_SETTINGS]
    return "".join(h + "; " for h in hints)


def parse_set_flags(pairs: list[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` pairs (values as JSON when they parse, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}.")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in Settings.model_fields:
            raise ConfigError(
                f"Unknown setting {key!r}; {_renamed_hint([key])}run 'zoomearth config' to list "
                "valid keys."
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_settings(
    flags: dict[str, Any] | None = None,
    config_file: Path | str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the effective settings from defaults, file, environment and flags.

    Args:
        flags: Values given on the command line (None values are ignored).
        config_file: Explicit TOML file (``--config``); must exist when given.
        environ: Environment mapping (defaults to ``os.environ``).

    Returns:
        Validated settings whose :meth:`Settings.source_of` tells each value's origin.

    Raises:
        ConfigError: Unknown keys, unreadable file, or values that fail validation.
    """
    env = dict(os.environ if environ is None else environ)
    file_values, file_path = _file_layer(Path(config_file) if config_file else None, env)
    env_values = _env_layer(env)
    flag_values = {k: v for k, v in (flags or {}).items() if v is not None}

    merged: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for layer_name, layer in (("file", file_values), ("env", env_values), ("flag", flag_values)):
        for key, value in layer.items():
            merged[key] = value
            sources[key] = layer_name  # type: ignore[assignment]
    try:
        settings = Settings(**merged)
    except ValidationError as exc:

        def where(err: Any) -> str:
            key = str(err["loc"][0]) if err["loc"] else "?"
            return f"{'.'.join(str(p) for p in err['loc'])} ({sources.get(key, 'default')})"

        problems = "; ".join(f"{where(err)}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"Invalid settings: {problems}") from None
    settings._sources = sources
    settings._config_file = file_path
    return settings


def describe_settings(settings: Settings) -> list[dict[str, Any]]:
    """Rows ``{key, value, source, description}`` for every setting (for ``zoomearth config``)."""
    rows = []
    dumped = settings.model_dump(mode="json")
    for key, field in Settings.model_fields.items():
        source = settings.source_of(key)
        if source == "default" and key in {"runs_dir", "scene_cache_dir", "checkpoint_db"}:
            source = "derived"  # type: ignore[assignment]
        value = dumped[key]
        if key.endswith(("api_key", "token")) and value:
            value = "***"  # secrets are never printed
        rows.append(
            {"key": key, "value": value, "source": source, "description": field.description}
        )
    return rows


def config_file_of(settings: Settings) -> Path | None:
    """The TOML file the settings were read from, if any."""
    return settings._config_file
