"""Rendering of synthetic chest radiographs with numpy + OpenCV.

Images are built as a float32 *density* map (higher = more attenuating = brighter) from a few layers:
``base`` (body, lungs, mediastinum, heart; overwritten in anatomical order), ``sharp`` additions
(bones, devices, lung markings, lines) and ``soft`` additions (airspace/pleural opacities, blurred and
clipped to the lungs), plus a low-resolution ``haze`` for edema. Then exposure, gamma and noise.

Orientation convention: frontal views (PA and AP) are displayed as radiographs are read, with the
**patient's right on the image left**; lateral views have the patient facing the image left
(anterior = image left, spine on the right). All coordinates are normalised to ``[0, 1]`` of the
image side and converted to OpenCV fixed point (``shift=4``) so any image size works.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from cxr_vlp.data.synthetic.attributes import (
    ATELEC,
    CONSOL,
    ECM,
    EDEMA,
    EFFUSION,
    FRACTURE,
    LESION,
    OPACITY,
    PLEURAL_OTHER,
    PNEUMONIA,
    PTX,
    Study,
)

_SHIFT = 4
_ONE = 1 << _SHIFT
_SIDE_SIGN = {"right": -1.0, "left": 1.0}  # image-x direction of a patient side in frontal views
_ZONE_FRAC = {"upper": 0.2, "middle": 0.47, "lower": 0.75}
_SEV = {"mild": 0, "small": 0, "moderate": 1, "severe": 2, "large": 2}


class Canvas:
    """Float32 layers of one image plus drawing helpers in normalised coordinates."""

    def __init__(self, size: int) -> None:
        self.s = size
        self.base = np.full((size, size), 0.04, np.float32)
        self.sharp = np.zeros((size, size), np.float32)
        self.soft = np.zeros((size, size), np.float32)
        self.marks = np.zeros((size, size), np.float32)
        self.lung = np.zeros((size, size), np.uint8)
        hs = max(size // 4, 8)
        self.haze = np.zeros((hs, hs), np.float32)

    def p(self, x: float, y: float) -> tuple[int, int]:
        """One normalised point in fixed point."""
        return int(round(x * self.s * _ONE)), int(round(y * self.s * _ONE))

    def pts(self, points: Any) -> np.ndarray:
        """Normalised ``(N, 2)`` points -> fixed-point int32 contour."""
        return np.round(np.asarray(points, np.float64) * (self.s * _ONE)).astype(np.int32).reshape(-1, 1, 2)

    def t(self, frac: float) -> int:
        """A thickness in pixels (at least 1)."""
        return max(1, int(round(frac * self.s)))

    def poly(self, img: np.ndarray, points: Any, value: float) -> None:
        cv2.fillPoly(img, [self.pts(points)], float(value), cv2.LINE_8, _SHIFT)

    def line(self, img: np.ndarray, points: Any, value: float, thick: float) -> None:
        cv2.polylines(img, [self.pts(points)], False, float(value), self.t(thick), cv2.LINE_8, _SHIFT)

    def ellipse(
        self,
        img: np.ndarray,
        c: tuple[float, float],
        axes: tuple[float, float],
        value: float,
        angle: float = 0.0,
        start: float = 0.0,
        end: float = 360.0,
        thick: float | None = None,
    ) -> None:
        ax = (max(1, int(axes[0] * self.s * _ONE)), max(1, int(axes[1] * self.s * _ONE)))
        th = -1 if thick is None else self.t(thick)
        cv2.ellipse(img, self.p(*c), ax, angle, start, end, float(value), th, cv2.LINE_8, _SHIFT)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(X, Y)``, each ``[size, size]`` float32."""
    v = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(v[None, :], (size, size)), np.broadcast_to(v[:, None], (size, size))


@dataclass
class Frame:
    """Per-image geometry of a frontal view (normalised units)."""

    cx: float  # spine centre
    mx: float  # mediastinum centre (shifted by rotation)
    w: float  # thorax half-width
    apex: float
    dome: dict[str, float]  # top of each hemidiaphragm, by patient side
    cp: dict[str, float]  # costophrenic angle height, by side
    ctr: float  # cardiothoracic ratio as rendered


def _frontal_frame(study: Study, view: str, rng: np.random.Generator) -> Frame:
    j = lambda a: float(rng.uniform(-a, a))  # noqa: E731 - tiny jitter helper
    cx = 0.5 + j(0.015)
    w = 0.34 * study.thorax_scale * (1.0 + j(0.02))
    mx = cx + {"none": 0.0, "left": 0.045, "right": -0.045}[study.rotation] + j(0.004)
    dome0 = 0.66 + {"low": -0.085, "normal": 0.0, "hyperinflated": 0.075}[study.lung_volumes] + j(0.01)
    depth = 0.035 if study.lung_volumes == "hyperinflated" else 0.075
    dome = {"right": dome0 - 0.02, "left": dome0}
    at = study.findings.get(ATELEC)
    if at is not None and at["zone"] == "lower":  # volume loss raises the hemidiaphragm
        for s in _sides(at["side"]):
            dome[s] -= 0.03
    ctr = study.heart_ratio * (1.08 if view == "AP" else 1.0)
    return Frame(cx, mx, w, 0.13 + j(0.01), dome, {s: d + depth for s, d in dome.items()}, ctr)


def _sides(side: str) -> tuple[str, ...]:
    return ("right", "left") if side == "bilateral" else (side,)


def _lung_outline(f: Frame, side: str) -> np.ndarray:
    """Closed outline of one lung, clockwise from the medial apex (normalised ``(N, 2)``)."""
    g = _SIDE_SIGN[side]
    t = np.linspace(0.0, 1.0, 9)
    lat_x = f.cx + g * f.w * (0.3 + 0.67 * np.sqrt(np.sin(t * np.pi / 2)))
    lat_y = f.apex + 0.01 + t * (f.cp[side] - f.apex - 0.01)
    med_x = f.mx + g * 0.055
    u = np.linspace(0.0, 1.0, 8)[1:]
    dome_x = lat_x[-1] + (med_x - lat_x[-1]) * u
    dome_y = f.dome[side] + (f.cp[side] - f.dome[side]) * ((u - 0.55) / 0.55) ** 2
    pts = [(med_x, f.apex + 0.06), (f.cx + g * f.w * 0.18, f.apex)]
    pts += list(zip(lat_x, lat_y)) + list(zip(dome_x, dome_y))
    return np.asarray(pts)


def _zone_y(top: float, bottom: float, zone: str) -> float:
    return top + _ZONE_FRAC[zone] * (bottom - top)


def _draw_frontal_anatomy(c: Canvas, st: Study, view: str, f: Frame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Body, lungs, mediastinum, heart, bones and lung markings; returns per-side lung outlines."""
    cx, mx, w = f.cx, f.mx, f.w
    c.ellipse(c.base, (cx, 0.23), (w + 0.12, 0.13), 0.42)
    c.ellipse(c.base, (cx, 0.62), (w + 0.09, 0.62), 0.45)
    c.poly(c.base, [(cx - 0.08, 0.0), (cx + 0.08, 0.0), (cx + 0.09, 0.2), (cx - 0.09, 0.2)], 0.45)
    outlines = {s: _lung_outline(f, s) for s in ("right", "left")}
    for s, o in outlines.items():
        c.poly(c.base, o, 0.15)
        c.poly(c.lung, o, 1)
    c.ellipse(c.base, (cx + 0.45 * w, f.dome["left"] + 0.06), (0.05, 0.028), 0.3)  # gastric bubble
    mw = 0.05
    wide = {"mild": 1.55, "marked": 2.0}.get(st.findings.get(ECM, {}).get("degree", ""), 1.0)
    hx, hy = mx + 0.33 * f.ctr * w, f.dome["left"] - 0.08
    c.poly(
        c.base,
        [
            (mx - 0.8 * mw, 0.0),
            (mx + 0.8 * mw, 0.0),
            (mx + mw * wide, 0.17),
            (mx + mw * wide, 0.33),
            (mx + 1.1 * mw, hy),
            (mx - mw, hy),
            (mx - mw * wide, 0.33),
            (mx - mw * wide, 0.17),
        ],
        0.56,
    )
    c.ellipse(c.base, (mx + mw * wide + 0.005, 0.27), (0.026, 0.024), 0.56)  # aortic knob
    if st.incidental.get("aortic_calcification"):
        c.ellipse(c.sharp, (mx + mw * wide + 0.005, 0.27), (0.024, 0.022), 0.22, 0, 190, 350, thick=0.007)
    if st.incidental.get("clips"):
        for k in range(3):
            x0, y0 = cx - 0.45 * w + 0.025 * k, f.dome["right"] + 0.1 + 0.015 * (k % 2)
            c.line(c.sharp, [(x0, y0), (x0 + 0.012, y0 + 0.018)], 0.5, 0.007)
    hax = (f.ctr * w, 0.115 + 0.25 * (f.ctr - 0.45))
    c.ellipse(c.base, (hx, hy), hax, 0.6, angle=-12.0)
    c.ellipse(c.lung, (hx, hy), hax, 0, angle=-12.0)
    c.line(c.base, [(mx, 0.0), (mx, 0.31)], 0.33, 0.026)  # trachea and main bronchi
    c.line(c.base, [(mx - 0.07, 0.38), (mx, 0.31), (mx + 0.075, 0.39)], 0.36, 0.016)
    scol = {"dextro": -0.035, "levo": 0.035}.get(st.incidental.get("scoliosis", ""), 0.0)  # convex to that side
    for y in np.arange(0.0, 1.0, 0.047):  # vertebral bodies + spinous processes
        sx = cx + scol * float(np.sin(np.pi * np.clip((y - 0.1) / 0.65, 0.0, 1.0)))
        c.poly(c.sharp, [(sx - 0.028, y), (sx + 0.028, y), (sx + 0.028, y + 0.037), (sx - 0.028, y + 0.037)], 0.08)
        c.ellipse(c.sharp, (sx, y + 0.02), (0.007, 0.01), 0.1)
    fx = st.findings.get(FRACTURE)
    for side in ("right", "left"):
        g = _SIDE_SIGN[side]
        a0, a1 = (180.0, 270.0) if g < 0 else (270.0, 360.0)
        for i in range(10):  # posterior ribs (outwards and down) and fainter anterior ribs (down and in)
            yi = f.apex - 0.012 + i * 0.056
            u = np.linspace(0.0, 1.0, 9)
            rib = np.stack([cx + g * (0.02 + (0.97 * w - 0.02) * u), yi + 0.02 * u + 0.1 * u**2.5], 1)
            if fx is not None and fx["side"] == side and fx["rib"] == i + 1:
                c.line(c.sharp, rib[:5], 0.07, 0.017)  # displaced fracture: gap + step-off
                c.line(c.sharp, rib[5:] + np.array([-g * 0.004, 0.013]), 0.07, 0.017)
                if fx.get("age") == "old":
                    c.ellipse(c.sharp, tuple(rib[4:6].mean(0)), (0.018, 0.014), 0.16)
            else:
                c.line(c.sharp, rib, 0.07, 0.017)
            ant = np.stack([cx + g * w * (0.95 - 0.55 * u), yi + 0.11 + 0.07 * u + 0.03 * np.sin(np.pi * u)], 1)
            c.line(c.sharp, ant, 0.035, 0.013)
        y_med = f.apex + (0.04 if view == "PA" else 0.005)
        y_lat = f.apex - (0.005 if view == "PA" else 0.02)
        c.line(c.sharp, [(mx + g * 0.025, y_med), (cx + g * 0.65 * w, y_lat)], 0.1, 0.021)  # clavicle
        if view == "AP":  # scapular edge projecting over the lateral lung
            scap = [(cx + g * 0.93 * w, 0.17), (cx + g * 0.8 * w, 0.3), (cx + g * 0.88 * w, 0.45)]
            c.line(c.sharp, scap, 0.05, 0.012)
        hil = (mx + g * 0.09, 0.42)
        ends = rng.uniform([0.12, -0.7], [0.32, 0.9], size=(7, 2))
        for r, a in ends:  # vessels radiating from the hila
            c.line(c.marks, [hil, (hil[0] + g * r * np.cos(a) * w / 0.34, hil[1] + r * np.sin(a) * 0.8)], 0.05, 0.006)
    return outlines


def _shrunk(o: np.ndarray, anchor: tuple[float, float], k: float) -> np.ndarray:
    return np.asarray(anchor) + (o - np.asarray(anchor)) * k


def _blobs(
    c: Canvas,
    rng: np.random.Generator,
    cxy: tuple[float, float],
    r: float,
    n: int,
    spread: float,
    value: float,
    sx: float = 1.0,
) -> None:
    for dx, dy, rr in rng.uniform([-spread, -spread, 0.45], [spread, spread, 1.0], size=(n, 3)):
        c.ellipse(
            c.soft,
            (cxy[0] + dx * r * sx, cxy[1] + dy * r),
            (rr * r * 0.9, rr * r),
            value,
            angle=float(rng.uniform(0, 180)),
        )


def _airspace(c: Canvas, rng: np.random.Generator, st: Study, xy: Any) -> None:
    """Lung opacity, consolidation and pneumonia; ``xy(side, zone) -> (x, y)`` locates a zone."""
    for label, n, spread, value, rk in (
        (OPACITY, 3, 0.5, 0.19, 1.0),
        (CONSOL, 1, 0.0, 0.32, 0.9),
        (PNEUMONIA, 6, 0.9, 0.2, 0.4),
    ):
        fd = st.findings.get(label)
        if fd is None:
            continue
        r = (0.055, 0.08, 0.11)[_SEV[fd["severity"]]] * rk
        val = value * (0.65 if fd.get("uncertain") else 1.0)
        for s in _sides(fd["side"]):
            x, y = xy(s, fd["zone"])
            _blobs(c, rng, (x, y), r, n, spread, val)
            if label == CONSOL:  # air bronchograms: dark branching streaks inside the consolidation
                for a in rng.uniform(-0.6, 0.6, size=3):
                    streak = [(x, y - 0.3 * r), (x + 0.8 * r * np.sin(a), y + 0.6 * r * np.cos(a))]
                    c.line(c.sharp, streak, -0.07, 0.007)


def _frontal_findings(c: Canvas, st: Study, f: Frame, out: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Draw every present observation of a frontal view, sized and placed by its attributes."""
    X, Y = _grid(c.s)
    fd = st.findings

    def xy(s, z):
        return (
            f.cx + _SIDE_SIGN[s] * f.w * float(rng.uniform(0.5, 0.62)),
            _zone_y(f.apex, f.dome[s], z) + float(rng.uniform(-0.02, 0.02)),
        )

    _airspace(c, rng, st, xy)
    if EFFUSION in fd:
        e = fd[EFFUSION]
        h = (0.08, 0.15, 0.25)[_SEV[e["size"]]] * (0.7 if e.get("uncertain") else 1.0)
        for s in _sides(e["side"]):
            side_mask = np.zeros_like(c.lung)
            c.poly(side_mask, out[s], 1)
            lat = np.clip(_SIDE_SIGN[s] * (X - f.cx) / f.w, 0.0, 1.0)
            men = f.cp[s] - h - 0.06 * lat * lat
            c.soft += (side_mask * np.clip((Y - men) / 0.015, 0.0, 1.0) * 0.42).astype(np.float32)
    if ATELEC in fd:
        a = fd[ATELEC]
        th = {"linear": 0.012, "plate-like": 0.017, "subsegmental": 0.022}[a["kind"]]
        for s in _sides(a["side"]):
            g = _SIDE_SIGN[s]
            y = _zone_y(f.apex, f.dome[s], a["zone"]) + 0.03
            tilt = float(rng.uniform(-0.02, 0.03))
            c.line(c.soft, [(f.cx + g * 0.3 * f.w, y - tilt), (f.cx + g * 0.85 * f.w, y + tilt)], 0.45, th)
    if EDEMA in fd:
        sev = _SEV[fd[EDEMA]["severity"]]
        hs = c.haze.shape[0] / c.s
        for g in (-1.0, 1.0):  # bat-wing perihilar haze, low resolution then upsampled
            cv2.ellipse(
                c.haze,
                (int((f.mx + g * 0.13) * c.s * hs), int(0.45 * c.s * hs)),
                (int(0.13 * c.s * hs), int(0.15 * c.s * hs)),
                0,
                0,
                360,
                0.1 + 0.06 * sev,
                -1,
            )
            for _ in range(4 + 2 * sev):  # Kerley B lines at the lateral bases
                y = f.cp["left" if g > 0 else "right"] - float(rng.uniform(0.04, 0.16))
                x0 = f.cx + g * f.w * 0.93
                c.line(c.sharp, [(x0, y), (x0 - g * 0.035, y)], 0.07, 0.004)
        c.marks *= 1.6
    if LESION in fd:
        le = fd[LESION]
        s = le["side"] if le["side"] != "bilateral" else "right"
        x, y = xy(s, le["zone"])
        c.ellipse(c.sharp, (x, y), (0.012 + 0.01 * le["size_cm"],) * 2, 0.24 + 0.02 * min(le["size_cm"], 4.0))
    if PLEURAL_OTHER in fd:
        po = fd[PLEURAL_OTHER]
        for s in _sides(po["side"]):
            wall = out[s][4:10] + np.array([-_SIDE_SIGN[s] * 0.006, 0.0])
            if po["kind"] == "thickening":
                c.line(c.sharp, wall, 0.17, 0.015)
            else:
                for k in range(0, len(wall) - 1, 2):
                    c.line(c.sharp, wall[k : k + 2], 0.32, 0.014)
    if PTX in fd:
        p = fd[PTX]
        s, g = p["side"], _SIDE_SIGN[p["side"]]
        k = 1.0 - (0.1, 0.2, 0.33)[_SEV[p["size"]]] * (0.7 if p.get("uncertain") else 1.0)
        inner = _shrunk(out[s], (f.mx + g * 0.07, 0.5), k)
        lim = (f.apex + 0.22, 0.55, 1.0)[_SEV[p["size"]]]
        outer_m, inner_m = np.zeros_like(c.lung), np.zeros_like(c.lung)
        c.poly(outer_m, out[s], 1)
        c.poly(inner_m, inner, 1)
        region = (outer_m > inner_m) & (Y < lim)
        c.marks[region] = 0.0
        c.base[region] -= 0.09
        edge = np.zeros_like(c.soft)
        c.line(edge, np.vstack([inner, inner[:1]]), 0.16, 0.006)
        c.sharp += edge * (Y < lim) * (outer_m > 0)


def _frontal_devices(c: Canvas, st: Study, f: Frame) -> None:
    mx, cx, w, dl = f.mx, f.cx, f.w, f.dome["left"]
    for d in st.devices:
        k = d["kind"]
        if k == "ett":
            c.line(c.sharp, [(mx, 0.0), (mx, 0.31 - 0.012 * d["tip_cm"])], 0.45, 0.013)
        elif k == "ng":
            end = [(mx + 0.02, dl + 0.01), (cx + 0.3 * w, dl + 0.07), (cx + 0.42 * w, dl + 0.09)]
            end = end if d["tip"] == "stomach" else [(mx + 0.02, dl - 0.08)]
            path = [(mx + 0.012, 0.0), (mx + 0.016, 0.35)] + end
            c.line(c.sharp, path, 0.42, 0.008)
        elif k == "cvc":
            g = _SIDE_SIGN[d["side"]]
            tip_y = {"svc": 0.34, "cavoatrial": 0.41, "atrium": 0.47}[d["tip"]]
            start = (
                [(mx + g * 0.09, 0.0), (mx + g * 0.06, 0.16)]
                if d["approach"] == "jugular"
                else [(cx + g * 0.75 * w, 0.17), (mx + g * 0.07, 0.2)]
            )
            c.line(c.sharp, start + [(mx + g * 0.02 - 0.012, 0.25), (mx - 0.03, 0.29), (mx - 0.03, tip_y)], 0.4, 0.007)
        elif k == "pacemaker":
            g = _SIDE_SIGN[d["side"]]
            bx = cx + g * 0.62 * w
            c.poly(c.sharp, [(bx - 0.045, 0.14), (bx + 0.045, 0.14), (bx + 0.045, 0.2), (bx - 0.045, 0.2)], 0.75)
            tips = [(mx + 0.05, 0.56)] + ([(mx - 0.05, 0.45)] if d["leads"] == 2 else [])
            for tx, ty in tips:
                c.line(
                    c.sharp,
                    [(bx - g * 0.04, 0.17), (mx + g * 0.03, 0.22), (mx - 0.03, 0.3), (mx - 0.035, 0.4), (tx, ty)],
                    0.5,
                    0.006,
                )
        elif k == "chest_tube":
            g = _SIDE_SIGN[d["side"]]
            c.line(
                c.sharp,
                [
                    (cx + g * 1.08 * w, f.dome[d["side"]] + 0.03),
                    (cx + g * 0.86 * w, 0.45),
                    (cx + g * 0.5 * w, f.apex + 0.07),
                ],
                0.45,
                0.014,
            )


def _lateral(c: Canvas, st: Study, rng: np.random.Generator) -> None:
    """Lateral view: one lung field, heart anterior (image left), spine posterior (image right)."""
    X, Y = _grid(c.s)
    j = lambda a: float(rng.uniform(-a, a))  # noqa: E731
    sc = st.thorax_scale
    ox = j(0.015)
    dome = 0.68 + {"low": -0.08, "normal": 0.0, "hyperinflated": 0.07}[st.lung_volumes] + j(0.01)
    c.ellipse(c.base, (0.5 + ox, 0.6), (0.41 * sc, 0.62), 0.47)
    c.poly(c.base, [(0.36 + ox, 0.0), (0.7 + ox, 0.0), (0.78 + ox, 0.15), (0.3 + ox, 0.15)], 0.47)
    lung = [
        (0.52, 0.11),
        (0.36, 0.17),
        (0.26, 0.3),
        (0.22, 0.45),
        (0.23, dome + 0.03),
        (0.33, dome - 0.01),
        (0.47, dome - 0.03),
        (0.62, dome),
        (0.74, dome + 0.06),
        (0.81, dome + 0.11),
        (0.83, 0.5),
        (0.79, 0.27),
        (0.66, 0.13),
    ]
    lung = [((x - 0.5) * sc + 0.5 + ox, y) for x, y in lung]
    c.poly(c.base, lung, 0.17)
    c.poly(c.lung, lung, 1)
    ctr = st.heart_ratio
    hc, ha = (0.38 + 0.3 * (ctr - 0.45) + ox, dome - 0.1), (0.16 + 0.6 * (ctr - 0.45), 0.15 + 0.25 * (ctr - 0.45))
    c.ellipse(c.base, hc, ha, 0.46, angle=-30.0)
    c.ellipse(c.lung, hc, ha, 0, angle=-30.0)
    c.line(c.base, [(0.47 + ox, 0.0), (0.52 + ox, 0.34)], 0.3, 0.03)  # trachea
    if st.incidental.get("aortic_calcification"):
        c.ellipse(c.sharp, (0.5 + ox, 0.27), (0.06, 0.05), 0.2, 0, 180, 360, thick=0.007)
    if st.incidental.get("clips"):
        for k in range(3):
            c.line(c.sharp, [(0.33 + ox + 0.025 * k, dome + 0.1), (0.345 + ox + 0.025 * k, dome + 0.118)], 0.5, 0.007)
    if ECM in st.findings:  # widened anterior/superior mediastinum
        grow = 1.5 if st.findings[ECM]["degree"] == "marked" else 1.1
        c.ellipse(c.base, (0.42 + ox, 0.28), (0.07 * grow, 0.1), 0.44)
    for y in np.arange(0.02, 1.0, 0.05):  # vertebral bodies
        x0 = 0.78 + ox + 0.05 * (sc - 1.0)
        c.poly(c.sharp, [(x0, y), (x0 + 0.075, y), (x0 + 0.075, y + 0.04), (x0, y + 0.04)], 0.13)
    c.line(c.sharp, [(0.2 + ox, 0.17), (0.17 + ox, 0.5)], 0.11, 0.02)  # sternum
    for i in range(8):  # overlapping posterior ribs
        c.ellipse(c.sharp, (0.62 + ox, 0.1 + 0.07 * i), (0.22 * sc, 0.05), 0.035, 0, 200, 340, thick=0.014)
    for _ in range(10):
        a, r = float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(0.1, 0.25))
        c.line(c.marks, [(0.52 + ox, 0.42), (0.52 + ox + r * np.cos(a), 0.42 + r * np.sin(a))], 0.04, 0.006)
    fd = st.findings
    xy = lambda s, z: (0.5 + ox + float(rng.uniform(-0.12, 0.12)), _zone_y(0.13, dome, z))  # noqa: E731
    _airspace(c, rng, st, lambda s, z: xy(s, z))
    if EFFUSION in fd:  # posterior costophrenic sulcus with a meniscus rising posteriorly
        e = fd[EFFUSION]
        h = (0.05, 0.11, 0.2)[_SEV[e["size"]]] * (1.25 if e["side"] == "bilateral" else 1.0)
        post = np.clip((X - 0.45 - ox) / 0.35, 0.0, 1.0)
        men = dome + 0.13 - h + 0.1 * (1.0 - post) ** 2
        c.soft += (c.lung * np.clip((Y - men) / 0.015, 0.0, 1.0) * 0.31).astype(np.float32)
    if ATELEC in fd:
        y = _zone_y(0.13, dome, fd[ATELEC]["zone"]) + 0.03
        c.line(c.soft, [(0.3 + ox, y - 0.02), (0.7 + ox, y + 0.02)], 0.28, 0.014)
    if EDEMA in fd:
        hs = c.haze.shape[0] / c.s
        cv2.ellipse(
            c.haze,
            (int((0.5 + ox) * c.s * hs), int(0.45 * c.s * hs)),
            (int(0.17 * c.s * hs),) * 2,
            0,
            0,
            360,
            0.1 + 0.06 * _SEV[fd[EDEMA]["severity"]],
            -1,
        )
    if LESION in fd:
        x, y = xy("", fd[LESION]["zone"])
        c.ellipse(c.sharp, (x, y), (0.012 + 0.01 * fd[LESION]["size_cm"],) * 2, 0.22)
    if PTX in fd:
        k = 1.0 - (0.06, 0.12, 0.2)[_SEV[fd[PTX]["size"]]]
        inner = _shrunk(np.asarray(lung), (0.55 + ox, 0.6), k)
        c.line(c.sharp, inner[:4], 0.1, 0.005)
    for d in st.devices:
        k = d["kind"]
        if k == "ett":
            c.line(c.sharp, [(0.47 + ox, 0.0), (0.51 + ox, 0.3 - 0.012 * d["tip_cm"])], 0.42, 0.013)
        elif k == "ng":
            tip = [(0.42 + ox, dome + 0.05), (0.36 + ox, dome + 0.08)] if d["tip"] == "stomach" else []
            c.line(c.sharp, [(0.52 + ox, 0.0), (0.56 + ox, 0.35), (0.56 + ox, dome - 0.06)] + tip, 0.4, 0.008)
        elif k == "cvc":
            tip_y = {"svc": 0.34, "cavoatrial": 0.41, "atrium": 0.47}[d["tip"]]
            c.line(c.sharp, [(0.55 + ox, 0.0), (0.45 + ox, 0.2), (0.43 + ox, tip_y)], 0.38, 0.007)
        elif k == "pacemaker":
            c.poly(c.sharp, [(0.2 + ox, 0.13), (0.27 + ox, 0.13), (0.27 + ox, 0.18), (0.2 + ox, 0.18)], 0.7)
            c.line(c.sharp, [(0.25 + ox, 0.16), (0.4 + ox, 0.25), (0.42 + ox, 0.42), (0.33 + ox, 0.56)], 0.5, 0.006)
        elif k == "chest_tube":
            c.line(c.sharp, [(0.78 + ox, dome + 0.05), (0.7 + ox, 0.4), (0.55 + ox, 0.18)], 0.42, 0.014)


def _finish(c: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Compose the layers, apply blur, exposure, gamma and noise; return uint8."""
    s = c.s
    lungf = c.lung.astype(np.float32)
    lowres = cv2.resize(
        rng.standard_normal((max(s // 16, 4),) * 2).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC
    )
    sharp = c.base + c.sharp + (c.marks + 0.012 * lowres) * lungf
    d = cv2.GaussianBlur(sharp, (0, 0), 0.0035 * s + 0.3)
    d += cv2.GaussianBlur(c.soft, (0, 0), 0.012 * s) * cv2.GaussianBlur(lungf, (0, 0), 0.004 * s)
    if c.haze.any():
        d += cv2.resize(cv2.GaussianBlur(c.haze, (0, 0), 2.0), (s, s), interpolation=cv2.INTER_LINEAR) * lungf
    gain, off = float(rng.uniform(1.05, 1.3)), float(rng.uniform(-0.05, 0.03))
    d = d * gain + off + rng.standard_normal((s, s), dtype=np.float32) * 0.018
    img = np.clip(d * 255.0, 0, 255).astype(np.uint8)
    gamma = float(rng.uniform(0.85, 1.18))
    lut = (np.linspace(0.0, 1.0, 256) ** gamma * 255.0 + 0.5).astype(np.uint8)
    return cv2.LUT(img, lut)


def render_view(study: Study, view: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Render one view (``"PA"``, ``"AP"`` or ``"LATERAL"``) of ``study`` as a ``[size, size]`` uint8 image."""
    c = Canvas(size)
    if view == "LATERAL":
        _lateral(c, study, rng)
    elif view in ("PA", "AP"):
        f = _frontal_frame(study, view, rng)
        outlines = _draw_frontal_anatomy(c, study, view, f, rng)
        _frontal_findings(c, study, f, outlines, rng)
        _frontal_devices(c, study, f)
        lx = f.cx + f.w + 0.07  # "L" side marker on the patient's left (image right)
        c.line(c.sharp, [(lx, 0.04), (lx, 0.09), (lx + 0.03, 0.09)], 0.6, 0.008)
    else:
        raise ValueError(f"unknown view {view!r}; expected PA, AP or LATERAL")
    return _finish(c, rng)


def image_rng(seed: int, study_index: int, view_index: int) -> np.random.Generator:
    """The RNG of one image, independent of the order or process in which images are rendered."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, study_index, view_index)))
