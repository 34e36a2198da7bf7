"""Qualitative figures: colour-coded masks and input | ground truth | prediction panels, written as PNG.

All images handled here are RGB ``uint8`` ``[H, W, 3]``; conversion to OpenCV's BGR happens only inside
:func:`write_png`. Label values outside the palette (e.g. an ``ignore_index`` of 255) are drawn black by
:func:`colorize`; labels outside ``[0, len(class_names))`` are left uncoloured (the input shows through) by
:func:`overlay_panel`, and so is a class named ``background`` (:func:`background_classes`), which would otherwise
tint the whole image.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_bytes

__all__ = [
    "DEFAULT_PALETTE",
    "palette_for",
    "colorize",
    "to_uint8_rgb",
    "overlay_panel",
    "panel_legend",
    "background_classes",
    "write_png",
]

# 20 distinct RGB colours. The first five follow the EM classes membrane / mitochondria / synapse / glia /
# intracellular; the rest are from Sasha Trubetskoy's "20 distinct colours" list.
DEFAULT_PALETTE: np.ndarray = np.array(
    [
        (255, 225, 25),  # 0 membrane: yellow (thin structures need a bright colour)
        (230, 25, 75),  # 1 mitochondria: red
        (70, 240, 240),  # 2 synapse: cyan
        (60, 180, 75),  # 3 glia: green
        (0, 130, 200),  # 4 intracellular: blue
        (245, 130, 48),  # orange
        (145, 30, 180),  # purple
        (240, 50, 230),  # magenta
        (210, 245, 60),  # lime
        (250, 190, 212),  # pink
        (0, 128, 128),  # teal
        (220, 190, 255),  # lavender
        (170, 110, 40),  # brown
        (255, 250, 200),  # beige
        (128, 0, 0),  # maroon
        (170, 255, 195),  # mint
        (128, 128, 0),  # olive
        (255, 215, 180),  # apricot
        (0, 0, 128),  # navy
        (128, 128, 128),  # grey
    ],
    dtype=np.uint8,
)
DEFAULT_PALETTE.setflags(write=False)

_SEPARATOR_RGB = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def palette_for(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 palette: :data:`DEFAULT_PALETTE`, extended with golden-ratio hues past 20."""
    n = int(num_classes)
    if n <= len(DEFAULT_PALETTE):
        return DEFAULT_PALETTE[:n].copy()
    extra = []
    for i in range(n - len(DEFAULT_PALETTE)):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2))
        extra.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.concatenate([DEFAULT_PALETTE, np.asarray(extra, dtype=np.uint8)], axis=0)


def _as_palette(palette, min_classes: int = 0) -> np.ndarray:
    if palette is None:
        return palette_for(min_classes)
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise UserError(f"palette must be a list of RGB triples ([N, 3]), got shape {pal.shape}")
    if pal.dtype != np.uint8:
        if pal.size and (pal.min() < 0 or pal.max() > 255):
            raise UserError("palette values must lie in [0, 255]")
        pal = pal.astype(np.uint8)
    if len(pal) < min_classes:
        raise UserError(f"palette has {len(pal)} colours but {min_classes} classes need one each")
    return pal


def _as_mask(mask, what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    elif m.ndim == 3 and np.issubdtype(m.dtype, np.floating):
        m = np.argmax(m, axis=-1)  # logits / probabilities [H, W, K]
    if m.ndim != 2:
        raise UserError(f"{what} must be an [H, W] label map (or [H, W, K] scores), got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        if not np.issubdtype(m.dtype, np.bool_) and not np.all(np.isfinite(m)):
            raise UserError(f"{what} holds non-finite values")
        m = m.astype(np.int64)
    return m


def colorize(mask, palette=None) -> np.ndarray:
    """Colour an ``[H, W]`` integer label map: uint8 ``[H, W, 3]``; labels outside the palette are black.

    ``palette=None`` uses the 20-colour :data:`DEFAULT_PALETTE` (so an ignore label such as 255 stays black); pass
    ``palette_for(num_classes)`` for more classes.
    """
    m = _as_mask(mask)
    pal = DEFAULT_PALETTE if palette is None else _as_palette(palette)
    out = np.zeros(m.shape + (3,), dtype=np.uint8)
    inside = (m >= 0) & (m < len(pal))
    out[inside] = pal[m[inside]]
    return out


def to_uint8_rgb(image) -> np.ndarray:
    """Convert an image to uint8 RGB ``[H, W, 3]`` for display.

    * ``[H, W]`` / ``[H, W, 1]`` greyscale is repeated to 3 channels; ``[H, W, 3]`` is RGB; ``[H, W, 4]`` drops alpha;
      any other channel count (e.g. stacked neighbouring slices) shows the middle channel as greyscale.
    * uint8 is kept as is; other integer images inside ``[0, 255]`` are cast; floats inside ``[0, 1]`` are scaled by
      255; anything else is min-max normalised to ``[0, 255]`` (a constant image becomes black). NaN/inf count as 0.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise UserError(f"image must be [H, W] or [H, W, C], got shape {img.shape}")
    c = img.shape[-1]
    if c == 4:
        img = img[..., :3]
    elif c not in (1, 3):
        img = img[..., c // 2 : c // 2 + 1]
    if img.dtype == np.uint8:
        out = img
    else:
        if np.issubdtype(img.dtype, np.bool_):
            img = img.astype(np.float64)
        f = np.nan_to_num(img.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 0.0)
        if np.issubdtype(img.dtype, np.integer) and lo >= 0 and hi <= 255:
            out = f.astype(np.uint8)
        elif lo >= 0.0 and hi <= 1.0:
            out = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
        elif hi > lo:
            out = np.clip(np.rint((f - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
        else:
            out = np.zeros(f.shape, dtype=np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


#: Class names (lower case) drawn transparent in overlays: the image shows through, as for unlabelled pixels.
BACKGROUND_NAMES = ("background", "_background_", "bg")


def background_classes(class_names: Sequence[str]) -> tuple[int, ...]:
    """Indices of the classes named background (:data:`BACKGROUND_NAMES`, any case): left uncoloured in overlays.

    By name, not by index: class 0 is the background of a CT slice but the membrane of the ssTEM set.
    """
    return tuple(i for i, n in enumerate(class_names) if str(n).strip().lower() in BACKGROUND_NAMES)


def _blend(rgb: np.ndarray, mask: np.ndarray, pal: np.ndarray, alpha: float,
           transparent: Sequence[int] = ()) -> np.ndarray:
    out = rgb.astype(np.float32)
    inside = (mask >= 0) & (mask < len(pal))
    for cls in transparent:
        inside &= mask != cls
    colours = pal[mask[inside]].astype(np.float32)
    out[inside] = (1.0 - alpha) * out[inside] + alpha * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fit_font(text: str, max_width: int, max_height: int) -> tuple[float, int]:
    """Largest Hershey font scale in [0.25, 0.6] whose text fits ``max_width`` x ``max_height`` px, and thickness."""
    scale = 0.6
    while scale > 0.25:
        (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
        if w <= max_width and h + base <= max_height:
            break
        scale = round(scale - 0.05, 2)
    return scale, 1


def _draw_label(tile: np.ndarray, text: str, scale: float, thick: int = 1) -> None:
    """Draw ``text`` in the top-left corner on a translucent dark box (in place)."""
    h, w = tile.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = 3
    x0, y0 = 2, 2
    x1, y1 = min(w - 1, x0 + tw + 2 * pad), min(h - 1, y0 + th + base + 2 * pad)
    roi = tile[y0:y1, x0:x1].astype(np.float32)
    tile[y0:y1, x0:x1] = (roi * 0.35).astype(np.uint8)  # translucent dark box
    cv2.putText(tile, text, (x0 + pad, y0 + pad + th), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)


def overlay_panel(
    image,
    ground_truth,
    predictions: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    alpha: float = 0.5,
    title: bool = True,
    palette=None,
    legend: bool = False,
    transparent: Sequence[int] | None = None,
) -> np.ndarray:
    """Side-by-side panel ``input | ground truth | prediction ...`` as uint8 RGB ``[H, W * (2 + len(predictions)), 3]``.

    ``image`` is anything :func:`to_uint8_rgb` accepts; ``ground_truth`` and each prediction are ``[H, W]`` label maps
    (``[H, W, K]`` float scores are arg-maxed), drawn in dict order. Masks are alpha-blended over the input
    (``alpha`` = mask opacity); labels outside ``[0, len(class_names))`` (e.g. ignored pixels) are left uncoloured.
    With ``title`` each column gets a small text label ("input", "ground truth", then the dict keys). Columns are
    split by a 2 px white line drawn over the pixels at each boundary, so the width stays exactly ``W * n_columns``.
    With ``legend=True`` a :func:`panel_legend` strip is appended below (the height grows by the strip's height).
    ``transparent``: class ids left uncoloured (default: :func:`background_classes`; ``()`` colours every class).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise UserError(f"overlay alpha must lie in [0, 1], got {alpha}")
    names = [str(n) for n in class_names]
    if not names:
        raise UserError("overlay_panel needs at least one class name")
    pal = _as_palette(palette, len(names))[: len(names)]  # labels >= len(class_names) stay uncoloured
    rgb = to_uint8_rgb(image)
    h, w = rgb.shape[:2]
    masks = [("ground truth", _as_mask(ground_truth, "ground_truth"))]
    for key, pred in predictions.items():
        masks.append((str(key), _as_mask(pred, f"prediction {key!r}")))
    for what, m in masks:
        if m.shape != (h, w):
            raise UserError(f"{what} mask has shape {m.shape} but the image is {(h, w)}")
    clear = background_classes(names) if transparent is None else tuple(int(c) for c in transparent)
    tiles = [rgb.copy()] + [_blend(rgb, m, pal, float(alpha), clear) for _, m in masks]
    labels = ["input"] + [what for what, _ in masks]
    if title:
        # one font size for every column: the largest at which the longest label fits a tile
        scale = min(_fit_font(text, max(w - 8, 1), max(h // 4, 10))[0] for text in labels)
        for tile, text in zip(tiles, labels):
            _draw_label(tile, text, scale)
    panel = np.concatenate(tiles, axis=1)
    for i in range(1, len(tiles)):
        x = i * w
        panel[:, max(x - 1, 0) : x + 1] = _SEPARATOR_RGB
    if legend:
        panel = np.concatenate([panel, panel_legend(names, pal, width=panel.shape[1], transparent=clear)], axis=0)
    return np.ascontiguousarray(panel)


def panel_legend(class_names: Sequence[str], palette=None, width: int | None = None,
                 transparent: Sequence[int] | None = None) -> np.ndarray:
    """Legend strip (uint8 RGB ``[h, width, 3]``, dark background): a colour swatch and the name of each class.

    Classes in ``transparent`` (default: :func:`background_classes`) get a hollow swatch and ``(clear)``: overlays
    leave them uncoloured. Entries wrap onto extra rows when they do not fit ``width`` (default: just wide enough for
    one row).
    """
    clear = set(background_classes(class_names) if transparent is None else (int(c) for c in transparent))
    names = [f"{n} (clear)" if i in clear else str(n) for i, n in enumerate(class_names)]
    pal = _as_palette(palette, len(names))
    scale, thick = 0.4, 1
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    sw, gap, pad = th + base, 12, 4
    row_h = sw + 2 * pad
    entries = [(n, cv2.getTextSize(n, _FONT, scale, thick)[0][0] + sw + 6) for n in names]
    if width is None:
        width = max(1, pad + sum(ew + gap for _, ew in entries))
    width = int(width)
    # layout
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = pad
    for c, (n, ew) in enumerate(entries):
        if rows[-1] and x + ew > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((c, n, x))
        x += ew + gap
    strip = np.full((row_h * len(rows), width, 3), 32, dtype=np.uint8)
    for r, row in enumerate(rows):
        y0 = r * row_h + pad
        for c, n, x0 in row:
            colour = tuple(int(v) for v in pal[c])
            hollow = c in clear  # uncoloured in the overlays: an outline, not the palette colour
            cv2.rectangle(strip, (x0, y0), (x0 + sw - 1, y0 + sw - 1), (200, 200, 200) if hollow else colour,
                          thickness=1 if hollow else -1)
            cv2.putText(strip, n, (x0 + sw + 4, y0 + th), _FONT, scale, (235, 235, 235), thick, cv2.LINE_AA)
    return strip


def write_png(path: str | os.PathLike, rgb) -> Path:
    """Write a uint8 RGB ``[H, W, 3]`` (or greyscale ``[H, W]``) image to ``path`` as PNG, atomically."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3))):
        raise UserError(
            f"cannot write {path}: expected a uint8 [H, W, 3] RGB image, got dtype {arr.dtype} shape {arr.shape}"
        )
    if arr.size == 0:
        raise UserError(f"cannot write {path}: the image is empty (shape {arr.shape})")
    bgr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR) if arr.ndim == 3 and arr.shape[-1] == 3 else arr
    try:
        ok, buf = cv2.imencode(".png", bgr)
    except cv2.error as exc:
        raise UserError(f"could not encode PNG for {path}: {str(exc).strip().splitlines()[-1]}") from None
    if not ok:
        raise UserError(f"could not encode PNG for {path}")
    return atomic_write_bytes(path, buf.tobytes())
