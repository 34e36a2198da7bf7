"""Procedurally generated ssTEM-like segmentation data ("quickstart" dataset).

The paper's real data set is serial-section TEM of the *Drosophila* ventral nerve cord with five classes, in this
order: 0 membrane, 1 mitochondria, 2 synapse, 3 glia/extracellular, 4 intracellular (pixel shares roughly 17 %,
5 %, 0.6 %, 3 %, 74 %). This module draws a look-alike that needs no download, runs offline and produces a few
hundred 128x128 samples in a few seconds on a laptop CPU (~10-15 ms per sample), so that every training /
distillation / export path can be exercised anywhere.

How a sample is drawn (:func:`generate_sample`):

* **Cells** -- an additively weighted Voronoi tessellation of jittered seed points (cell sizes vary), evaluated on a
  smoothly warped grid so that boundaries are wavy rather than straight. Seeds also lie outside the frame, so the
  border cells are cut off as in a real crop.
* **Membranes (0)** -- dark bands of uniform (per-image random, 2-4 px) thickness along every boundary between two
  cells, i.e. where the nearest and second-nearest seed are almost equidistant.
* **Glia / extracellular (3)** -- a few *whole* Voronoi cells plus widened, brighter extracellular gaps (outlined by
  membrane) at some three-cell junctions.
* **Mitochondria (1)** -- dark-ish ellipses placed wholly inside intracellular cells, with transverse stripes
  (cristae) and a darker outer membrane.
* **Synapses (2)** -- short, very dark, thickened stretches of membrane with a cloud of small vesicles on the
  presynaptic side (the vesicles themselves are intracellular).
* **Intracellular (4)** -- everything else: cytoplasm with fine granular texture and scattered vesicle-like dots.

The image is then blurred (``cv2.GaussianBlur``), given a random global brightness / contrast change and a gentle
linear illumination gradient, corrupted with Gaussian noise and clipped to [0, 1].

Why global context matters: a glia cell differs from an intracellular cell only in its *interior statistics* -- it
is 0.03-0.05 brighter (before the contrast change), has a smoother, coarser texture and contains no mitochondria or
vesicles. Per pixel that shift is below the noise level (pixel noise plus texture has a standard deviation of ~0.07),
and the per-image brightness change (up to +-0.12, plus a contrast factor of 0.75-1.25) is larger than the shift
itself, so neither the absolute intensity nor a 5x5 patch decides the class; a network has to compare a whole cell
with its neighbours (which is what the axial-attention teacher can do and a small CNN cannot). The illumination
gradient is kept far below the glia shift between neighbouring cells so that this comparison stays valid. (The
junction gaps, in contrast, are locally visible; they are a small share of the class.) Likewise membranes,
mitochondria edges and synapses are all "dark" locally and are told apart by shape and surroundings (band vs.
ellipse, thickness, nearby vesicle cloud) rather than by a single intensity threshold.

Everything is deterministic given the generator state: :func:`make_arrays` seeds sample ``i`` with
``np.random.default_rng([seed, i])``, so growing ``num`` never changes earlier samples, and :func:`load_split`
derives a distinct seed per split so that train / val / test never share a sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_path

__all__ = ["CLASS_NAMES", "generate_sample", "make_arrays", "load_split"]

CLASS_NAMES: tuple[str, ...] = ("membrane", "mitochondria", "synapse", "glia_extracellular", "intracellular")

MEMBRANE, MITOCHONDRIA, SYNAPSE, GLIA, INTRACELLULAR = range(5)

_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
_MIN_SIZE = 16


def _smooth_field(rng: np.random.Generator, size: int, knots: int) -> np.ndarray:
    """A smooth random field of shape ``[size, size]`` with unit-ish amplitude (cubic upsampling of a coarse grid)."""
    coarse = rng.standard_normal((knots, knots)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Band-limited noise with standard deviation ~1."""
    noise = rng.standard_normal((size, size), dtype=np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), sigma)
    return tex / max(float(tex.std()), 1e-6)


def _tessellate(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Additively weighted Voronoi cells on a smoothly warped grid.

    Returns ``labels`` (int32 ``[size, size]``, index of the nearest seed), ``top`` (float32 ``[size, size, 3]``:
    the three smallest weighted distances, ascending), ``dist`` (float32 ``[size, size, n]``: all weighted
    distances) and ``seeds`` (float32 ``[n, 2]`` seed positions as (y, x)).
    """
    spacing = rng.uniform(26.0, 36.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    amp = rng.uniform(2.0, 5.0)
    knots = max(3, int(round(size / 32)) + 2)
    py = yy + amp * _smooth_field(rng, size, knots)
    px = xx + amp * _smooth_field(rng, size, knots)

    # Jittered, row-offset (hexagon-like) grid that extends one spacing beyond the frame.
    coords = np.arange(-spacing, size + spacing, spacing, dtype=np.float32)
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    gx = gx + (np.arange(len(coords))[:, None] % 2) * spacing / 2
    seeds = np.stack([gy.ravel(), gx.ravel()], axis=1)
    seeds += rng.uniform(-0.38, 0.38, size=seeds.shape).astype(np.float32) * spacing
    # Drop seeds that crowd a neighbour: two close seeds would make a sliver cell that is all membrane.
    too_close = np.hypot(*(seeds[:, None, :] - seeds[None, :, :]).transpose(2, 0, 1)) < 0.55 * spacing
    keep = np.zeros(len(seeds), bool)
    for i in rng.permutation(len(seeds)):
        keep[i] = not (keep & too_close[i]).any()
    seeds = seeds[keep]
    weights = rng.uniform(0.0, 0.3, size=len(seeds)).astype(np.float32) * spacing

    dist = py[..., None] - seeds[:, 0]  # in-place arithmetic: this [size, size, n_seeds] array dominates runtime
    dist *= dist
    dx = px[..., None] - seeds[:, 1]
    dx *= dx
    dist += dx
    np.sqrt(dist, out=dist)
    dist -= weights
    labels = dist.argmin(axis=-1).astype(np.int32)
    top = np.sort(np.partition(dist, 2, axis=-1)[..., :3], axis=-1)
    return labels, top, dist, seeds


def _boundary_distance(diff: np.ndarray) -> np.ndarray:
    """Turn ``d2 - d1`` (second-nearest minus nearest seed distance) into a distance in pixels to the boundary.

    ``d2 - d1`` is zero on a boundary and grows with a slope that depends on the seed geometry and the warp; far
    from both seeds it grows slowly, which would give wedge-shaped membranes. Dividing by the local slope (the
    larger one-sided difference per axis, so the kink on the boundary itself does not cancel out) makes the
    membrane width uniform.
    """
    pad = np.pad(diff, 1, mode="edge")
    gy = np.maximum(np.abs(pad[2:, 1:-1] - diff), np.abs(diff - pad[:-2, 1:-1]))
    gx = np.maximum(np.abs(pad[1:-1, 2:] - diff), np.abs(diff - pad[1:-1, :-2]))
    return diff / np.maximum(np.sqrt(gy * gy + gx * gx), 0.25)


def _ellipse_patch(size: int, cy: int, cx: int, axes: tuple[int, int], angle: float,
                   thickness: int = -1) -> tuple[tuple[slice, slice], np.ndarray]:
    """Rasterise an ellipse into its (frame-clipped) bounding box; returns the box slices and a bool patch."""
    r = max(axes) + 2
    y0, y1 = max(cy - r, 0), min(cy + r + 1, size)
    x0, x1 = max(cx - r, 0), min(cx + r + 1, size)
    canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(canvas, (cx - x0, cy - y0), axes, angle, 0, 360, 1, thickness)
    return (slice(y0, y1), slice(x0, x1)), canvas.astype(bool)


def generate_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic EM-like sample.

    Args:
        rng: numpy random generator; the sample is a deterministic function of its state.
        size: side length in pixels (the physical scale is fixed, so larger images contain more cells).

    Returns:
        ``(image, mask)``: ``image`` float32 ``[size, size, 1]`` in [0, 1]; ``mask`` uint8 ``[size, size]`` with
        class ids 0..4 in the order of :data:`CLASS_NAMES`.
    """
    size = int(size)
    if size < _MIN_SIZE:
        raise UserError(f"synthetic image size must be >= {_MIN_SIZE}, got {size}")
    shape = (size, size)
    area = float(size * size)

    labels, top, dist, seeds = _tessellate(rng, size)
    gap12 = _boundary_distance(top[..., 1] - top[..., 0])  # pixels to the nearest cell boundary
    gap13 = top[..., 2] - top[..., 0]  # small near three-cell junctions

    # ---- base intensities (before global photometric change) --------------------------------------------------
    cyto = float(rng.uniform(0.56, 0.66))
    glia_delta = float(rng.uniform(0.03, 0.05))
    n_seeds = len(seeds)
    cell_offset = rng.normal(0.0, 0.012, size=n_seeds).astype(np.float32)

    mask = np.full(shape, INTRACELLULAR, np.uint8)
    image = cyto + cell_offset[labels]

    # ---- glia: whole cells -------------------------------------------------------------------------------------
    cell_area = np.bincount(labels.ravel(), minlength=n_seeds)
    present = np.flatnonzero(cell_area)
    target = rng.uniform(0.01, 0.04) * area
    glia_cells = np.zeros(n_seeds, bool)
    chosen = 0.0
    for lab in rng.permutation(present):
        if chosen >= target:
            break
        if chosen + cell_area[lab] <= 1.6 * target:
            glia_cells[lab] = True
            chosen += cell_area[lab]
    is_glia = glia_cells[labels]
    mask[is_glia] = GLIA
    image = image + is_glia * glia_delta
    # Texture: fine granules in cytoplasm, smoother and coarser in glia.
    image = image + np.where(is_glia, 0.02 * _texture(rng, size, 2.5), 0.04 * _texture(rng, size, 0.9))

    # ---- membranes ------------------------------------------------------------------------------------------
    width = float(rng.uniform(2.2, 3.6))  # membrane thickness in pixels
    membrane = gap12 < width / 2
    mem_level = cyto - float(rng.uniform(0.30, 0.38))

    # ---- extracellular gaps at some three-cell junctions (override membranes, with a membrane outline) ------
    gap_r = float(rng.uniform(3.0, 6.0))
    junction = (gap13 < gap_r).astype(np.uint8)
    n_comp, comp = cv2.connectedComponents(junction, connectivity=8)
    keep = rng.random(n_comp) < 0.35
    keep[0] = False
    gaps = keep[comp]
    # Outline: a membrane-thick ring around each kept gap.
    ring = max(1, int(round(width / 2)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    gap_outline = cv2.dilate(gaps.astype(np.uint8), kernel).astype(bool) & ~gaps
    membrane = (membrane | gap_outline) & ~gaps
    mask[membrane] = MEMBRANE
    mask[gaps] = GLIA
    image = np.where(membrane, mem_level + 0.5 * (image - cyto), image)
    image = np.where(gaps, cyto + glia_delta + 0.06, image)

    interior = (mask == INTRACELLULAR) & (gap12 > width / 2 + 1.0)

    # ---- mitochondria --------------------------------------------------------------------------------------
    mito_target = rng.uniform(0.03, 0.08) * area
    mito_area = 0.0
    mito = np.zeros(shape, bool)
    for _ in range(80):
        cand = np.flatnonzero(interior)
        if mito_area >= mito_target or cand.size == 0:
            break
        cy, cx = divmod(int(cand[rng.integers(cand.size)]), size)
        a = int(rng.integers(4, 11))
        b = int(rng.integers(2, min(a, 5) + 1))
        ang = float(rng.uniform(0.0, 180.0))
        sl, ell = _ellipse_patch(size, cy, cx, (a, b), ang)
        if (ell & ~(interior[sl] & (labels[sl] == labels[cy, cx]))).any():
            continue  # must lie wholly inside one cell, clear of membranes and other mitochondria
        _, outline = _ellipse_patch(size, cy, cx, (a, b), ang, thickness=1)
        py, px = np.mgrid[sl]
        theta = np.deg2rad(ang)
        u = (px - cx) * np.cos(theta) + (py - cy) * np.sin(theta)  # coordinate along the long axis
        level = cyto - float(rng.uniform(0.17, 0.25))
        cristae = level + 0.07 * np.sin(2 * np.pi * u / rng.uniform(3.0, 5.0) + rng.uniform(0, 2 * np.pi))
        region = image[sl]
        region[ell] = np.where(outline, level - 0.1, cristae)[ell]
        mask[sl][ell] = MITOCHONDRIA
        mito[sl] |= ell
        mito_area += float(ell.sum())
        interior[sl] &= ~cv2.dilate(ell.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)

    # ---- vesicle-like dots (intracellular distractors) --------------------------------------------------------
    dots = np.zeros(shape, np.uint8)

    def _vesicle_cloud(cy: float, cx: float, n: int, spread: float, cell: int) -> None:
        for _ in range(n):
            vy = int(round(cy + rng.normal(0.0, spread)))
            vx = int(round(cx + rng.normal(0.0, spread)))
            if 0 <= vy < size and 0 <= vx < size and interior[vy, vx] and labels[vy, vx] == cell:
                cv2.circle(dots, (vx, vy), int(rng.integers(1, 3)), 1, 1)

    for _ in range(int(rng.poisson(3.0 * area / 128**2))):
        cand = np.flatnonzero(interior)
        if cand.size == 0:
            break
        cy, cx = divmod(int(cand[rng.integers(cand.size)]), size)
        _vesicle_cloud(cy, cx, int(rng.integers(3, 9)), 3.0, int(labels[cy, cx]))

    # ---- synapses: thick, very dark stretches of membrane between two intracellular cells --------------------
    syn = np.zeros(shape, bool)
    syn_ok = membrane & (gap12 < 0.5) & ~glia_cells[labels]
    syn_ok &= ~cv2.dilate(gaps.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    n_syn = int(rng.poisson(3.5 * area / 128**2))
    placed = 0
    for _ in range(4 * n_syn):
        cand = np.flatnonzero(syn_ok)
        if placed >= n_syn or cand.size == 0:
            break
        cy, cx = divmod(int(cand[rng.integers(cand.size)]), size)
        l1 = int(labels[cy, cx])
        l2 = int(np.argsort(dist[cy, cx])[1])
        syn_ok[max(cy - 1, 0):cy + 2, max(cx - 1, 0):cx + 2] = False
        if glia_cells[l2] or not (1 <= cy < size - 1 and 1 <= cx < size - 1):
            continue
        # Membrane normal from the signed distance difference (accounts for the grid warp); points into cell l1.
        f = dist[cy - 1:cy + 2, cx - 1:cx + 2, l2] - dist[cy - 1:cy + 2, cx - 1:cx + 2, l1]
        normal = np.array([f[2, 1] - f[0, 1], f[1, 2] - f[1, 0]], np.float64)
        normal /= max(float(np.linalg.norm(normal)), 1e-6)
        along = float(np.degrees(np.arctan2(normal[0], normal[1]))) + 90.0
        sl, ell = _ellipse_patch(size, cy, cx, (int(rng.integers(4, 8)), 2), along)
        ell &= ~mito[sl]
        syn[sl] |= ell
        placed += 1
        syn_ok &= ~cv2.dilate(syn.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        # Vesicle cloud on the presynaptic side (randomly one of the two cells).
        sign, pre = (1.0, l1) if rng.random() < 0.5 else (-1.0, l2)
        _vesicle_cloud(cy + 6.0 * sign * normal[0], cx + 6.0 * sign * normal[1], int(rng.integers(6, 12)), 2.5, pre)

    dots_b = dots.astype(bool) & (mask == INTRACELLULAR)
    image = np.where(dots_b, image - 0.13, image)
    mask[syn] = SYNAPSE
    image = np.where(syn, cyto - float(rng.uniform(0.46, 0.52)), image)

    # ---- optics: blur, global photometric change, illumination, noise ----------------------------------------
    image = image.astype(np.float32)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.7, 1.2))
    contrast = float(rng.uniform(0.75, 1.25))
    brightness = float(rng.uniform(-0.12, 0.12))
    image = (image - 0.5) * contrast + 0.5 + brightness
    # Gentle linear illumination gradient: at most ~0.04 across the frame, so neighbouring cells differ by far
    # less than the glia shift and "brighter than the neighbours" stays a valid (but non-local) cue.
    tilt = rng.uniform(-0.02, 0.02, size=2).astype(np.float32) / size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    image = image + tilt[0] * yy + tilt[1] * xx
    image = image + rng.normal(0.0, rng.uniform(0.045, 0.075), size=shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return image[..., None], mask


def make_arrays(num: int, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num`` samples; sample ``i`` depends only on ``(seed, i)``.

    Returns:
        images float32 ``[num, size, size, 1]`` in [0, 1] and masks uint8 ``[num, size, size]``.
    """
    num, size, seed = int(num), int(size), int(seed)
    if num < 0:
        raise UserError(f"number of synthetic samples must be >= 0, got {num}")
    if seed < 0:
        raise UserError(f"synthetic seed must be >= 0, got {seed}")
    if size < _MIN_SIZE:
        raise UserError(f"synthetic image size must be >= {_MIN_SIZE}, got {size}")
    images = np.empty((num, size, size, 1), np.float32)
    masks = np.empty((num, size, size), np.uint8)
    for i in range(num):
        images[i], masks[i] = generate_sample(np.random.default_rng([seed, i]), size)
    return images, masks


def load_split(split: str, num: int, size: int, seed: int,
               cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of one split ("train", "val" or "test"), optionally cached as ``.npz``.

    Each split uses its own derived seed (``3 * seed + {train: 0, val: 1, test: 2}``), so splits never share samples
    and different ``seed`` values never collide. With ``cache_dir`` the arrays are stored atomically in
    ``<cache_dir>/synthetic_<split>_<num>_<size>_<seed>.npz`` and read back on later calls.
    """
    if split not in _SPLIT_OFFSETS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(_SPLIT_OFFSETS)}")
    num, size, seed = int(num), int(size), int(seed)
    if seed < 0:
        raise UserError(f"synthetic seed must be >= 0, got {seed}")
    split_seed = 3 * seed + _SPLIT_OFFSETS[split]
    if cache_dir is None:
        return make_arrays(num, size, split_seed)

    path = Path(cache_dir) / f"synthetic_{split}_{num}_{size}_{seed}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                images, masks = data["images"], data["masks"]
        except Exception as exc:  # corrupt or foreign file
            raise UserError(f"cannot read synthetic cache {path} ({exc}); delete it to regenerate") from exc
        if images.shape != (num, size, size, 1) or masks.shape != (num, size, size):
            raise UserError(f"synthetic cache {path} has unexpected shapes; delete it to regenerate")
        return images.astype(np.float32, copy=False), masks.astype(np.uint8, copy=False)

    images, masks = make_arrays(num, size, split_seed)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object stops numpy from appending ".npz" to the temp name
            np.savez_compressed(fh, images=images, masks=masks)
    return images, masks
