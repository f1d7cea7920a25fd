"""The UHR scene engine.

Lazy raster handles (:mod:`~zoomearth.scene.scene`), band mapping and display stretch
(:mod:`~zoomearth.scene.render`), rendered views and their writing (:mod:`~zoomearth.scene.view`),
georeference checks (:mod:`~zoomearth.scene.georef`), GDAL's quieting
(:mod:`~zoomearth.scene.gdal`), the prepared-copy cache (:mod:`~zoomearth.scene.cache`) and its
builder (:mod:`~zoomearth.scene.prepare`), and aligned atomic output writing
(:mod:`~zoomearth.scene.writing`). The synthetic scene generator is :mod:`zoomearth.synth`.
"""

from zoomearth.scene.scene import BandMapping, Scene, View

__all__ = ["BandMapping", "Scene", "View"]
