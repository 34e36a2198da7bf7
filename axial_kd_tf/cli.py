"""Command-line entry points: ``train.py``, ``evaluate.py`` and ``python -m axial_kd_tf.export``.

Every user error (bad config key, missing file, wrong shape) prints one line ``error: ...`` and exits with code 2,
without a traceback.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from axial_kd_tf import quiet  # before TensorFlow loads: its C++ log level (start-up chatter hidden, --verbose)
from axial_kd_tf.commands import VERBOSE_HELP, Parser, guard
from axial_kd_tf.errors import UserError


# ---------------------------------------------------------------------------------------------------------- train
@guard
def train_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(prog="train.py", description="Train a segmentation network with Axial-Attention self-distillation.")
    parser.add_argument("--config", required=True, help="YAML config path, or a name under configs/ (e.g. quickstart)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--run-dir", help="output folder (default: runs/<name>-<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--force", action="store_true",
                        help="start even when the memory estimate exceeds what the machine has (a warning instead)")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite are mutually exclusive")
    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir pointing at the interrupted run")

    from axial_kd_tf.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.train.distribute == "multi_worker" and not args.run_dir:  # a timestamped default differs per worker
        raise UserError("train.distribute=multi_worker needs --run-dir (the same folder for every worker)")
    run_dir = Path(args.run_dir or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    quiet.import_tensorflow(args.verbose)

    from axial_kd_tf.pipeline import train

    metrics = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, force=args.force)
    if not metrics:  # a non-chief worker of a multi-worker run: the chief wrote the run
        return 0
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"Evaluate:    python evaluate.py --run {run_dir}")
    return 0


# ------------------------------------------------------------------------------------------------------- evaluate
@guard
def evaluate_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(prog="evaluate.py", description="Per-class IoU / mIoU of a run or a saved model, with overlays. "
                     "By default the split is evaluated as the data loader provides it (the protocol's test tiles, "
                     "comparable with the paper); see docs/inference.md for whole-image inference.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a run directory written by train.py")
    src.add_argument("--model", help="a .keras file, SavedModel folder or .tflite file")
    parser.add_argument("--config", help="config of the data (needed with --model outside a run directory)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--out", help="output folder (default: <run>/eval, or eval-<model name> beside the model; "
                        "with --full-image eval-full-image / eval-full-image-<model name>)")
    parser.add_argument("--overlays", type=int, default=4, help="number of overlay PNGs to write (0 = none)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full-image", action="store_true",
                        help="evaluate whole images (sets data.tile_size null): whole-image inference padded to the "
                        "network's size multiple, the teacher tiled when over --max-teacher-mb")
    parser.add_argument("--window", type=int, metavar="N", help="force a sliding window of N x N pixels")
    parser.add_argument("--overlap", type=float, metavar="F",
                        help="sliding-window / teacher-tile overlap in [0, 1) (default 0.5, fixed-size models too)")
    parser.add_argument("--blend", choices=("gaussian", "mean"),
                        help="how overlapping windows are blended (default gaussian; mean with --overlap 0)")
    parser.add_argument("--max-teacher-mb", type=float, default=2048.0, metavar="MB",
                        help="memory budget of one teacher-head call (estimate); above it the teacher runs on tiles "
                        "of the student logits (default 2048)")
    parser.add_argument("--max-student-mb", type=float, metavar="MB",
                        help="memory budget of one network call (activation-sum estimate); above it the image runs "
                        "in a sliding window (default: no limit)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = parser.parse_args(argv)
    _check_inference_args(args)
    quiet.import_tensorflow(args.verbose)

    from axial_kd_tf.config import load_config
    from axial_kd_tf.data import load_data
    from axial_kd_tf.inference import evaluate_split, load_predictor, metrics_payload, table_rows
    from axial_kd_tf.io_utils import atomic_write_json, atomic_write_text
    from axial_kd_tf.reporting import format_iou_table, format_iou_table_text
    from axial_kd_tf.rundir import load_run_config
    from axial_kd_tf.visualize import overlay_panel, write_png

    model_path = Path(args.run or args.model)
    if not model_path.exists():
        raise UserError(f"{'run directory' if args.run else 'model'} '{model_path}' does not exist")
    overrides = list(args.overrides) + (["data.tile_size=null"] if args.full_image else [])
    if args.config:
        cfg = load_config(args.config, overrides)
    else:
        run_dir = model_path if args.run else _find_run_dir(model_path)
        if args.run and not (run_dir / "config.yaml").is_file():
            raise UserError(f"'{model_path}' is not a run directory (no config.yaml); pass the folder train.py wrote")
        if run_dir is None:
            raise UserError(f"'{model_path}' is not inside a run directory; pass --config to say which data to use")
        cfg = load_run_config(run_dir)
        if overrides:
            from axial_kd_tf.config import apply_override, config_from_dict

            raw = cfg.to_dict()
            for o in overrides:
                apply_override(raw, o)
            cfg = config_from_dict(raw)
    suffix = "-full-image" if args.full_image else ""
    out_dir = Path(args.out) if args.out else (
        model_path / f"eval{suffix}" if args.run
        else model_path.parent / f"eval{suffix}-{model_path.name.replace('.', '_')}"
    )
    if args.run and not (model_path / "model.keras").is_file():
        raise UserError(f"run '{model_path}' has no model.keras (training did not finish); "
                        "resume it with train.py --resume")
    from axial_kd_tf.inference import predictor_channels
    from axial_kd_tf.io_utils import check_writable_dir

    check_writable_dir(out_dir, "output folder (--out)")  # before the inference, not after it
    predictor, fixed = load_predictor(model_path)
    channels = predictor_channels(predictor)
    predictor = _inference_predictor(predictor, fixed, args)
    data = load_data(cfg)
    if channels is not None and channels != data.in_channels:
        raise UserError(f"model '{model_path}' takes {channels}-channel images, but the '{cfg.data.dataset}' data has "
                        f"{data.in_channels} channel(s); evaluate it on the data it was trained for (--config)")
    images, masks = data.split(args.split)
    size = f"{images.shape[1]}x{images.shape[2]}" if len(images) else "-"
    print(f"[eval] {model_path} on {args.split} ({len(images)} images of {size}"
          f"{', whole images' if args.full_image else ''})")
    cms = evaluate_split(predictor, images, masks, data.num_classes, args.batch_size,
                         ignore_index=cfg.distill.ignore_index, keep_predictions=args.overlays)
    for mode, count in predictor.modes.items():
        print(f"[eval] mode: {mode} ({count} images)")
    print(f"[eval] {predictor.seconds_per_image * 1000:.1f} ms per image "
          f"({predictor.images} images, {predictor.seconds:.2f} s of inference)")
    payload = metrics_payload(cms, data.class_names, split=args.split)
    payload["model"] = str(model_path)
    payload["inference"] = dict(predictor.summary(), full_image=bool(args.full_image), image_size=size,
                                tile_size=cfg.data.tile_size)
    rows = table_rows(payload)
    print(format_iou_table_text(rows, data.class_names))
    atomic_write_json(out_dir / "metrics.json", payload)
    atomic_write_text(out_dir / "table.md", f"# IoU (%) on the {args.split} split\n\nModel: `{model_path}`\n\n"
                      f"Images: {len(images)} of {size}"
                      f"{' (whole images)' if args.full_image else ''}; inference: "
                      f"{'; '.join(predictor.modes) or '-'}\n\n"
                      f"{format_iou_table(rows, data.class_names)}\n")
    preds = cms.get("_predictions", {})
    for i in range(min(args.overlays, len(images))):
        panel = overlay_panel(images[i], masks[i], {k: v[i] for k, v in preds.items()}, data.class_names,
                              legend=True)
        write_png(out_dir / "overlays" / f"{args.split}_{i:03d}.png", panel)
    print(f"[eval] wrote {out_dir}/metrics.json, table.md and {min(args.overlays, len(images))} overlays")
    return 0


def _check_inference_args(args: argparse.Namespace) -> None:
    if args.overlays < 0:
        raise UserError(f"--overlays must be >= 0 (the number of overlay PNGs to write), got {args.overlays}")
    if args.window is not None and args.window < 1:
        raise UserError(f"--window must be >= 1, got {args.window}")
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise UserError(f"--overlap must be in [0, 1), got {args.overlap}")
    for flag in ("max_teacher_mb", "max_student_mb"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be > 0, got {value:g}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")


def _inference_predictor(predictor, fixed: Optional[int], args: argparse.Namespace):
    """The evaluation predictor for the inference flags, wrapped to count modes and time (evaluate_main)."""
    from axial_kd_tf.inference import FullImagePredictor, KerasPredictor, TimedPredictor, sliding_window

    if fixed:  # TFLite or a fixed-input SavedModel: a sliding window at the model's input size
        if args.window and args.window != fixed:
            raise UserError(f"the model has a fixed {fixed}x{fixed} input; --window must be {fixed} or omitted")
        # Overlapping windows by default: non-overlapping tiles leave seams at the tile borders.
        overlap = args.overlap if args.overlap is not None else 0.5
        blend = args.blend or ("gaussian" if overlap > 0 else "mean")
        return TimedPredictor(sliding_window(predictor, fixed, overlap, blend, batch_size=max(args.batch_size, 1)))
    overlap = args.overlap if args.overlap is not None else 0.5
    blend = args.blend or "gaussian"
    if isinstance(predictor, KerasPredictor):
        return TimedPredictor(FullImagePredictor(
            predictor.model, max_teacher_mb=args.max_teacher_mb, max_student_mb=args.max_student_mb,
            window=args.window, overlap=overlap, blend=blend,
        ))
    if args.window:
        return TimedPredictor(sliding_window(predictor, args.window, overlap, blend))
    return TimedPredictor(predictor, mode="whole-image")


def _find_run_dir(path: Path) -> Optional[Path]:
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------------------- export
@guard
def export_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = Parser(prog="python -m axial_kd_tf.export", description="Export a run's student (and teacher).")
    parser.add_argument("--run", required=True, help="a run directory written by train.py")
    parser.add_argument("--variants", nargs="+", choices=("float32", "float16", "int8"),
                        help="TFLite variants (default: the run's export.variants)")
    parser.add_argument("--teacher", action="store_true", help="also export the teacher")
    parser.add_argument("--input-size", type=int, help="fixed export input size (default: training crop)")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = parser.parse_args(argv)
    quiet.import_tensorflow(args.verbose)

    from axial_kd_tf.config import config_from_dict
    from axial_kd_tf.runlock import RunLock
    from axial_kd_tf.pipeline import export_run
    from axial_kd_tf.rundir import load_run_config

    if args.input_size is not None and args.input_size < 8:
        raise UserError(f"--input-size must be >= 8, got {args.input_size}")
    cfg = load_run_config(Path(args.run))
    raw = cfg.to_dict()
    if args.variants:
        raw["export"]["variants"] = list(args.variants)
    if args.teacher:
        raw["export"]["teacher"] = True
    if args.input_size:
        raw["export"]["input_size"] = args.input_size
    with RunLock(Path(args.run)):  # not while train.py writes the same run
        report = export_run(args.run, config_from_dict(raw))
    for net, rep in report["networks"].items():
        for variant, v in rep["variants"].items():
            print(f"{net:8s} {variant:8s} size {v['size_bytes'] / 1e6:7.2f} MB  max|diff| {v['max_abs_diff']:.2e}  "
                  f"argmax agreement {v['argmax_agreement'] * 100:6.2f}%  latency {v['mean_latency_ms']:.1f} ms")
    return 0
