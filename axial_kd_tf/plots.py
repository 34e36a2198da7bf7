"""Training curves as PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from axial_kd_tf.io_utils import atomic_write_bytes

# Panels: (title, [column prefixes]); train and val_ variants are drawn together.
_PANELS = (
    ("loss terms", ("loss", "student_ce", "teacher_ce", "distill_loss")),
    ("mIoU", ("student_miou", "teacher_miou")),
    ("learning rate", ("learning_rate",)),
    ("teacher vs student", ("argmax_disagreement", "teacher_delta_share", "gate", "distill_grad_share",
                            "distill_grad_cosine")),
)


def read_history(path: str | Path) -> dict[str, list[float]]:
    """Read a Keras ``CSVLogger`` file into ``{column: [values per epoch]}``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(math.nan)
    return columns


def plot_history(history_csv: str | Path, out_png: str | Path) -> Path:
    """Plot loss terms, student/teacher mIoU (train and validation), the learning rate, the teacher diagnostics and
    the per-class validation IoU of each output, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = read_history(history_csv)
    epochs = [int(e) for e in hist.get("epoch", [])]
    if epochs and min(epochs) == 0:  # a run written before history.csv numbered epochs from 1
        epochs = [e + 1 for e in epochs]
    panels = [(t, [c for p in cols for c in (p, f"val_{p}") if c in hist]) for t, cols in _PANELS]
    # Per-class validation IoU of each output: a collapsing class shows as a line falling to 0.
    for output in ("student", "teacher"):
        panels.append((f"val IoU per class ({output})", [c for c in hist if c.startswith(f"val_{output}_iou_")]))
    panels = [(t, cols) for t, cols in panels if cols]
    ncols = min(max(len(panels), 1), 3)
    nrows = max(math.ceil(len(panels) / ncols), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, cols) in zip(axes.flat, panels):
        for col in cols:
            ax.plot(epochs, hist[col], marker="o", ms=3, ls="--" if col.startswith("val_") else "-", label=col)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_png(fig, out_png, dpi=100)


def save_png(fig: Any, out_png: str | Path, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(out_png, buf.getvalue())
