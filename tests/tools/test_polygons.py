"""``_polygons._unit_factor`` catches only rasterio's CRS error (issue #13: no blanket except)."""

from __future__ import annotations

import pytest
from rasterio.crs import CRS
from rasterio.errors import CRSError

from zoomearth.tools._polygons import _unit_factor


def test_unit_factor_of_projected_crs():
    assert _unit_factor(CRS.from_epsg(32633)) == 1.0
    assert _unit_factor(CRS.from_epsg(2263)) == pytest.approx(0.3048006096)


def test_crs_without_linear_units_gives_none():
    assert _unit_factor(CRS.from_epsg(4326)) is None  # rasterio raises CRSError here


class _BrokenCRS:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    @property
    def linear_units_factor(self) -> tuple[str, float]:
        raise self.exc


def test_crs_error_is_the_only_one_caught():
    assert _unit_factor(_BrokenCRS(CRSError("no linear units"))) is None  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="a bug"):
        _unit_factor(_BrokenCRS(RuntimeError("a bug")))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        _unit_factor(object())  # type: ignore[arg-type]
