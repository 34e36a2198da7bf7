"""``python -m axial_kd_tf.data {download,verify,info,class-weights} sstem|covid`` and ``phantom covid --dir DIR``.

User errors (an unknown dataset, a network failure, a checksum mismatch, a bad phantom size) print one line
``error: ...`` to stderr and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from axial_kd_tf.commands import Parser, guard
from axial_kd_tf.errors import UserError

PROG = "python -m axial_kd_tf.data"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Download, verify and describe the public datasets (sstem, covid), or "
                     "write a synthetic covid phantom. "
                     "The default folder is $AXIAL_KD_DATA_DIR/<name>, else ~/.cache/axial_kd_tf/<name>, which is "
                     "where data.root: null looks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    folder_help = "dataset folder (default: $AXIAL_KD_DATA_DIR/<name> or ~/.cache/axial_kd_tf/<name>)"

    p = sub.add_parser("download", help="download (resumably) and verify a dataset")
    p.add_argument("name", help="sstem or covid")
    p.add_argument("--dir", type=Path, help=folder_help)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry (default 60)")
    p.add_argument("--retries", type=int, default=3, help="retries per file after a network error (default 3)")

    p = sub.add_parser("verify", help="check the checksums of an existing copy (no network)")
    p.add_argument("name", help="sstem or covid")
    p.add_argument("--dir", type=Path, help=folder_help)

    p = sub.add_parser("info", help="files, licence, citation and cache folder of a dataset")
    p.add_argument("name", help="sstem or covid")
    p.add_argument("--dir", type=Path, help=folder_help)

    p = sub.add_parser("class-weights", help="pixel shares of the training split and CE class weights for "
                       "distill.class_weights")
    p.add_argument("name", help="sstem or covid")
    p.add_argument("--dir", type=Path, help=folder_help)
    p.add_argument("--kind", choices=("median", "inverse"), default="median",
                   help="median-frequency balancing (default) or inverse frequency")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="data config value, e.g. --set data.covid.train_slices=60 or data.sstem.fold=2 (repeatable)")

    p = sub.add_parser("phantom", help="write a synthetic CT phantom in the MedSeg layout (covid) to try the covid "
                       "path offline; not real data")
    p.add_argument("name", help="covid")
    p.add_argument("--dir", type=Path, required=True,
                   help="folder to write: new or empty (not the download cache, so it is never taken for real data)")
    p.add_argument("--slices", type=int, default=100, help="number of slices (default 100, as MedSeg)")
    p.add_argument("--size", type=int, default=512, help="slice height and width in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed gives the same files")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier phantom in --dir")
    return parser


def _class_weights(name: str, folder: Optional[Path], kind: str, overrides: Sequence[str]) -> None:
    from axial_kd_tf.config import apply_override, config_from_dict
    from axial_kd_tf.data import load_data
    from axial_kd_tf.data.covid import class_weights_from_frequencies
    from axial_kd_tf.data.download import get_dataset
    from axial_kd_tf.data.io import class_frequencies

    get_dataset(name)  # validates the name
    raw: dict = {"data": {"dataset": name, "root": str(folder) if folder else None}}
    for assignment in overrides:
        if not assignment.startswith("data."):
            raise UserError(f"--set {assignment}: only data.* keys apply here (e.g. data.covid.train_slices=60)")
        apply_override(raw, assignment)
    data = load_data(config_from_dict(raw))
    freqs = class_frequencies(data.train_masks, data.num_classes)
    weights = class_weights_from_frequencies(freqs, kind)
    for cls, f, w in zip(data.class_names, freqs, weights):
        print(f"{cls:20s} {100 * f:7.3f} %   weight {w:.4f}")
    print(f"--set distill.class_weights=[{','.join(f'{w:.4g}' for w in weights)}]")


def _train_command(root: Path, slices: int, size: int) -> str:
    """The ``train.py`` line for a phantom, with the split and crop overrides that configs/covid.yaml needs."""
    parts = ["python train.py --config configs/covid.yaml", f"--set data.root={shlex.quote(str(root))}"]
    if slices < 86:  # covid.yaml's 70 + 15 slices would leave no test slice
        train, val = max(1, round(0.7 * slices)), max(1, round(0.15 * slices))
        train = min(train, slices - val - 1)
        parts += [f"--set data.covid.train_slices={train}", f"--set data.covid.val_slices={val}"]
    if size < 256:  # covid.yaml crops 256² windows
        parts.append("--set data.crop_size=null")
    return " ".join(parts)


def _phantom(name: str, folder: Path, slices: int, size: int, seed: int, overwrite: bool) -> None:
    from axial_kd_tf.data.phantom import read_info, write_covid_phantom

    if name != "covid":
        raise UserError(f"there is no phantom for dataset '{name}'; only covid has one (the quickstart's synthetic "
                        f"dataset needs no files)")
    start = time.perf_counter()
    root = write_covid_phantom(folder, slices, size, seed, overwrite=overwrite)
    info = read_info(root) or {}
    print(f"covid phantom: {slices} slices of {size}x{size} (seed {seed}) written to '{root}' in "
          f"{time.perf_counter() - start:.1f} s; synthetic, not real CT")
    for cls, share, count in zip(info.get("class_names", []), info.get("class_shares", []),
                                 info.get("slices_with_class", [])):
        print(f"  {cls:18s} {100 * share:7.3f} %   in {count} of {slices} slices")
    print(f"train on it: {_train_command(root, slices, size)}")


@guard(interrupted="re-run the same command (a download resumes where it stopped)")
def main(argv: Optional[Sequence[str]] = None) -> int:
    from axial_kd_tf.data import download as dl

    args = _parser().parse_args(argv)
    if args.command == "download":
        if args.retries < 0 or args.timeout <= 0:
            raise UserError("--retries must be >= 0 and --timeout > 0")
        dl.download(args.name, args.dir, timeout=args.timeout, retries=args.retries)
    elif args.command == "verify":
        status = dl.verify(args.name, args.dir)
        folder = args.dir or dl.default_data_root(args.name)
        for path, state in status.items():
            print(f"{state:8s} {path}")
        bad = [p for p, s in status.items() if s != "ok"]
        if bad:
            raise UserError(f"{len(bad)} of {len(status)} files in '{folder}' are missing or corrupt "
                            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); run `{PROG} download "
                            f"{args.name}{f' --dir {args.dir}' if args.dir else ''}` to fetch them")
        print(f"{args.name}: all {len(status)} files in '{folder}' match their checksums")
    elif args.command == "info":
        print(dl.info(args.name, args.dir))
    elif args.command == "class-weights":
        _class_weights(args.name, args.dir, args.kind, args.overrides)
    elif args.command == "phantom":
        _phantom(args.name, args.dir, args.slices, args.size, args.seed, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
