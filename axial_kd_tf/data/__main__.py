"""``python -m axial_kd_tf.data {download,verify,info,class-weights} sstem|covid``.

User errors (an unknown dataset, a network failure, a checksum mismatch) print one line ``error: ...`` to stderr and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from axial_kd_tf.cli import _guard, _Parser
from axial_kd_tf.errors import UserError

PROG = "python -m axial_kd_tf.data"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Download, verify and describe the public datasets (sstem, covid). "
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
                   help="data config value, e.g. --set data.train_slices=60 or data.fold=2 (repeatable)")
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
            raise UserError(f"--set {assignment}: only data.* keys apply here (e.g. data.train_slices=60)")
        apply_override(raw, assignment)
    data = load_data(config_from_dict(raw))
    freqs = class_frequencies(data.train_masks, data.num_classes)
    weights = class_weights_from_frequencies(freqs, kind)
    for cls, f, w in zip(data.class_names, freqs, weights):
        print(f"{cls:20s} {100 * f:7.3f} %   weight {w:.4f}")
    print(f"--set distill.class_weights=[{','.join(f'{w:.4g}' for w in weights)}]")


@_guard(interrupted="re-run the same command to resume the download")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
