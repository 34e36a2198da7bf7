"""Synthetic chest-CT phantom in the MedSeg COVID-19 layout, for trying the ``covid`` path offline and for tests.

:func:`write_covid_phantom` writes the two files that :mod:`axial_kd_tf.data.covid` reads, in the same format and
orientation as the real MedSeg copy, so ``data.dataset: covid`` with ``data.root`` at that folder reads it unchanged:

    tr_im.nii.gz     [X, Y, slices] float32 Hounsfield units (integral values, as a CT scanner writes them)
    tr_mask.nii.gz   [X, Y, slices] labels stored as float32 with integral values, as in the MedSeg file:
                     0 background, 1 ground-glass, 2 consolidation, 3 pleural effusion
    phantom.json     generator, parameters and class shares (so the folder is never mistaken for real data)

Slice ``i`` is written as ``vol[:, :, i] = slice_i.T``, so the loader's ``np.fliplr(np.rot90(vol[:, :, i], k=3))``
turns it upright: anterior at the top, the patient's right on the image's left, the back (dorsal side) at the bottom.

**This is not real data.** It exists to run ``configs/covid.yaml`` / ``configs/paper/covid_cpu.yaml`` end to end on
a machine without the download, and for tests. Scores measured on it say nothing about real CT.

What a slice holds (all lengths relative to the image, so ``size`` only changes the resolution):

* **Air** (-1000 HU) around a **body** superellipse: soft tissue (~45 HU) under a subcutaneous fat ring (~-100 HU),
  a mediastinum (heart/blood ~38 HU in a fat rim of ~-80 HU), the descending aorta (~42 HU), a vertebra (cancellous
  ~220 HU in a ~650 HU cortex, spinal canal ~15 HU), the sternum and ribs (~350-500 HU).
* **Two lungs** (~-860 HU, denser towards the back, faint texture): superellipses carved by the mediastinum, aorta
  and spine, whose centre, axes and two shape harmonics change smoothly from slice to slice; ~90 vessel
  cross-sections (small discs of ~35 HU, continuous over several slices) that stay *background*.
* **Ground-glass (1)**, -500 to -300 HU: soft-edged blobs where a smooth 3-D random field, raised towards the
  periphery and the back of the lungs and by a per-lung severity that varies along the slices, passes a threshold.
* **Consolidation (2)**, -50 to +50 HU: a finer field plus the ground-glass field, so consolidations are denser,
  smaller blobs that mostly sit inside or next to ground-glass (the classic halo).
* **Pleural effusion (3)**, 2-18 HU: crescents along the dorsal lung wall, thickest at the back, in short runs of
  slices spread over the volume (about a quarter of the slices), on one side or both.
* A Gaussian blur (sigma 0.7 px) for partial-volume edges, then correlated Gaussian noise (sigma 20 HU).

Consolidation (-50..50), effusion (2..18), muscle (45) and heart (38) overlap within the noise, and vessels have the
HU of consolidation: per pixel a threshold cannot separate them; shape and position (a crescent at the dorsal wall,
a blob inside ground-glass, a disc of vessel size, tissue outside the lungs) decide the class.

**Class shares.** Each seed draws target shares of all pixels (ground-glass 2.8-4.2 %, consolidation 1.1-1.7 %,
effusion 0.12-0.24 %; :data:`TARGET_SHARES`) and calibrates its thresholds on a coarse grid to meet them, so a
volume lands within a few hundredths of a percent of its targets at any size. Measured over seeds 0-19 at 100
slices of 128² (seeds 0-3 at 512² agree to ±0.005 %):

    class              mean      range (seeds 0-19)   slices holding it (of 100)
    background         94.78 %   94.21-95.68 %        100
    ground-glass        3.61 %    2.92-4.14 %         97-100
    consolidation       1.45 %    1.20-1.69 %         85-100
    pleural effusion    0.17 %    0.13-0.24 %         21-30

:data:`SHARE_RANGES` holds these ranges with a margin (the tests check them). The targets follow the rough
proportions of MedSeg (effusion there: about 0.12 % of the pixels); they are not fitted to it.

Deterministic given ``seed``; the anatomy does not depend on ``size`` (a 128² phantom is a coarser copy of the 512²
one with the same seed; only the pixel noise differs). 100 slices of 512² take a few seconds, most of it gzip.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from axial_kd_tf.data.covid import CLASS_NAMES, IMAGE_FILE, MASK_FILE
from axial_kd_tf.errors import UserError

__all__ = ["INFO_FILE", "TARGET_SHARES", "SHARE_RANGES", "MIN_SLICES", "MIN_SIZE", "MAX_VOXELS",
           "generate_covid_phantom", "write_covid_phantom", "check_phantom_args", "read_info"]

#: Written beside the two NIfTI files: generator, parameters and class shares.
INFO_FILE = "phantom.json"
#: Each seed draws its target share of all pixels uniformly from these ranges (class id -> (low, high)).
TARGET_SHARES: dict[int, tuple[float, float]] = {1: (0.028, 0.042), 2: (0.011, 0.017), 3: (0.0012, 0.0024)}
#: Class shares a 100-slice phantom lands in: the measured ranges (seeds 0-19) with a margin; background follows
#: from the targets' bounds.
SHARE_RANGES: dict[int, tuple[float, float]] = {0: (0.935, 0.962), 1: (0.027, 0.044), 2: (0.0105, 0.018),
                                                3: (0.0010, 0.0028)}
MIN_SLICES = 3       # the covid loader needs a training, a validation and a test slice
MIN_SIZE = 32        # the networks downsample by 32
MAX_VOXELS = 2 ** 28  # ~1 GiB per float32 volume

_REF_SLICES = 100.0   # variation along z is set per 100 slices, so 12 slices vary as little as 12 of 100 do
_CALIBRATION_SIZE = 128  # thresholds are calibrated on this grid (or the image's, if smaller)
_SIGMA_Z = 2.0        # lesion fields stay correlated over ~5 slices
_BLUR_PX = 0.7
_NOISE_HU = 20.0
_MAX_EFFUSION = 0.4   # an effusion crescent is at most this fraction of a lung's radius thick


# ------------------------------------------------------------------------------------------------------- anatomy
def _wave(rng: np.random.Generator, z: np.ndarray, terms: int = 3) -> np.ndarray:
    """A smooth random curve in [-1, 1] along the slices (a few sines of 0.6-2.4 cycles per 100 slices)."""
    freq = rng.uniform(0.6, 2.4, terms) / _REF_SLICES
    phase = rng.uniform(0.0, 2 * np.pi, terms)
    amp = rng.uniform(0.5, 1.0, terms)
    return (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * z[None, :] + phase[:, None])).sum(0) / amp.sum()


def _field(rng: np.random.Generator, slices: int, cells: int) -> np.ndarray:
    """A smooth 3-D random field ``[slices, cells, cells]`` with zero mean and unit variance (upsampled per slice)."""
    import cv2

    pad = int(math.ceil(3 * _SIGMA_Z))
    white = rng.standard_normal((slices + 2 * pad, cells, cells)).astype(np.float32)
    taps = np.exp(-0.5 * (np.arange(-pad, pad + 1) / _SIGMA_Z) ** 2)
    taps /= taps.sum()
    out = sum(float(w) * white[i:i + slices] for i, w in enumerate(taps))  # Gaussian along the slices
    out = np.stack([cv2.GaussianBlur(s, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT) for s in out])
    return ((out - out.mean()) / max(float(out.std()), 1e-6)).astype(np.float32)


@dataclass
class _Lung:
    side: float            # -1: image left (patient's right), +1: image right
    cx: np.ndarray         # per slice: centre, semi-axes, superellipse exponent, harmonic amplitudes
    cy: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    p: np.ndarray
    h2: np.ndarray
    h3: np.ndarray
    phase2: float
    phase3: float
    severity: np.ndarray   # per slice, raises the lesion fields
    effusion: np.ndarray   # per slice envelope in [0, 1] (0: no effusion)
    vessels: np.ndarray    # [N, 7]: birth slice, length, dx0, dy0, drift x, drift y (lung units), radius (image units)


@dataclass
class _Anatomy:
    slices: int
    body: np.ndarray       # [Z, 5]: cx, cy, ax, ay, exponent
    medi: np.ndarray       # [Z, 4]: cx, cy, ax, ay
    aorta: np.ndarray      # [3]: cx, cy, r
    spine: np.ndarray      # [3]: cx, cy, r
    fat: np.ndarray        # [Z]: subcutaneous fat thickness (body radius units)
    ribs: np.ndarray       # [R, 3]: angle, wobble amplitude, wobble phase
    lungs: tuple[_Lung, _Lung]
    effusion_hu: np.ndarray  # [Z]
    f_ggo: np.ndarray      # low-resolution fields [Z, g, g]
    f_cons: np.ndarray
    f_tex: np.ndarray
    f_hu: np.ndarray
    targets: dict[int, float]


def _effusion_runs(rng: np.random.Generator, slices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Envelopes (one per lung) of short runs of slices with effusion, spread evenly over the volume, and HU."""
    runs = max(1, round(slices / 17))
    z = np.arange(slices, dtype=np.float64)
    env = np.zeros((2, slices))
    hu = np.full(slices, 10.0)
    for j in range(runs):
        # Evenly spaced centres with jitter: every part of the volume (and so every split) likely gets some.
        centre = (j + 0.5) * slices / runs + rng.uniform(-0.2, 0.2) * slices / runs
        half = rng.uniform(1.5, 2.8)
        amp = rng.uniform(0.6, 1.0)
        side = rng.choice(3, p=[0.4, 0.4, 0.2])  # right, left, both
        bump = amp * np.cos(0.5 * np.pi * np.clip((z - centre) / half, -1, 1)) ** 2
        for k in (0, 1):
            if side == 2 or side == k:
                env[k] = np.maximum(env[k], bump)
        hu[np.abs(z - centre) < half] = rng.uniform(2.0, 18.0)
    return env[0], env[1], hu


def _anatomy(rng: np.random.Generator, slices: int) -> _Anatomy:
    """Draw every random quantity of the volume (none depends on the image size)."""
    z = np.arange(slices, dtype=np.float64)
    targets = {c: float(rng.uniform(lo, hi)) for c, (lo, hi) in TARGET_SHARES.items()}
    breathe = _wave(rng, z)  # one common size change: the whole chest grows and shrinks together
    body = np.stack([0.01 * _wave(rng, z), 0.03 + 0.01 * _wave(rng, z), 0.86 * (1 + 0.03 * breathe),
                     0.63 * (1 + 0.03 * breathe), 2.3 + 0.15 * _wave(rng, z)], axis=1)
    medi = np.stack([0.05 + 0.02 * _wave(rng, z), -0.02 + 0.02 * _wave(rng, z),
                     0.22 * (1 + 0.08 * _wave(rng, z)), 0.30 * (1 + 0.08 * _wave(rng, z))], axis=1)
    aorta = np.array([0.13, 0.30, 0.055]) + rng.uniform(-0.01, 0.01, 3)
    spine = np.array([0.0, 0.42, 0.09]) + rng.uniform(-0.005, 0.005, 3)
    fat = 0.09 + 0.03 * _wave(rng, z)
    left_side = rng.uniform(np.pi / 2 + 0.4, 3 * np.pi / 2 - 0.4, 6)   # image-left chest wall
    right_side = rng.uniform(3 * np.pi / 2 + 0.4, 5 * np.pi / 2 - 0.4, 6)
    ribs = np.stack([np.concatenate([left_side, right_side]), rng.uniform(0.05, 0.15, 12),
                     rng.uniform(0, 2 * np.pi, 12)], axis=1)
    env_r, env_l, effusion_hu = _effusion_runs(rng, slices)
    lungs = []
    for side, env in ((-1.0, env_r), (1.0, env_l)):
        n_vessels = int(round((slices + 30) * 45 / 17))  # ~45 cross-sections per slice (tracks last 4-30 slices)
        r0 = np.sqrt(rng.uniform(0, 1, n_vessels)) * 0.95
        a0 = rng.uniform(0, 2 * np.pi, n_vessels)
        vessels = np.stack([rng.uniform(-30, slices, n_vessels), rng.uniform(4, 30, n_vessels),
                            r0 * np.cos(a0), r0 * np.sin(a0), rng.normal(0, 0.01, n_vessels),
                            rng.normal(0, 0.01, n_vessels),
                            0.003 + 0.006 * rng.uniform(0, 1, n_vessels) * (1.2 - r0)], axis=1)
        lungs.append(_Lung(
            side=side,
            cx=side * (0.40 + 0.015 * _wave(rng, z)), cy=0.0 + 0.015 * _wave(rng, z),
            ax=0.27 * (1 + 0.03 * breathe + 0.04 * _wave(rng, z)),
            ay=0.42 * (1 + 0.03 * breathe + 0.04 * _wave(rng, z)),
            p=2.25 + 0.15 * _wave(rng, z), h2=0.05 * _wave(rng, z), h3=0.035 * _wave(rng, z),
            phase2=float(rng.uniform(0, 2 * np.pi)), phase3=float(rng.uniform(0, 2 * np.pi)),
            severity=1.1 * _wave(rng, z) + float(rng.uniform(-0.3, 0.3)), effusion=env, vessels=vessels))
    # Fields last: their size depends on the slice count only.
    return _Anatomy(slices=slices, body=body, medi=medi, aorta=aorta, spine=spine, fat=fat, ribs=ribs,
                    lungs=(lungs[0], lungs[1]), effusion_hu=effusion_hu,
                    f_ggo=_field(rng, slices, 20), f_cons=_field(rng, slices, 32), f_tex=_field(rng, slices, 40),
                    f_hu=_field(rng, slices, 16), targets=targets)


# ---------------------------------------------------------------------------------------------------- one slice
@dataclass
class _Slice:
    """Per-pixel quantities of one slice on an ``n``×``n`` grid."""
    u: np.ndarray
    v: np.ndarray
    lung: np.ndarray        # bool, either lung
    dy: np.ndarray          # position along the lung's front-back axis (-1 front .. 1 back), 0 outside
    ggo: np.ndarray         # scores (only meaningful inside the lungs)
    cons: np.ndarray
    eff: np.ndarray         # (rho - 1) / crescent profile; -inf where no effusion can be
    tex: np.ndarray
    hu: np.ndarray          # smooth unit-variance field that varies the lesions' HU


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1)  # pixel centres in [-1, 1]
    return c[None, :], c[:, None]  # u (columns), v (rows, growing towards the back)


def _up(field: np.ndarray, n: int) -> np.ndarray:
    import cv2

    return cv2.resize(field, (n, n), interpolation=cv2.INTER_CUBIC)


def _ellipse_rho(u: np.ndarray, v: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return np.sqrt(((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)


def _slice(a: _Anatomy, z: int, n: int) -> _Slice:
    u, v = _grid(n)
    f_ggo, f_cons = _up(a.f_ggo[z], n), _up(a.f_cons[z], n)
    ox, oy, orad = a.aorta.tolist()
    sx, sy, sr = a.spine.tolist()
    outside = ((_ellipse_rho(u, v, *a.medi[z].tolist()) > 1) & (_ellipse_rho(u, v, ox, oy, orad, orad) > 1.1)
               & (_ellipse_rho(u, v, sx, sy, sr, sr) > 1.15))
    shape = (n, n)
    lung = np.zeros(shape, bool)
    dy_all = np.zeros(shape, np.float32)
    ggo = np.full(shape, -np.inf, np.float32)
    cons = np.full(shape, -np.inf, np.float32)
    eff = np.full(shape, -np.inf, np.float32)
    for L in a.lungs:
        # Python floats: NumPy scalars (float64) would upcast the float32 grids.
        cx, cy, ax, ay, p, h2, h3, sev, env = (float(x[z]) for x in (L.cx, L.cy, L.ax, L.ay, L.p, L.h2, L.h3,
                                                                      L.severity, L.effusion))
        # Lung-relative coordinates with the lateral side at +dx on both sides, so the harmonics mirror.
        dx = L.side * (u - cx) / ax
        dy = (v - cy) / ay
        r = np.sqrt(dx * dx + dy * dy) + 1e-6
        c, s = dx / r, dy / r
        c2, s2 = c * c - s * s, 2 * c * s
        c3, s3 = c * (4 * c * c - 3), s * (3 - 4 * s * s)
        radius = (1 + h2 * (c2 * math.cos(L.phase2) - s2 * math.sin(L.phase2))
                  + h3 * (c3 * math.cos(L.phase3) - s3 * math.sin(L.phase3)))
        rho = (np.abs(dx) ** p + np.abs(dy) ** p) ** (1 / p) / radius
        inside = (rho < 1) & outside
        periph = np.clip((rho - 0.5) / 0.5, 0, 1)  # COVID lesions favour the periphery ...
        back = np.clip(dy, -1, 1)                   # ... and the dependent (dorsal) lung
        lung |= inside
        dy_all = np.where(inside, back, dy_all)
        ggo = np.where(inside, f_ggo + 0.9 * periph + 0.35 * back + 1.4 * sev, ggo)
        cons = np.where(inside, f_cons + 0.8 * f_ggo + 0.6 * periph + 0.4 * back + 1.4 * sev, cons)
        if env > 0:
            # Crescent: thickness along the wall ~ how far back the direction points (0 at the sides).
            profile = np.clip((s - 0.3) / 0.7, 0, 1) * env
            eff = np.where(inside & (profile > 0), (rho - 1) / np.maximum(profile, 1e-6), eff)
    return _Slice(u=u, v=v, lung=lung, dy=dy_all, ggo=ggo, cons=cons, eff=eff, tex=_up(a.f_tex[z], n),
                  hu=_up(a.f_hu[z], n))


def _labels(sl: _Slice, t: dict[int, float]) -> np.ndarray:
    effusion = sl.eff > t[3]
    cons = sl.lung & ~effusion & (sl.cons > t[2])
    ggo = sl.lung & ~effusion & ~cons & (sl.ggo > t[1])
    return (ggo * 1 + cons * 2 + effusion * 3).astype(np.uint8)


def _kth_largest(values: np.ndarray, k: int) -> float:
    """A threshold ``t`` with ``(values > t).sum() == k`` (ties aside); +inf for k = 0, below all for k >= size."""
    if k <= 0 or values.size == 0:
        return math.inf
    if k >= values.size:
        return float(values.min()) - 1.0
    return float(np.partition(values, values.size - k - 1)[values.size - k - 1])


def _calibrate(a: _Anatomy, n: int) -> dict[int, float]:
    """Thresholds that give each class its target share of all pixels, on an ``n``² grid, in label priority."""
    slices = [_slice(a, z, n) for z in range(a.slices)]
    total = a.slices * n * n
    lung = np.stack([s.lung for s in slices])
    eff, cons, ggo = (np.stack([getattr(s, k) for s in slices]) for k in ("eff", "cons", "ggo"))
    t = {3: max(_kth_largest(eff[np.isfinite(eff)], round(a.targets[3] * total)), -_MAX_EFFUSION)}
    free = lung & ~(eff > t[3])
    t[2] = _kth_largest(cons[free], round(a.targets[2] * total))
    free &= ~(cons > t[2])
    t[1] = _kth_largest(ggo[free], round(a.targets[1] * total))
    return t


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _draw_discs(canvas: np.ndarray, cols: np.ndarray, rows: np.ndarray, radii: np.ndarray) -> None:
    import cv2

    for x, y, r in zip(np.round(cols * 16).astype(int), np.round(rows * 16).astype(int),
                       np.round(radii * 16).astype(int)):
        cv2.circle(canvas, (int(x), int(y)), int(r), 1.0, -1, cv2.LINE_8, 4)  # shift 4: 1/16-pixel positions


def _render(a: _Anatomy, z: int, n: int, t: dict[int, float], noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU image (float32, integral values) and labels (uint8) of slice ``z`` on an ``n``² grid."""
    import cv2

    sl = _slice(a, z, n)
    u, v = sl.u, sl.v
    labels = _labels(sl, t)
    to_px = n / 2.0  # image units -> pixels
    hu = np.full((n, n), -1000.0, np.float32)
    bx, by, bax, bay, bp = a.body[z].tolist()
    rho_b = (np.abs((u - bx) / bax) ** bp + np.abs((v - by) / bay) ** bp) ** (1 / bp)
    body = rho_b < 1
    hu[body] = (45 + 8 * sl.tex)[body]
    fat = body & (rho_b > 1 - float(a.fat[z]) * (1 + 0.3 * sl.hu))
    hu[fat] = (-100 + 10 * sl.tex)[fat]
    rho_m = _ellipse_rho(u, v, *a.medi[z].tolist())
    hu[rho_m < 1] = 38
    hu[(rho_m < 1) & (rho_m > 0.88)] = -80
    ox, oy, orad = a.aorta.tolist()
    hu[_ellipse_rho(u, v, ox, oy, orad, orad) < 1] = 42
    sx, sy, sr = a.spine.tolist()
    rho_s = _ellipse_rho(u, v, sx, sy, sr, sr)
    hu[rho_s < 1] = 220
    hu[(rho_s < 1) & (rho_s > 0.82)] = 650
    hu[_ellipse_rho(u, v, sx, sy + 1.5 * sr, 0.4 * sr, 0.4 * sr) < 1] = 15
    hu[_ellipse_rho(u, v, bx, by - 0.9 * bay, 0.05, 0.02) < 1] = 350  # sternum
    ribs = np.zeros((n, n), np.float32)
    for angle, wobble, phase in a.ribs.tolist():
        th = angle + wobble * math.sin(2 * np.pi * z / 40.0 + phase)  # ribs run obliquely: they drift along z
        cx, cy = bx + 0.86 * bax * math.cos(th), by + 0.86 * bay * math.sin(th)
        centre = (int(round(((cx + 1) * to_px - 0.5) * 16)), int(round(((cy + 1) * to_px - 0.5) * 16)))
        axes = (max(int(round(0.035 * to_px * 16)), 8), max(int(round(0.016 * to_px * 16)), 8))
        cv2.ellipse(ribs, centre, axes, math.degrees(th) + 90, 0, 360, 1.0, -1, cv2.LINE_8, 4)
    hu[(ribs > 0) & body] = 480
    lung = sl.lung
    hu[lung] = (-860 + 45 * sl.dy + 20 * sl.tex)[lung]
    free = lung & (labels != 3)
    # Soft-edged lesions: opacity 0.5 exactly at the label threshold, fading over a band around it.
    a_ggo = np.where(free, _smoothstep((sl.ggo - t[1]) / 0.3 + 0.5), 0)
    hu += a_ggo * (np.clip(-400 + 100 * sl.hu, -500, -300) - hu)
    a_cons = np.where(free, _smoothstep((sl.cons - t[2]) / 0.2 + 0.5), 0)
    hu += a_cons * (np.clip(50 * sl.hu, -50, 50) - hu)
    vessels = np.zeros((n, n), np.float32)
    for L in a.lungs:
        vs = L.vessels
        on = (vs[:, 0] <= z) & (z < vs[:, 0] + vs[:, 1])
        age = z - vs[on, 0]
        dx, dy = vs[on, 2] + vs[on, 4] * age, vs[on, 3] + vs[on, 5] * age
        cols = ((L.cx[z] + L.side * dx * L.ax[z]) + 1) * to_px - 0.5
        rows = ((L.cy[z] + dy * L.ay[z]) + 1) * to_px - 0.5
        _draw_discs(vessels, cols, rows, vs[on, 6] * to_px)
    vessel = free & (vessels > 0)
    hu[vessel] += 0.9 * (35 - hu[vessel])
    effusion = labels == 3
    hu[effusion] = (float(a.effusion_hu[z]) + 5 * sl.tex)[effusion]
    hu = cv2.GaussianBlur(hu, (0, 0), _BLUR_PX, borderType=cv2.BORDER_REPLICATE)  # partial-volume edges
    hu += noise
    return np.round(hu).astype(np.float32), labels


def _noise_kernel_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after ``cv2.GaussianBlur(sigma)``, to rescale it."""
    import cv2

    k = cv2.getGaussianKernel(2 * int(math.ceil(4 * sigma)) + 1, sigma).ravel()  # what GaussianBlur(0, 0) uses
    return float((k ** 2).sum())


# ------------------------------------------------------------------------------------------------------- public
def check_phantom_args(slices: int, size: int, seed: int) -> None:
    """Raise a one-line :class:`UserError` for a slice count, size or seed the generator cannot use."""
    for name, value in (("slices", slices), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"phantom {name} must be an integer, got {value!r}")
    if slices < MIN_SLICES:
        raise UserError(f"phantom slices must be >= {MIN_SLICES} (the covid loader needs a training, a validation "
                        f"and a test slice), got {slices}")
    if size < MIN_SIZE:
        raise UserError(f"phantom size must be >= {MIN_SIZE} pixels (the networks downsample by 32), got {size}")
    if seed < 0:
        raise UserError(f"phantom seed must be >= 0, got {seed}")
    if slices * size * size > MAX_VOXELS:
        raise UserError(f"phantom of {slices} slices of {size}² has {slices * size * size:,} voxels, more than "
                        f"{MAX_VOXELS:,} (~1 GiB per volume); use fewer slices or a smaller size")


def generate_covid_phantom(slices: int = 100, size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Upright slices of a synthetic chest CT: HU ``float32 [slices, size, size]`` and labels ``uint8`` (0-3).

    The slices are as :func:`axial_kd_tf.data.covid.to_slices` returns them (before intensity scaling); see the
    module docstring for the anatomy and the class shares.
    """
    import cv2

    check_phantom_args(slices, size, seed)
    rng = np.random.default_rng(seed)
    anatomy = _anatomy(rng, slices)
    thresholds = _calibrate(anatomy, min(size, _CALIBRATION_SIZE))
    gain = _noise_kernel_gain(0.6)
    images = np.empty((slices, size, size), np.float32)
    masks = np.empty((slices, size, size), np.uint8)
    for z in range(slices):
        white = rng.standard_normal((size, size), dtype=np.float32)  # drawn last: the anatomy ignores the size
        noise = cv2.GaussianBlur(white, (0, 0), 0.6, borderType=cv2.BORDER_REFLECT) * (_NOISE_HU / gain)
        images[z], masks[z] = _render(anatomy, z, size, thresholds, noise)
    return images, masks


def _to_volume(slices: np.ndarray) -> np.ndarray:
    """``[Z, H, W]`` upright slices -> the MedSeg ``[X, Y, Z]`` layout (``vol[:, :, i] = slice_i.T``), a view."""
    return slices.transpose(2, 1, 0)


def _save_nifti(path: Path, volume: np.ndarray, spacing: float) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(volume, np.diag([spacing, spacing, 5.0, 1.0]))
    image.set_data_dtype(np.float32)  # MedSeg stores both the image and the mask as floats
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def _check_target(root: Path, overwrite: bool) -> None:
    from axial_kd_tf.data.io import default_data_root

    if root.exists() and not root.is_dir():
        raise UserError(f"'{root}' exists and is not a folder; choose another --dir")
    try:
        is_cache = root.resolve() == default_data_root("covid").resolve()
    except OSError:
        is_cache = False
    if is_cache:
        raise UserError(f"'{root}' is the download cache of the real MedSeg data (data.root: null reads it); "
                        f"write the phantom to another folder and point data.root at it")
    if root.is_dir():
        present = sorted(p.name for p in root.iterdir())
        foreign = [name for name in present if name not in (IMAGE_FILE, MASK_FILE, INFO_FILE)]
        if present and not overwrite:
            raise UserError(f"folder '{root}' exists and is not empty ({', '.join(present[:3])}"
                            f"{', ...' if len(present) > 3 else ''}); pass --overwrite to replace a phantom, "
                            f"or choose a new or empty --dir")
        if foreign or (present and INFO_FILE not in present):
            shown = foreign or present
            raise UserError(f"folder '{root}' holds files the phantom generator did not write "
                            f"({', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}); it is not replaced even "
                            f"with --overwrite: choose a new or empty --dir")


def write_covid_phantom(root: str | Path, slices: int = 100, size: int = 512, seed: int = 0, *,
                        overwrite: bool = False) -> Path:
    """Write a synthetic MedSeg-layout CT (``tr_im.nii.gz``, ``tr_mask.nii.gz``, ``phantom.json``) to ``root``.

    ``root`` must be new or empty; with ``overwrite`` it may also hold an earlier phantom (only the files this
    function writes), which is then replaced. The folder is built beside ``root`` and renamed into place, so a
    failure or Ctrl-C leaves nothing half-written. Returns ``root``. Bad arguments raise a one-line UserError.
    """
    from axial_kd_tf.io_utils import atomic_path

    root = Path(root).expanduser()
    check_phantom_args(slices, size, seed)
    _check_target(root, overwrite)
    images, masks = generate_covid_phantom(slices, size, seed)
    counts = np.bincount(masks.ravel(), minlength=len(CLASS_NAMES))
    info = {
        "generator": "axial_kd_tf.data.phantom.write_covid_phantom",
        "note": "synthetic CT phantom in the MedSeg COVID-19 layout; not real data, its scores say nothing about "
                "real CT",
        "slices": slices, "size": size, "seed": seed,
        "class_names": list(CLASS_NAMES),
        "class_shares": [float(c) / masks.size for c in counts],
        "slices_with_class": [int(np.any(masks == c, axis=(1, 2)).sum()) for c in range(len(CLASS_NAMES))],
        "hu_range": [float(images.min()), float(images.max())],
    }
    spacing = 360.0 / size  # a 36 cm field of view, as for a chest CT
    try:
        with atomic_path(root, is_dir=True) as tmp:
            tmp.mkdir()
            _save_nifti(tmp / IMAGE_FILE, _to_volume(images), spacing)
            _save_nifti(tmp / MASK_FILE, _to_volume(masks), spacing)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the phantom to '{root}' ({type(exc).__name__}: {exc.strerror or exc}); "
                        f"check the folder's permissions and free space") from None
    return root


def read_info(root: str | Path) -> Optional[dict]:
    """The ``phantom.json`` of a phantom folder, or None if there is none (e.g. a real MedSeg copy)."""
    path = Path(root) / INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
