"""Planted objects: footprints in the object frame, placement helpers and painting.

An object (:class:`_Planted`) is drawn in its own frame (``u`` along the heading, ``v`` across):
:func:`_footprint` gives its boolean footprint there, :func:`_tight_box` its box in
full-resolution pixels, :func:`_paint_object` paints it. Sizes and colours are drawn per label
(:func:`_object_size`, :func:`_object_colour`); :func:`_overlaps` keeps planted objects apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class _Planted:
    label: str
    cx: float
    cy: float
    angle: float  # radians, heading of the u axis in the pixel frame
    length: float  # px, along u
    width: float  # px, across (span for airplanes, radius*2 for tanks)
    colour: tuple[float, float, float]
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


def _footprint(ob: _Planted, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean footprint of an object at object-frame coordinates ``u``, ``v`` (px)."""
    hl, hw = ob.length / 2, ob.width / 2
    au, av = np.abs(u), np.abs(v)
    if ob.label == "storage_tank":
        return u * u + v * v <= hl * hl
    if ob.label in ("car", "swimming_pool"):
        r = hw * (0.45 if ob.label == "car" else 0.3)
        du = np.maximum(au - (hl - r), 0)
        dv = np.maximum(av - (hw - r), 0)
        return (au <= hl) & (av <= hw) & (du * du + dv * dv <= r * r)
    if ob.label == "ship":
        taper = np.clip((hl - u) / (0.32 * ob.length), 0.0, 1.0)
        return (au <= hl) & (av <= hw * np.sqrt(taper))
    if ob.label == "airplane":
        return _airplane_parts(ob, u, v)[0]
    return (au <= hl) & (av <= hw)  # building


def _airplane_parts(
    ob: _Planted, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(footprint, fuselage, engines) masks of a swept-wing airliner seen from above."""
    hl, span = ob.length / 2, ob.width
    fw = 0.055 * ob.length
    au, av = np.abs(u), np.abs(v)
    nose = np.clip((hl - u) / (0.08 * ob.length), 0.0, 1.0)
    fus = (au <= hl) & (av <= fw * np.sqrt(nose))
    sweep = 0.55
    root = 0.2 * ob.length
    lead = 0.12 * ob.length - av * sweep
    chord = root * (1.0 - 0.65 * av / (span / 2))
    wing = (av <= span / 2) & (u <= lead) & (u >= lead - chord)
    tspan = 0.19 * span
    tlead = -hl + 0.16 * ob.length - av * sweep
    tail = (av <= tspan) & (u <= tlead) & (u >= tlead - 0.09 * ob.length * (1 - 0.5 * av / tspan))
    ex = 0.05 * ob.length - 0.3 * span * sweep * 0.5
    eng = (np.abs(av - 0.3 * span / 2 * 1.0) <= fw * 0.55) & (np.abs(u - ex - 0.04 * ob.length) <=
                                                              0.05 * ob.length)  # fmt: skip
    return fus | wing | tail | eng, fus, eng


def _object_frame(ob: _Planted, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates of pixel centres ``xs`` (w,) x ``ys`` (h,) -> (h, w) each."""
    dx = (xs + 0.5 - ob.cx)[None, :]
    dy = (ys + 0.5 - ob.cy)[:, None]
    ca, sa = math.cos(ob.angle), math.sin(ob.angle)
    return dx * ca + dy * sa, -dx * sa + dy * ca


def _tight_box(ob: _Planted) -> tuple[int, int, int, int] | None:
    r = int(math.ceil(math.hypot(ob.length, ob.width) / 2)) + 2
    x0, y0 = int(math.floor(ob.cx)) - r, int(math.floor(ob.cy)) - r
    xs = np.arange(x0, x0 + 2 * r + 2, dtype=np.float64)
    ys = np.arange(y0, y0 + 2 * r + 2, dtype=np.float64)
    u, v = _object_frame(ob, xs, ys)
    m = _footprint(ob, u, v)
    if not m.any():
        return None
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def _overlaps(
    box: tuple[int, int, int, int],
    grid: dict[tuple[int, int], list[tuple[int, int, int, int]]],
    pad: int,
) -> bool:
    x1, y1, x2, y2 = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    for gy in range(max(y1, 0) // 256, (y2 - 1) // 256 + 1):
        for gx in range(max(x1, 0) // 256, (x2 - 1) // 256 + 1):
            for b in grid.get((gx, gy), ()):
                if b[0] < x2 and x1 < b[2] and b[1] < y2 and y1 < b[3]:
                    return True
    return False


def _object_size(rng: np.random.Generator, label: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    if label == "storage_tank":
        d = rng.uniform(16, 80, k)
        return d, d
    if label == "ship":
        length = np.exp(rng.uniform(math.log(36), math.log(200), k))
        return length, length * rng.uniform(0.14, 0.2, k)
    if label == "airplane":
        length = rng.uniform(60, 150, k)
        return length, length * rng.uniform(0.9, 1.05, k)
    if label == "swimming_pool":
        length = rng.uniform(16, 40, k)
        return length, length * rng.uniform(0.4, 0.7, k)
    length = rng.uniform(50, 200, k)  # building
    return length, length * rng.uniform(0.35, 0.8, k)


def _object_colour(rng: np.random.Generator, label: str) -> tuple[float, float, float]:
    palettes = {
        "car": [(200, 30, 30), (235, 235, 235), (30, 60, 170), (230, 200, 40), (190, 190, 196),
                (40, 140, 70), (250, 120, 20)],
        "ship": [(232, 232, 228), (200, 60, 50), (60, 80, 120), (220, 220, 210)],
        "storage_tank": [(226, 226, 222), (206, 208, 204), (236, 234, 226)],
        "airplane": [(238, 238, 240), (222, 224, 228)],
        "swimming_pool": [(56, 176, 206), (70, 190, 214), (40, 150, 196)],
        "building": [(228, 226, 220), (170, 60, 50), (92, 120, 160), (200, 202, 206),
                     (60, 110, 90)],
    }  # fmt: skip
    pal = palettes[label]
    c = pal[int(rng.integers(len(pal)))]
    return (float(c[0]), float(c[1]), float(c[2]))


def _paint_object(
    region: np.ndarray, ob: _Planted, u: np.ndarray, v: np.ndarray, fp: np.ndarray
) -> None:
    """Paint an object's footprint ``fp`` into ``region`` (h, w, 3 float32, in place)."""
    col = np.array(ob.colour, dtype=np.float32)
    hl, hw = ob.length / 2, ob.width / 2
    if ob.label == "car":
        region[fp] = col
        glass = fp & (((u > hl * 0.2) & (u < hl * 0.55)) | ((u < -hl * 0.45) & (u > -hl * 0.7)))
        glass &= np.abs(v) < hw * 0.8
        region[glass] = np.float32(35.0)
    elif ob.label == "ship":
        region[fp] = col
        deck = fp & (u > -hl * 0.85) & (u < -hl * 0.35) & (np.abs(v) < hw * 0.6)
        region[deck] = np.float32(245.0)
        hatch = fp & (u > -hl * 0.2) & (u < hl * 0.5) & (np.abs(v) < hw * 0.45)
        region[hatch] = col * np.float32(0.7) + np.float32(20.0)
    elif ob.label == "storage_tank":
        rr = np.sqrt(u * u + v * v) / max(hl, 1e-3)
        shade = np.float32(1.0) - np.float32(0.12) * rr
        region[fp] = col * shade[fp][:, None]
        rim = fp & (rr > 1.0 - 2.5 / max(hl, 1e-3))
        region[rim] = col * np.float32(0.72)
    elif ob.label == "airplane":
        _, fus, eng = _airplane_parts(ob, u, v)
        region[fp] = col * np.float32(0.93)
        region[fus] = col
        region[eng] = np.float32(120.0)
    elif ob.label == "swimming_pool":
        region[fp] = np.float32(226.0)  # coping
        inner = fp & (np.abs(u) < hl - 2) & (np.abs(v) < hw - 2)
        depth = np.clip((u + hl) / (2 * hl), 0, 1)
        region[inner] = col * (np.float32(1.05) - np.float32(0.2) * depth[inner])[:, None]
    else:  # building
        region[fp] = col
        ridge = fp & (np.abs(v) < 1.2)
        region[ridge] = col * np.float32(0.75)
        half = fp & (v > 0)
        region[half] = region[half] * np.float32(0.9)
        # Rooftop units along the ridge.
        units = fp & (np.abs(v - hw * 0.45) < 3) & ((np.floor((u + hl) / 14) % 3) == 1)
        region[units] = col * np.float32(0.6)
