"""The layout of a synthetic scene: coarse fields, parcels, curves and planted objects.

:class:`_SceneLayout` holds everything decided before a pixel is drawn -- the coarse layout grid
(water, urban, forest, tones and clouds: one value per 64 x 64 px, interpolated per tile by
:class:`_CoarseTile`), the field parcels, the roads and the river (analytic curves,
:class:`_Curve`), the cloud threshold and the planted objects -- and samples the land cover at
points (object placement). :class:`~zoomearth.synth.render.SyntheticScene` renders it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from zoomearth.synth.blocks import (
    _SIDEWALK,
    _STREET_HALF,
    _STREET_SPACING,
    _block_buildings,
    _street_distance,
)
from zoomearth.synth.noise import (
    _S_CLOUD,
    _S_CN,
    _S_CN2,
    _S_CN3,
    _S_FOREST,
    _S_N64,
    _S_STREET_X,
    _S_STREET_Y,
    _S_TONE_A,
    _S_TONE_B,
    _S_URBAN,
    _S_WATER,
    _axis,
    _fbm_grid,
    _fbm_points,
    _key,
    _lerp_grid,
    _lerp_points,
    _noise_points,
)
from zoomearth.synth.objects import (
    _object_colour,
    _object_size,
    _overlaps,
    _Planted,
    _tight_box,
)
from zoomearth.synth.sidecar import LABELS, SynthObject

MIN_SIZE = 64  # smallest scene side (px) the generator accepts
SIZE_TEMPLATE = "Scene size must be >= " + str(MIN_SIZE) + " px a side; got {width}x{height}."
CLOUDS_TEMPLATE = "clouds must be a fraction in [0, 1]; got {clouds}."
SEED_TEMPLATE = "seed must be a non-negative integer; got {seed}."
BANDS_TEMPLATE = "bands must be 3 (RGB) or 4 (RGB + NIR); got {bands}."

_CELL = 64  # coarse layout grid spacing (px); power of two so coordinates stay exact

# Coarse-field channels.
_WATER, _URBAN, _FOREST, _TONE_A, _TONE_B, _CLOUD, _CLOUD_SHADOW = range(7)
_CLOUD_SHADOW_OFFSET = (140.0, 90.0)  # px; sun from the north-west casts shadows south-east

# Cloud field: fractal octaves (px), then detail octaves at non-harmonic spacings so that no
# lattice shows: (salt, spacing, weight).
_CLOUD_SPACINGS = (4096.0, 2048.0, 1024.0, 512.0, 256.0)
_CLOUD_DETAIL = ((_S_CN, 113.0, 0.07), (_S_CN2, 71.0, 0.045), (_S_CN3, 23.0, 0.02))
# The per-pixel cloud value stays within this distance of the coarse grid's node values.
_CLOUD_SLACK = 0.25

# Crop colours (RGB) of summer fields at 0.5 m, and their sampling weights.
_CROPS = np.array(
    [
        [92, 118, 60],  # green crop
        [66, 94, 50],  # dark green crop
        [186, 168, 112],  # ripe cereal
        [164, 146, 108],  # stubble
        [124, 102, 80],  # bare soil
        [118, 136, 82],  # grass
        [196, 184, 82],  # flowering rapeseed
        [142, 126, 92],  # dry soil
    ],
    dtype=np.float32,
)
_CROP_WEIGHTS = np.array([0.2, 0.14, 0.16, 0.12, 0.12, 0.14, 0.04, 0.08])


# --------------------------------------------------------------------------------------------
# Analytic curves (roads, river)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """A gently curving line: signed distance ~ n.p - c + sum(A sin(2 pi f t + phi)), t = tan.p."""

    nx: float
    ny: float
    c: float
    amps: tuple[float, ...]
    freqs: tuple[float, ...]
    phases: tuple[float, ...]
    half_width: float

    def signed(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Approximate signed distance (px) at broadcastable coordinate arrays."""
        nx, ny = np.float32(self.nx), np.float32(self.ny)
        d = xs * nx + ys * ny - np.float32(self.c)
        t = ys * nx - xs * ny
        for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True):
            d = d + np.float32(a) * np.sin(np.float32(2 * math.pi * f) * t + np.float32(p))
        return d

    def near(self, cx: float, cy: float, radius: float) -> bool:
        """Whether the curve may pass within ``radius`` px of the point (cheap bound)."""
        d = abs(cx * self.nx + cy * self.ny - self.c)
        return d <= radius + sum(self.amps) + self.half_width + 4

    def point(self, t: float, offset: float = 0.0) -> tuple[float, float, float]:
        """Point at tangent coordinate ``t`` and signed offset; returns ``(x, y, angle)``."""
        s = self.c - sum(
            a * math.sin(2 * math.pi * f * t + p)
            for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True)
        )
        ds = -sum(
            a * 2 * math.pi * f * math.cos(2 * math.pi * f * t + p)
            for a, f, p in zip(self.amps, self.freqs, self.phases, strict=True)
        )
        s += offset
        # p = t * tangent + s * normal with tangent = (-ny, nx).
        x = -t * self.ny + s * self.nx
        y = t * self.nx + s * self.ny
        dx, dy = -self.ny + ds * self.nx, self.nx + ds * self.ny
        return x, y, math.atan2(dy, dx)


def _random_curve(
    rng: np.random.Generator, width: int, height: int, vertical: bool, half_width: float,
    wiggle: float,
) -> _Curve:  # fmt: skip
    theta = rng.uniform(-0.35, 0.35) + (0.0 if vertical else math.pi / 2)
    nx, ny = math.cos(theta), math.sin(theta)
    px, py = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
    n_terms = 2
    amps = tuple(float(a) for a in rng.uniform(0.2, 1.0, n_terms) * wiggle * np.array([1, 0.3]))
    wavelengths = rng.uniform(2500, 7000, n_terms) * np.array([1.0, 0.37])
    freqs = tuple(float(1.0 / w) for w in wavelengths)
    phases = tuple(float(p) for p in rng.uniform(0, 2 * math.pi, n_terms))
    return _Curve(nx, ny, px * nx + py * ny, amps, freqs, phases, half_width)


# --------------------------------------------------------------------------------------------
# Coarse grid
# --------------------------------------------------------------------------------------------


class _CoarseTile:
    """Bilinear interpolation of the coarse layout grid over one tile, channel by channel.

    The arithmetic matches :meth:`_SceneLayout._coarse_points` and depends only on global
    coordinates, so values do not depend on the tiling.
    """

    def __init__(self, coarse: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
        # Coarse node k sits at pixel (k - 1 + 0.5) * _CELL (one padding node).
        self.i, self.fx = _axis(xs / _CELL + 0.5, 1.0, False)
        self.j, self.fy = _axis(ys / _CELL + 0.5, 1.0, False)
        self.i0, self.j0 = int(self.i[0]), int(self.j[0])
        self.block = coarse[:, self.j0 : int(self.j[-1]) + 2, self.i0 : int(self.i[-1]) + 2]

    def bounds(self, chan: int) -> tuple[float, float]:
        """Min and max of a channel over the tile (exact bounds of the interpolated values)."""
        b = self.block[chan]
        return float(b.min()), float(b.max())

    def get(self, chan: int) -> np.ndarray:
        """Interpolated channel, (h, w) float32."""
        return _lerp_grid(self.block[chan], self.i - self.i0, self.fx, self.j - self.j0, self.fy)


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


class _SceneLayout:
    """The layout of a synthetic scene (see the module docstring); renders nothing itself.

    Attributes:
        width: Width in pixels.
        height: Height in pixels.
        seed: Seed of everything random.
        clouds: Requested cloud fraction.
        bands: 3 (RGB) or 4 (RGB + NIR).
        objects: Planted objects (boxes in full-resolution pixels), in id order.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        seed: int = 0,
        clouds: float = 0.0,
        bands: int = 3,
        draw_objects: bool = True,
        objects_per_mpx: float = 1.0,
        max_objects: int = 2000,
    ) -> None:
        """Lay out the scene (coarse fields, parcels, curves, objects); renders nothing.

        Args:
            size: ``N`` for a square scene or ``(width, height)`` in pixels.
            seed: Seed (non-negative integer).
            clouds: Fraction of pixels to cover with cloud, 0-1.
            bands: 3 for RGB, 4 for RGB + near infrared.
            draw_objects: Draw the planted objects (False renders the landscape alone with the
                same layout, e.g. to compare against; :attr:`objects` is then empty).
            objects_per_mpx: Planted objects per million pixels (at least 6 are attempted).
            max_objects: Cap on the number of planted objects.

        Raises:
            ValueError: Bad size, cloud fraction, band count or seed.
        """
        self.width, self.height = _as_size(size)
        if min(self.width, self.height) < MIN_SIZE:
            raise ValueError(SIZE_TEMPLATE.format(width=self.width, height=self.height))
        if not 0.0 <= clouds <= 1.0:
            raise ValueError(CLOUDS_TEMPLATE.format(clouds=clouds))
        if bands not in (3, 4):
            raise ValueError(BANDS_TEMPLATE.format(bands=bands))
        if int(seed) < 0:
            raise ValueError(SEED_TEMPLATE.format(seed=seed))
        self.seed = int(seed)
        self.clouds = float(clouds)
        self.bands = bands
        self._build_coarse()
        self._build_parcels()
        self._build_curves()
        # Per-scene memo of built blocks (bounded: a row of tiles needs a few hundred).
        self._blocks = lru_cache(maxsize=16384)(self._block_buildings_uncached)
        self._cloud_t = self._cloud_threshold()
        planted = self._plant_objects(objects_per_mpx, max_objects) if draw_objects else []
        self._planted: list[_Planted] = planted
        self._buckets: dict[tuple[int, int], list[int]] | None = None
        self.objects: tuple[SynthObject, ...] = tuple(
            SynthObject(i, ob.label, ob.box) for i, ob in enumerate(planted)
        )

    # ---- layout ---------------------------------------------------------------------------

    def _build_coarse(self) -> None:
        # One padding cell each side so bilinear interpolation never leaves the grid.
        wc = math.ceil(self.width / _CELL) + 3
        hc = math.ceil(self.height / _CELL) + 3
        xs = (np.arange(wc) - 1 + 0.5) * _CELL
        ys = (np.arange(hc) - 1 + 0.5) * _CELL
        s = self.seed
        chans = [
            _fbm_grid(s, _S_WATER, xs, ys, (6144, 3072, 1536, 768)),
            _fbm_grid(s, _S_URBAN, xs, ys, (5120, 2560, 1280, 640)),
            _fbm_grid(s, _S_FOREST, xs, ys, (4096, 2048, 1024, 512, 256)),
            _fbm_grid(s, _S_TONE_A, xs, ys, (4096, 2048, 1024)),
            _fbm_grid(s, _S_TONE_B, xs, ys, (3072, 1536, 768)),
        ]
        if self.clouds > 0:
            sx, sy = _CLOUD_SHADOW_OFFSET
            chans.append(_fbm_grid(s, _S_CLOUD, xs, ys, _CLOUD_SPACINGS))
            chans.append(_fbm_grid(s, _S_CLOUD, xs - sx, ys - sy, _CLOUD_SPACINGS))
        self._coarse = np.ascontiguousarray(np.stack(chans), dtype=np.float32)  # (k, hc, wc)
        inner = self._coarse[:, 1:-2, 1:-2]
        # Quantile thresholds: every scene gets about the same share of each cover type.
        self._t_water = float(np.quantile(inner[_WATER], 0.93))
        self._t_urban = float(np.quantile(inner[_URBAN], 0.84))
        self._t_forest = float(np.quantile(inner[_FOREST], 0.74))

    def _build_parcels(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        edges_y = [-float(rng.uniform(0, 500))]
        while edges_y[-1] < self.height:
            edges_y.append(edges_y[-1] + float(rng.uniform(180, 720)))
        self._band_edges = np.array(edges_y)
        col_edges: list[np.ndarray] = []
        starts = [0]
        for _ in range(len(edges_y) - 1):
            e = [-float(rng.uniform(0, 600))]
            while e[-1] < self.width:
                e.append(e[-1] + float(rng.uniform(160, 900)))
            col_edges.append(np.array(e))
            starts.append(starts[-1] + len(e) - 1)
        self._col_edges = col_edges
        self._band_start = np.array(starts)
        n = starts[-1]
        kind = rng.choice(len(_CROPS), size=n, p=_CROP_WEIGHTS)
        self._p_rgb = _CROPS[kind] * rng.uniform(0.9, 1.1, (n, 1)).astype(np.float32)
        self._p_rgb *= rng.uniform(0.96, 1.04, (n, 3)).astype(np.float32)
        orient = rng.choice([0.0, math.pi / 2, -1.0], size=n, p=[0.4, 0.4, 0.2])
        angle = np.where(orient < 0, rng.uniform(0, math.pi, n), orient)
        period = rng.uniform(5.0, 13.0, n)
        self._p_kx = (np.cos(angle) / period).astype(np.float32)
        self._p_ky = (np.sin(angle) / period).astype(np.float32)
        amp = rng.uniform(0.04, 0.16, n)
        amp[np.isin(kind, (4, 5))] *= 0.25  # bare soil and grass show few rows
        self._p_amp = amp.astype(np.float32)
        self._p_tex = rng.uniform(0.02, 0.07, n).astype(np.float32)

    def _build_curves(self) -> None:
        rng = np.random.default_rng([self.seed, 2])
        w, h = self.width, self.height
        n_v = max(1, round(w / 3500 + rng.uniform(-0.3, 0.3)))
        n_h = max(1, round(h / 3500 + rng.uniform(-0.3, 0.3)))
        self._roads = [
            _random_curve(rng, w, h, vertical=k < n_v, half_width=float(rng.uniform(7, 10)),
                          wiggle=float(rng.uniform(0, 160)))
            for k in range(n_v + n_h)
        ]  # fmt: skip
        self._river = None
        if rng.random() < 0.8:
            self._river = _random_curve(
                rng, w, h, vertical=bool(rng.random() < 0.5),
                half_width=float(rng.uniform(24, 60)), wiggle=float(rng.uniform(150, 450)),
            )  # fmt: skip

    def _cloud_threshold(self) -> float:
        if self.clouds <= 0.0:
            return math.inf
        if self.clouds >= 1.0:
            return -math.inf
        rng = np.random.default_rng([self.seed, 3])
        n = 200_000
        xs = rng.uniform(0, self.width, n)
        ys = rng.uniform(0, self.height, n)
        v = self._cloud_value_points(xs, ys)
        return float(np.quantile(v, 1.0 - self.clouds))

    # ---- sampling -------------------------------------------------------------------------

    def _coarse_points(self, xs: np.ndarray, ys: np.ndarray, chan: int) -> np.ndarray:
        i, fx = _axis(np.asarray(xs) / _CELL + 0.5, 1.0, False)
        j, fy = _axis(np.asarray(ys) / _CELL + 0.5, 1.0, False)
        c = self._coarse[chan]
        # Points may lie a little outside the scene (block centres near its edges): clamp.
        i = np.clip(i, 0, c.shape[1] - 2)
        j = np.clip(j, 0, c.shape[0] - 2)
        return _lerp_points(c[j, i], c[j, i + 1], c[j + 1, i], c[j + 1, i + 1], fx, fy)

    def _cloud_value_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        s = self.seed
        v = _fbm_points(s, _S_CLOUD, xs, ys, _CLOUD_SPACINGS)
        for salt, spacing, weight in _CLOUD_DETAIL:
            v += np.float32(weight) * _noise_points(_key(s, salt), xs, ys, spacing)
        return v

    def _lake_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n64 = _noise_points(_key(self.seed, _S_N64), xs, ys, 64.0)
        return self._coarse_points(xs, ys, _WATER) + np.float32(0.03) * n64 - self._t_water

    def _urban_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n64 = _noise_points(_key(self.seed, _S_N64), xs, ys, 64.0)
        return self._coarse_points(xs, ys, _URBAN) + np.float32(0.03) * n64 - self._t_urban

    def _forest_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n64 = _noise_points(_key(self.seed, _S_N64), xs, ys, 64.0)
        return self._coarse_points(xs, ys, _FOREST) + np.float32(0.05) * n64 - self._t_forest

    def _cover_points(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Cover class at points: 0 field, 1 forest, 2 urban, 3 water, 4 road/street."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        xf, yf = xs.astype(np.float32), ys.astype(np.float32)
        water = self._lake_points(xs, ys) > 0
        if self._river is not None:
            water |= np.abs(self._river.signed(xf, yf)) < self._river.half_width
        urban = self._urban_points(xs, ys) > 0
        forest = self._forest_points(xs, ys) > 0
        road = np.zeros(xs.shape, dtype=bool)
        for r in self._roads:
            road |= np.abs(r.signed(xf, yf)) < r.half_width + 3
        sx = _street_distance(self.seed, _S_STREET_X, xs)
        sy = _street_distance(self.seed, _S_STREET_Y, ys)
        road |= urban & (np.minimum(sx, sy) < _STREET_HALF + _SIDEWALK + 1)
        out = np.zeros(xs.shape, dtype=np.uint8)
        out[forest] = 1
        out[urban] = 2
        out[water] = 3
        out[road] = 4
        return out

    # ---- objects --------------------------------------------------------------------------

    def _plant_objects(self, per_mpx: float, cap: int) -> list[_Planted]:
        rng = np.random.default_rng([self.seed, 4])
        w, h = self.width, self.height
        n = int(min(cap, max(6, round(w * h / 1e6 * per_mpx))))
        weights = np.array([0.16, 0.16, 0.2, 0.22, 0.08, 0.18])
        labels = rng.choice(len(LABELS), size=n, p=weights / weights.sum())
        placed: list[_Planted] = []
        grid: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        for li in labels:
            ob = self._try_place(rng, LABELS[int(li)], grid)
            if ob is None:
                continue
            placed.append(ob)
            x1, y1, x2, y2 = ob.box
            for gy in range(y1 // 256, (y2 - 1) // 256 + 1):
                for gx in range(x1 // 256, (x2 - 1) // 256 + 1):
                    grid.setdefault((gx, gy), []).append(ob.box)
        return placed

    def _try_place(
        self,
        rng: np.random.Generator,
        label: str,
        grid: dict[tuple[int, int], list[tuple[int, int, int, int]]],
    ) -> _Planted | None:
        w, h = self.width, self.height
        for _attempt in range(6):
            k = 48
            if label == "car":
                cands = self._car_candidates(rng, k)
            else:
                length, width = _object_size(rng, label, k)
                cx = rng.uniform(0, w, k)
                cy = rng.uniform(0, h, k)
                ang = rng.uniform(0, 2 * math.pi, k)
                if label in ("building", "swimming_pool"):
                    ang = rng.choice([0.0, math.pi / 2], k) + rng.uniform(-0.25, 0.25, k)
                cands = list(zip(cx, cy, ang, length, width, strict=True))
            arr = np.asarray(cands, dtype=np.float64).reshape(-1, 5)
            for idx in np.flatnonzero(self._sites_ok(label, arr)):
                px, py, pa, pl, pw = (float(v) for v in arr[idx])
                ob = _Planted(label, px, py, pa, pl, pw, (0.0, 0.0, 0.0))
                if label in ("swimming_pool", "storage_tank") and self._hits_building(ob):
                    continue
                box = _tight_box(ob)
                if box is None:
                    continue
                margin = 12
                if box[0] < margin or box[1] < margin or box[2] > w - margin or box[3] > h - margin:
                    continue
                if _overlaps(box, grid, pad=8):
                    continue
                return _Planted(label, px, py, pa, pl, pw, _object_colour(rng, label), box)
        return None

    def _car_candidates(
        self, rng: np.random.Generator, k: int
    ) -> list[tuple[float, float, float, float, float]]:
        out = []
        for _ in range(k):
            road = self._roads[int(rng.integers(len(self._roads)))]
            span = float(self.width + self.height)
            t = float(rng.uniform(-span, span))
            side = 1.0 if rng.random() < 0.5 else -1.0
            x, y, ang = road.point(t, side * road.half_width * 0.5)
            if side < 0:
                ang += math.pi  # the opposite lane drives the other way
            length = float(rng.uniform(12, 20))
            out.append((x, y, ang, length, length * rng.uniform(0.42, 0.5)))
        return out

    def _sites_ok(self, label: str, cands: np.ndarray) -> np.ndarray:
        """Whether candidate sites suit ``label`` by the land cover under them.

        Args:
            label: Object label.
            cands: ``(k, 5)`` rows of centre x, centre y, heading (rad), length, width (px).

        Returns:
            ``(k,)`` bool: the centre, ends, sides and corners lie on the right cover.
        """
        cx, cy, ang, length, width = (cands[:, i : i + 1] for i in range(5))
        pu = np.array([0, 1, -1, 0, 0, 1, -1, 1, -1], dtype=np.float64)[None, :]
        pv = np.array([0, 0, 0, 1, -1, 1, 1, -1, -1], dtype=np.float64)[None, :]
        if label == "ship":  # keep clear water around the hull
            pu, pv = pu * 1.5, pv * 2.5
        u, v = pu * length / 2, pv * width / 2
        ca, sa = np.cos(ang), np.sin(ang)
        xs, ys = cx + u * ca - v * sa, cy + u * sa + v * ca  # (k, 9)
        inside = (
            (xs.min(axis=1) >= 0)
            & (ys.min(axis=1) >= 0)
            & (xs.max(axis=1) < self.width)
            & (ys.max(axis=1) < self.height)
        )
        cover = self._cover_points(xs.ravel(), ys.ravel()).reshape(xs.shape)
        if label == "ship":
            ok = (cover == 3).all(axis=1)
        elif label == "car":
            ok = cover[:, 0] == 4
        elif label == "swimming_pool":
            ok = (cover == 2).all(axis=1)
        elif label == "storage_tank":
            ok = np.isin(cover, (0, 2)).all(axis=1)
        else:  # airplanes and buildings: among fields
            ok = (cover == 0).all(axis=1)
        return np.asarray(inside & ok)

    def _hits_building(self, ob: _Planted) -> bool:
        r = math.hypot(ob.length, ob.width) / 2 + 4
        x0, x1, y0, y1 = ob.cx - r, ob.cx + r, ob.cy - r, ob.cy + r
        for rect in self._buildings_in(int(x0), int(y0), int(x1) + 1, int(y1) + 1):
            bx0, by0, bx1, by1 = rect[:4]
            if bx0 < x1 and x0 < bx1 and by0 < y1 and y0 < by1:
                return True
        return False

    # ---- urban blocks ---------------------------------------------------------------------

    def _buildings_in(self, x0: int, y0: int, x1: int, y1: int) -> list[tuple[float, ...]]:
        """Building rectangles ``(x0, y0, x1, y1, roof_index, gable)`` near a region."""
        kx0 = math.floor(x0 / _STREET_SPACING) - 1
        kx1 = math.floor(x1 / _STREET_SPACING) + 1
        ky0 = math.floor(y0 / _STREET_SPACING) - 1
        ky1 = math.floor(y1 / _STREET_SPACING) + 1
        out: list[tuple[float, ...]] = []
        for ky in range(ky0, ky1 + 1):
            for kx in range(kx0, kx1 + 1):
                for rect in self._blocks(kx, ky):
                    if rect[0] < x1 and x0 < rect[2] and rect[1] < y1 and y0 < rect[3]:
                        out.append(rect)
        return out

    def _block_buildings_uncached(self, kx: int, ky: int) -> tuple[tuple[float, ...], ...]:
        return _block_buildings(self, kx, ky)
