"""Rendering a synthetic scene: :class:`SyntheticScene` paints any window of its layout.

Fields with crop rows, forest crowns, urban blocks and buildings, water, roads, the planted
objects, the near-infrared band and clouds, painted in that order over one window at a time from
the layout of :class:`~zoomearth.synth.layout._SceneLayout`. Every pixel depends only on its
global coordinates and the seed, so any tiling gives identical pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from rasterio.windows import Window

from zoomearth.synth.blocks import (
    _ROOFS,
    _SIDEWALK,
    _STREET_HALF,
    _block_index,
    _block_kind,
    _fill,
    _fill_mask,
    _street_distance,
)
from zoomearth.synth.layout import (
    _CLOUD,
    _CLOUD_DETAIL,
    _CLOUD_SHADOW,
    _CLOUD_SLACK,
    _CLOUD_SPACINGS,
    _FOREST,
    _TONE_A,
    _TONE_B,
    _URBAN,
    _WATER,
    _CoarseTile,
    _SceneLayout,
)
from zoomearth.synth.noise import (
    _S_CLOUD,
    _S_N4,
    _S_N6,
    _S_N16,
    _S_N64,
    _S_STREET_X,
    _S_STREET_Y,
    _fbm_grid,
    _key,
    _noise_grid,
    _smoothstep,
)
from zoomearth.synth.objects import _footprint, _object_frame, _paint_object, _Planted

WINDOW_TEMPLATE = "Window {window} is not inside the {width}x{height} px scene."

_TAU = np.float32(2.0 * math.pi)

_SHADOW_OFFSET = (5, 5)  # px, building/object shadows

_FOREST_RGB = np.array([44, 66, 38], dtype=np.float32)
_LAWN_RGB = np.array([98, 122, 70], dtype=np.float32)
_CONCRETE_RGB = np.array([152, 150, 142], dtype=np.float32)
_ASPHALT_RGB = np.array([86, 87, 91], dtype=np.float32)
_SIDEWALK_RGB = np.array([172, 169, 160], dtype=np.float32)
_SHALLOW_RGB = np.array([60, 86, 82], dtype=np.float32)
_DEEP_RGB = np.array([24, 45, 56], dtype=np.float32)
_SHORE_RGB = np.array([150, 140, 112], dtype=np.float32)


class SyntheticScene(_SceneLayout):
    """A deterministic synthetic landscape; render any window of it.

    The constructor lays the scene out (:class:`~zoomearth.synth.layout._SceneLayout`); this
    class adds the rendering.

    Attributes:
        width: Width in pixels.
        height: Height in pixels.
        seed: Seed of everything random.
        clouds: Requested cloud fraction.
        bands: 3 (RGB) or 4 (RGB + NIR).
        objects: Planted objects (boxes in full-resolution pixels), in id order.
    """

    # ---- rendering ------------------------------------------------------------------------

    def render(self, window: Window | Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """Render one window of the scene.

        Args:
            window: ``Window`` or ``(col_off, row_off, width, height)`` in full-resolution
                pixels, inside the scene.

        Returns:
            ``(pixels, cloud_mask)``: pixels ``(bands, h, w)`` uint8 (R, G, B[, NIR]); the cloud
            mask ``(h, w)`` uint8 0/1, or None when the scene has no clouds.

        Raises:
            ValueError: The window is empty or not inside the scene.
        """
        win = window if isinstance(window, Window) else Window(*window)
        c0, r0 = int(win.col_off), int(win.row_off)
        w, h = int(win.width), int(win.height)
        if c0 < 0 or r0 < 0 or w < 1 or h < 1 or c0 + w > self.width or r0 + h > self.height:
            raise ValueError(
                WINDOW_TEMPLATE.format(window=win, width=self.width, height=self.height)
            )
        xs = c0 + np.arange(w, dtype=np.float64) + 0.5
        ys = r0 + np.arange(h, dtype=np.float64) + 0.5
        xf = xs.astype(np.float32)
        yf = ys.astype(np.float32)
        s = self.seed
        one = np.float32(1.0)
        ct = _CoarseTile(self._coarse, xs, ys)
        n64 = _noise_grid(_key(s, _S_N64), xs, ys, 64.0)
        n16 = _noise_grid(_key(s, _S_N16), xs, ys, 16.0)
        n4 = _noise_grid(_key(s, _S_N4), xs, ys, 4.0)

        # Fields: parcels with crop rows, lit by slow regional tone changes.
        rgb, border = self._fields(xs, ys, xf, yf, n64, n16, n4)
        rgb *= (one + np.float32(0.10) * ct.get(_TONE_A))[..., None]
        rgb[..., 1] *= one + np.float32(0.06) * ct.get(_TONE_B)
        if border.any():
            rgb[border] = rgb[border] * np.float32(0.4) + _SHORE_RGB * np.float32(0.85 * 0.6)

        crowns: np.ndarray | None = None
        forest = urban = water = None
        # Each cover type is skipped per tile when the coarse values (which bound the bilinear
        # interpolation) plus the noise amplitude cannot reach its threshold.
        if ct.bounds(_FOREST)[1] + 0.08 > self._t_forest:
            fv = ct.get(_FOREST) + np.float32(0.05) * n64 + np.float32(0.02) * n16
            forest = fv > np.float32(self._t_forest)
            if forest.any():
                crowns = self._crowns(xs, ys, n4, n16)
                rgb[forest] = _FOREST_RGB * crowns[forest][:, None]
        if ct.bounds(_URBAN)[1] + 0.04 > self._t_urban:
            urban = ct.get(_URBAN) + np.float32(0.03) * n64 > np.float32(self._t_urban)
            if urban.any():
                if crowns is None:
                    crowns = self._crowns(xs, ys, n4, n16)
                self._urban(rgb, urban, xs, ys, c0, r0, n16, crowns)

        # Water: lakes from the coarse field, plus the river; a light shore band on land.
        depth = None
        if ct.bounds(_WATER)[1] + 0.04 > self._t_water - 0.01:
            lake = ct.get(_WATER) + np.float32(0.03) * n64 - np.float32(self._t_water)
            depth = lake * np.float32(12.0)
        river = self._river
        if river is not None and river.near(c0 + w / 2, r0 + h / 2, math.hypot(w, h) / 2):
            rd = river.half_width - np.abs(river.signed(xf[None, :], yf[:, None]))
            rd = (rd + np.float32(3.0) * n16) * np.float32(0.03)
            depth = rd if depth is None else np.maximum(depth, rd)
        if depth is not None:
            water = depth > 0
            shore = (depth > np.float32(-0.06)) & ~water
            if urban is not None:
                shore &= ~urban
            if shore.any():
                rgb[shore] = rgb[shore] * np.float32(0.3) + _SHORE_RGB * np.float32(0.7)
            if water.any():
                d = np.clip(depth[water] * np.float32(0.35), 0.0, 1.0)[:, None]
                wcol = _SHALLOW_RGB * (one - d) + _DEEP_RGB * d
                ripple = one + np.float32(0.025) * n16[water] + np.float32(0.02) * n4[water]
                rgb[water] = wcol * ripple[:, None]

        # Major roads (over everything: bridges cross the river).
        for road in self._roads:
            if not road.near(c0 + w / 2, r0 + h / 2, math.hypot(w, h) / 2):
                continue
            ad = np.abs(road.signed(xf[None, :], yf[:, None]))
            hw = np.float32(road.half_width)
            on = ad < hw + 2
            if not on.any():
                continue
            tarmac = on & (ad < hw)
            rgb[on & ~tarmac] = _SIDEWALK_RGB
            rgb[tarmac] = _ASPHALT_RGB * (one + np.float32(0.03) * n16[tarmac])[:, None]
            rgb[on & ((np.abs(ad - (hw - 2.0)) < 0.7) | (ad < 0.6))] = np.float32(200.0)

        if self._planted:
            self._draw_objects(rgb, c0, r0, w, h, water)

        if self.bands == 4:
            # NIR is derived from the ground, then clouds cover all four bands alike.
            rgb = np.concatenate([rgb, self._nir(rgb, water, forest)[..., None]], axis=-1)
        mask = None
        if self.clouds > 0:
            rgb, mask = self._clouds(rgb, xs, ys, ct)

        rgb8 = cv2.convertScaleAbs(rgb)  # rounds and saturates to 0..255 (values are >= 0)
        return np.ascontiguousarray(np.moveaxis(rgb8, -1, 0)), mask

    def _fields(
        self,
        xs: np.ndarray,
        ys: np.ndarray,
        xf: np.ndarray,
        yf: np.ndarray,
        n64: np.ndarray,
        n16: np.ndarray,
        n4: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = len(ys), len(xs)
        rgb = np.empty((h, w, 3), dtype=np.float32)
        border = np.empty((h, w), dtype=bool)
        band = np.searchsorted(self._band_edges, ys, side="right") - 1
        dy = np.minimum(ys - self._band_edges[band], self._band_edges[band + 1] - ys)
        one = np.float32(1.0)
        # Rows are sorted, so each parcel band is a run of rows in which every per-parcel
        # attribute depends on x only: no per-pixel gathers.
        starts = np.flatnonzero(np.diff(band, prepend=band[0] - 1))
        for k, ra in enumerate(starts):
            rb = starts[k + 1] if k + 1 < len(starts) else h
            b = band[ra]
            e = self._col_edges[b]
            c = np.searchsorted(e, xs, side="right") - 1
            pid = self._band_start[b] + c
            dx = np.minimum(xs - e[c], e[c + 1] - xs)
            kx, ky = self._p_kx[pid], self._p_ky[pid]
            phase = xf[None, :] * kx[None, :] + yf[ra:rb, None] * ky[None, :]
            tex = (
                np.float32(1.2) * n16[ra:rb]
                + np.float32(0.8) * n4[ra:rb]
                + np.float32(0.8) * n64[ra:rb]
            )
            fac = one + self._p_amp[pid] * np.sin(_TAU * phase) + self._p_tex[pid] * tex
            rgb[ra:rb] = self._p_rgb[pid][None, :, :] * fac[..., None]
            border[ra:rb] = (dx[None, :] < 1.6) | (dy[ra:rb, None] < 1.6)
        return rgb, border

    def _crowns(
        self, xs: np.ndarray, ys: np.ndarray, n4: np.ndarray, n16: np.ndarray
    ) -> np.ndarray:
        n6 = _noise_grid(_key(self.seed, _S_N6), xs, ys, 6.0)
        c = np.float32(0.6) * n6 + np.float32(0.4) * n4
        # Bright crowns, dark gaps between them.
        return (
            np.float32(0.95)
            + np.float32(0.55) * np.tanh(np.float32(2.2) * c)
            + np.float32(0.08) * n16
        )

    def _urban(
        self,
        rgb: np.ndarray,
        urban: np.ndarray,
        xs: np.ndarray,
        ys: np.ndarray,
        c0: int,
        r0: int,
        n16: np.ndarray,
        crowns: np.ndarray,
    ) -> None:
        """Paint streets, block grounds and buildings where ``urban`` (in place)."""
        s = self.seed
        h, w = urban.shape
        one = np.float32(1.0)
        g = np.empty_like(rgb)
        bx = _block_index(s, _S_STREET_X, xs)
        by = _block_index(s, _S_STREET_Y, ys)
        xcuts = np.flatnonzero(np.diff(bx, prepend=bx[0] - 1))
        ycuts = np.flatnonzero(np.diff(by, prepend=by[0] - 1))
        for yi, ya in enumerate(ycuts):
            yb = ycuts[yi + 1] if yi + 1 < len(ycuts) else h
            for xi, xa in enumerate(xcuts):
                xb = xcuts[xi + 1] if xi + 1 < len(xcuts) else w
                kind = int(_block_kind(s, np.array(bx[xa]), np.array(by[ya])))
                n = n16[ya:yb, xa:xb]
                blk = g[ya:yb, xa:xb]
                if kind == 1:
                    blk[:] = _CONCRETE_RGB * (one + np.float32(0.04) * n)[..., None]
                    continue
                blk[:] = _LAWN_RGB * (one + np.float32(0.06) * n)[..., None]
                trees = n > np.float32(-0.15 if kind == 2 else 0.35)
                blk[trees] = _FOREST_RGB * np.float32(1.1) * crowns[ya:yb, xa:xb][trees][:, None]
        sx = _street_distance(s, _S_STREET_X, xs)
        sy = _street_distance(s, _S_STREET_Y, ys)
        g[:, sx < _STREET_HALF + _SIDEWALK] = _SIDEWALK_RGB
        g[sy < _STREET_HALF + _SIDEWALK] = _SIDEWALK_RGB
        asphalt = _ASPHALT_RGB * (one + np.float32(0.03) * n16)[..., None]
        cols, rows = sx < _STREET_HALF, sy < _STREET_HALF
        g[:, cols] = asphalt[:, cols]
        g[rows] = asphalt[rows]

        rects = self._buildings_in(c0, r0, c0 + w, r0 + h)
        if rects:
            shadow = np.zeros((h, w), dtype=bool)
            ox, oy = _SHADOW_OFFSET
            for bx0, by0, bx1, by1, *_ in rects:
                _fill_mask(shadow, bx0 + ox - c0, by0 + oy - r0, bx1 + ox - c0, by1 + oy - r0)
            g[shadow] *= np.float32(0.55)
            for bx0, by0, bx1, by1, roof, gable in rects:
                col = _ROOFS[int(roof)]
                if gable:
                    # Two roof planes lit differently, split along the long side.
                    if bx1 - bx0 >= by1 - by0:
                        mid = (by0 + by1) // 2
                        _fill(g, bx0 - c0, by0 - r0, bx1 - c0, mid - r0, col * 1.12)
                        _fill(g, bx0 - c0, mid - r0, bx1 - c0, by1 - r0, col * 0.86)
                    else:
                        mid = (bx0 + bx1) // 2
                        _fill(g, bx0 - c0, by0 - r0, mid - c0, by1 - r0, col * 1.12)
                        _fill(g, mid - c0, by0 - r0, bx1 - c0, by1 - r0, col * 0.86)
                else:
                    _fill(g, bx0 - c0, by0 - r0, bx1 - c0, by1 - r0, col)
                    # Flat roof: a darker parapet and a rooftop unit.
                    _fill(g, bx0 - c0, by0 - r0, bx1 - c0, by0 + 2 - r0, col * 0.8)
                    _fill(g, bx0 - c0, by0 - r0, bx0 + 2 - c0, by1 - r0, col * 0.8)
                    ux, uy = (bx0 + bx1) // 2, (by0 + by1) // 2
                    _fill(g, ux - c0, uy - r0, ux + 8 - c0, uy + 6 - r0, col * 0.7)
        if urban.all():
            rgb[:] = g
        else:
            rgb[urban] = g[urban]

    def _draw_objects(
        self, rgb: np.ndarray, c0: int, r0: int, w: int, h: int, water: np.ndarray | None
    ) -> None:
        sx, sy = _SHADOW_OFFSET
        for ob in self._objects_in(c0, r0, w, h):
            pad = 2 * max(sx, sy)
            wake = int(ob.length * 1.2) if ob.label == "ship" else 0
            x0 = max(ob.box[0] - pad - wake, c0)
            y0 = max(ob.box[1] - pad - wake, r0)
            x1 = min(ob.box[2] + pad + wake, c0 + w)
            y1 = min(ob.box[3] + pad + wake, r0 + h)
            if x0 >= x1 or y0 >= y1:
                continue
            xs = np.arange(x0, x1, dtype=np.float64)
            ys = np.arange(y0, y1, dtype=np.float64)
            region = rgb[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
            u, v = _object_frame(ob, xs, ys)
            fp = _footprint(ob, u, v)
            if ob.label == "ship" and water is not None:
                # A faint wake behind the stern, on water only.
                behind = -u - ob.length / 2
                wk = (behind > 0) & (np.abs(v) < ob.width * 0.25 + behind * 0.12)
                strength = np.clip(1.0 - behind / (ob.length * 1.2), 0, 1) * 0.22
                wmask = wk & water[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] & ~fp
                st = strength[wmask][:, None].astype(np.float32)
                region[wmask] = region[wmask] * (np.float32(1.0) - st) + np.float32(200.0) * st
            if ob.label not in ("swimming_pool", "ship"):
                us, vs = _object_frame(ob, xs - sx, ys - sy)
                sh = _footprint(ob, us, vs) & ~fp
                region[sh] *= np.float32(0.5)
            _paint_object(region, ob, u, v, fp)

    def _object_buckets(self, tile: int) -> dict[tuple[int, int], list[int]]:
        """Object indices by ``tile``-px grid cell of their drawing extent (built once)."""
        if self._buckets is not None:
            return self._buckets
        buckets: dict[tuple[int, int], list[int]] = {}
        pad = 2 * max(_SHADOW_OFFSET) + 2
        for k, ob in enumerate(self._planted):
            wake = int(ob.length * 1.2) + 1 if ob.label == "ship" else 0
            x0, y0 = ob.box[0] - pad - wake, ob.box[1] - pad - wake
            x1, y1 = ob.box[2] + pad + wake, ob.box[3] + pad + wake
            for ty in range(max(y0, 0) // tile, (y1 - 1) // tile + 1):
                for tx in range(max(x0, 0) // tile, (x1 - 1) // tile + 1):
                    buckets.setdefault((tx, ty), []).append(k)
        self._buckets = buckets
        return buckets

    def _object_ids_in(self, c0: int, r0: int, w: int, h: int) -> list[int]:
        """Ids of the objects whose drawing extent may touch a window, in id order."""
        b = self._object_buckets(256)
        seen: set[int] = set()
        for ty in range(r0 // 256, (r0 + h - 1) // 256 + 1):
            for tx in range(c0 // 256, (c0 + w - 1) // 256 + 1):
                seen.update(b.get((tx, ty), ()))
        return sorted(seen)  # a fixed drawing order whatever the tiling

    def _objects_in(self, c0: int, r0: int, w: int, h: int) -> Iterator[_Planted]:
        for k in self._object_ids_in(c0, r0, w, h):
            yield self._planted[k]

    def _clouds(
        self, rgb: np.ndarray, xs: np.ndarray, ys: np.ndarray, ct: _CoarseTile
    ) -> tuple[np.ndarray, np.ndarray]:
        t = self._cloud_t
        h, w = len(ys), len(xs)
        one = np.float32(1.0)
        if math.isinf(t) and t < 0:  # fully overcast
            return np.full_like(rgb, 236.0), np.ones((h, w), dtype=np.uint8)
        haze = 0.16
        # Shadows of clouds fall south-east of them (sun from the north-west).
        if ct.bounds(_CLOUD_SHADOW)[1] > t - 0.05:
            sa = _smoothstep(t - 0.05, t + 0.10, ct.get(_CLOUD_SHADOW))
            sa *= np.float32(-0.4)
            sa += one
            rgb *= sa[..., None]
        if ct.bounds(_CLOUD)[1] + _CLOUD_SLACK < t - haze:
            return rgb, np.zeros((h, w), dtype=np.uint8)
        s = self.seed
        # Evaluated per pixel, not interpolated from the coarse grid: thick cloud shows every
        # kink of a bilinear surface.
        v = _fbm_grid(s, _S_CLOUD, xs, ys, _CLOUD_SPACINGS)
        for salt, spacing, weight in _CLOUD_DETAIL:
            v += np.float32(weight) * _noise_grid(_key(s, salt), xs, ys, spacing)
        mask = (v >= np.float32(t)).astype(np.uint8)
        sel = v > np.float32(t - haze)
        n_sel = int(np.count_nonzero(sel))
        if n_sel == 0:
            return rgb, mask
        # Dense arithmetic beats boolean gathers once most of the tile is (hazy) cloud.
        dense = n_sel > sel.size // 2
        vs = v if dense else v[sel]
        # About 80 % opaque where the mask starts, a thin haze outside it.
        alpha = _smoothstep(t - haze, t + 0.06, vs)[..., None]
        thick = _smoothstep(t, t + 0.25, vs)[..., None]
        nb = rgb.shape[-1]  # 3, or 4 with NIR (clouds are bright in the near infrared too)
        grey = np.array([196, 200, 208, 204][:nb], dtype=np.float32)
        white = np.array([246, 246, 244, 246][:nb], dtype=np.float32)
        col = grey + (white - grey) * thick
        col *= (one - np.float32(0.06) * (vs - np.float32(t)))[..., None]
        if dense:
            rgb += (col - rgb) * alpha
        else:
            px = rgb[sel]
            rgb[sel] = px + (col - px) * alpha
        return rgb, mask

    def _nir(
        self, rgb: np.ndarray, water: np.ndarray | None, forest: np.ndarray | None
    ) -> np.ndarray:
        """Near-infrared reflectance (h, w) float32, 0-255 scale, from the ground colours."""
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        # Vegetation (green over red) reflects strongly in the near infrared, water hardly.
        veg = np.clip((g - r) / (g + r + np.float32(1.0)) * np.float32(6.0), 0.0, 1.0)
        nir = np.float32(0.45) * r + np.float32(0.35) * g + np.float32(0.2) * b
        nir += veg * np.float32(110.0)
        if forest is not None:
            nir[forest] *= np.float32(1.15)
        if water is not None:
            nir[water] = np.float32(0.25) * b[water]
        return nir
