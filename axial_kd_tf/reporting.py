"""IoU result tables (Markdown and console) and JSON-friendly metric dicts.

Tables follow the paper's layout: one column per class IoU, then mIoU; one row per model / output (e.g. "student",
"teacher", "Unet without", "Unet with: student"). Values are percentages with two decimals (0.8123 -> "81.23").
A value may also be a ``(mean, std)`` pair (multi-fold results) -> "81.23 ± 0.45". Undefined IoUs (NaN / None:
class absent from both ground truth and prediction, see :mod:`axial_kd_tf.metrics`) are shown as "—".
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.metrics import iou_from_confusion

__all__ = ["format_iou_table", "format_iou_table_text", "metrics_dict", "format_value", "MISSING"]

MISSING = "—"  # em dash: undefined / missing value


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        raise UserError(f"IoU table values must be numbers, None or (mean, std) pairs, got {v!r}") from None


def format_value(value: Any) -> str:
    """A fraction as a percentage with 2 decimals; ``(mean, std)`` -> "mean ± std"; NaN / None -> "—"."""
    if isinstance(value, (tuple, list, np.ndarray)) and np.ndim(value) == 1:
        if len(value) != 2:
            raise UserError(f"IoU table values given as a sequence must be (mean, std) pairs, got {value!r}")
        mean, std = value
        if _is_missing(mean):
            return MISSING
        if _is_missing(std):
            return f"{100.0 * float(mean):.2f}"
        return f"{100.0 * float(mean):.2f} ± {100.0 * float(std):.2f}"
    if _is_missing(value):
        return MISSING
    return f"{100.0 * float(value):.2f}"


def _row_cells(row_name: str, row: Mapping, class_names: Sequence[str]) -> list[str]:
    if not isinstance(row, Mapping) or "per_class_iou" not in row or "miou" not in row:
        raise UserError(f"IoU table row {row_name!r} must be a mapping with 'per_class_iou' and 'miou'")
    per_class = row["per_class_iou"]
    if isinstance(per_class, Mapping):  # e.g. metrics_dict() output: {class name: value}
        values = [per_class.get(name) for name in class_names]
    else:
        values = list(per_class)
        if len(values) != len(class_names):
            raise UserError(
                f"IoU table row {row_name!r} has {len(values)} per-class values but there are "
                f"{len(class_names)} class names"
            )
    return [format_value(v) for v in values] + [format_value(row["miou"])]


def _table(
    rows: Mapping[str, Mapping], class_names: Sequence[str], row_header: str
) -> tuple[list[str], list[list[str]]]:
    names = [str(c) for c in class_names]
    header = [row_header] + names + ["mIoU"]
    body = [[str(name)] + _row_cells(str(name), row, names) for name, row in rows.items()]
    return header, body


def format_iou_table(rows: Mapping[str, Mapping], class_names: Sequence[str], row_header: str = "Model") -> str:
    """Markdown table: header ``| Model | <class> ... | mIoU |``, one row per ``rows`` entry (in order).

    Each row is a mapping with ``per_class_iou`` (a list in ``class_names`` order, or a ``{name: value}`` mapping as
    produced by :func:`metrics_dict`) and ``miou``; values are fractions (or ``(mean, std)`` pairs), NaN/None -> "—".
    Returns the table without a trailing newline.
    """

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    header, body = _table(rows, class_names, row_header)
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def format_iou_table_text(rows: Mapping[str, Mapping], class_names: Sequence[str], row_header: str = "Model") -> str:
    """Plain fixed-width version of :func:`format_iou_table` for printing (first column left-, others right-aligned)."""
    header, body = _table(rows, class_names, row_header)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first] + rest).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(cells) for cells in body])


def metrics_dict(cm, class_names: Sequence[str]) -> dict:
    """JSON-friendly metrics from a ``[K, K]`` confusion matrix (rows = true, cols = pred).

    ``{"per_class_iou": {name: float | None}, "miou": float | None, "confusion_matrix": [[int, ...], ...]}``
    with None where the IoU is undefined (NaN). The result can be passed as a row to :func:`format_iou_table`.
    """
    arr = np.asarray(cm)
    names = [str(c) for c in class_names]
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise UserError(f"confusion matrix must be square [K, K], got shape {arr.shape}")
    if arr.shape[0] != len(names):
        raise UserError(f"confusion matrix is {arr.shape[0]}x{arr.shape[0]} but {len(names)} class names were given")
    iou, miou = iou_from_confusion(arr)

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    return {
        "per_class_iou": {name: clean(float(v)) for name, v in zip(names, iou)},
        "miou": clean(miou),
        "confusion_matrix": np.rint(arr.astype(np.float64)).astype(np.int64).tolist(),
    }
