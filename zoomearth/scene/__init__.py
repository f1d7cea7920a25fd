"""The UHR scene engine.

Lazy raster handles, windowed/overview rendering, the prepared-copy cache, aligned atomic output
writing and the synthetic scene generator.
"""

from zoomearth.scene.scene import BandMapping, Scene, View

__all__ = ["BandMapping", "Scene", "View"]
