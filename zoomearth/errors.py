"""Error hierarchy of the zoomearth core.

Every error the project raises on purpose derives from :class:`ZoomEarthError`; leaves also
subclass the matching builtin (``FileNotFoundError``, ``ValueError`` ...), so callers that only
know the builtins still catch them. Messages say what went wrong *and what to do next*.
"""

from __future__ import annotations


class ZoomEarthError(Exception):
    """Root of all errors raised on purpose by zoomearth."""


class ConfigError(ZoomEarthError, ValueError):
    """A setting is invalid or a configuration file cannot be read."""


class SceneError(ZoomEarthError):
    """Root of raster-scene problems."""


class SceneNotFoundError(SceneError, FileNotFoundError):
    """The image path does not exist."""


class SceneReadError(SceneError, OSError):
    """The file exists but cannot be read as a raster (empty, truncated, corrupt, not an image)."""


class SceneTooLargeError(SceneError, ValueError):
    """The raster declares more pixels than the configured limit."""


class ScenePrepareBudgetError(SceneTooLargeError):
    """Reading the raster needs a prepared (tiled, overviewed) copy larger than the work budget.

    Raised before any work (setting ``max_prepare_pixels``); an already cached copy is used
    regardless. ``code`` is a stable identifier for API clients.
    """

    code = "prepare_budget_exceeded"


class ScenePrepareError(SceneError, OSError):
    """Preparing the tiled copy did not complete; nothing is left in the cache.

    The cache could not be written, or the worker process that prepares it failed or was killed.
    """

    code = "prepare_failed"


class ScenePrepareCancelled(ScenePrepareError):
    """Preparing the tiled copy was cancelled by the caller; its partial file was removed."""

    code = "prepare_cancelled"


class BandLayoutError(SceneError, ValueError):
    """The band layout cannot be mapped to RGB without an explicit band mapping."""


class GeoreferenceError(SceneError, ValueError):
    """A raster's georeference cannot be used (e.g. a geotransform with a zero pixel size)."""


class BoxError(ZoomEarthError, ValueError):
    """A box is malformed: NaN, inverted, empty or entirely outside the image.

    ``code`` is the stable problem code a caller reports for it (the tool runner's
    ``ToolInputError.code``): ``bad_box`` here; the subclasses carry their own.
    """

    code = "bad_box"


class InvertedBoxError(BoxError):
    """The box is inverted (x2 < x1 or y2 < y1)."""

    code = "inverted_box"


class BoxOutsideImageError(BoxError):
    """The box lies entirely outside the image."""

    code = "box_outside_image"


class ModelPoolError(ZoomEarthError, RuntimeError):
    """A model could not be loaded or does not fit the memory budget."""


class MissingExtraError(ZoomEarthError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional package '{package}'. "
            f"Install it with: pip install 'zoomearth[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ModelTooLargeError(ModelPoolError):
    """A model does not fit the model-pool budget of its device, even after evicting the others."""


class ModelFallbackRequired(ModelPoolError):
    """A model ran out of memory on every device it may use: use the classical backend instead.

    Raised by :meth:`zoomearth.models.ModelPool.run` after the out-of-memory policy (evict the other
    models, retry once, retry on CPU) is exhausted. ``key`` names the model and ``devices`` the
    devices that were tried, in order.
    """

    def __init__(self, message: str, key: str = "", devices: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.key = key
        self.devices = devices


class OutputWriteError(ZoomEarthError, OSError):
    """An output file (raster, preview) could not be written; nothing was left at its path."""


class ProtectedPathError(ZoomEarthError, ValueError):
    """An output path is the same file as an input that must never be overwritten."""
