"""``python -m axial_kd_tf.study report|docs|curves``: the command line of the study tools."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from axial_kd_tf.commands import Parser, guard
from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_json, atomic_write_text, read_user_text
from axial_kd_tf.study.docs import update_docs
from axial_kd_tf.study.markdown import BLOCKS, PAPER_BLOCKS, load_paper, md_report
from axial_kd_tf.study.plots import plot_curves, plot_deltas, run_curve
from axial_kd_tf.study.records import SPLITS, load_records
from axial_kd_tf.study.summary import select_records, summarize

# --------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> Parser:
    p = Parser(prog="python -m axial_kd_tf.study",
                description="Statistics and reports of a study's run records (written by the runner's --record).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    rep = sub.add_parser("report", help="tables, plot and JSON summary of one split")
    doc = sub.add_parser("docs", help="regenerate <!-- BEGIN generated:NAME --> blocks in Markdown files")
    for q in (rep, doc):
        q.add_argument("--results", required=True, help="records file (JSON list) written by --record")
        q.add_argument("--split", default="val", choices=SPLITS, help="which split's records (default: val)")
        q.add_argument("--study", default=None, help="study name (needed when the file holds several)")
    cur = sub.add_parser("curves", help="validation curves of runs of different schedules: JSON and PNG")
    cur.add_argument("--run", action="append", default=[], metavar="LABEL=RUN_DIR",
                     help="a run directory and its label (repeatable); without --run, --json is read and re-plotted")
    cur.add_argument("--json", required=True, help="the curves as JSON (written with --run, read without)")
    cur.add_argument("--plot", help="write the plot (PNG) here")
    cur.add_argument("--title", default="", help="plot title")
    rep.add_argument("--md", help="write the Markdown report here")
    rep.add_argument("--plot", help="write the Δ mIoU plot (PNG) here")
    rep.add_argument("--json", help="write the JSON summary here")
    doc.add_argument("--file", dest="files", action="append", required=True,
                     help="Markdown file with generated blocks (repeatable); blocks: "
                     + ", ".join(list(BLOCKS) + list(PAPER_BLOCKS)) + " (NAME@SPLIT picks a split)")
    doc.add_argument("--paper", help="the paper's tables (docs/results/paper.json), for the paper blocks")
    doc.add_argument("--dataset", default="sstem", help="which of the paper's tables (default: sstem)")
    doc.add_argument("--method", help="the variant shown as the method ('with') in the paper blocks")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "curves":
        return _curves(args)
    records = load_records(args.results)
    where = f"records file '{args.results}'"
    if args.command == "docs":
        paper = load_paper(args.paper, args.dataset) if args.paper else None
        changed = update_docs(args.files, records, args.split, args.study, where, paper=paper, method=args.method)
        for f in args.files:
            print(f"[docs] {f}: {'updated' if Path(f) in changed else 'unchanged'}")
        return 0
    for flag in ("md", "plot", "json"):
        target = getattr(args, flag)
        if target is not None and Path(target).is_dir():
            raise UserError(f"--{flag} '{target}' is a directory; give a file name")
    study, recs = select_records(records, args.split, args.study, where)
    if not recs:
        raise UserError(f"{where} has no {args.split} records of study '{study}'")
    summary = summarize(recs, args.split, study)
    text = md_report(summary)
    print(text, end="")
    if args.md:
        atomic_write_text(args.md, text)
    if args.plot:
        plot_deltas(summary, args.plot)
    if args.json:
        atomic_write_json(args.json, dict(summary, generated=time.strftime("%Y-%m-%d %H:%M:%S")))
    return 0


def _curves(args: Any) -> int:
    if args.run:
        curves = []
        for item in args.run:
            label, sep, run_dir = item.partition("=")
            if not sep or not label or not run_dir:
                raise UserError(f"--run '{item}' must look like LABEL=RUN_DIR")
            curves.append(run_curve(label, run_dir))
        atomic_write_json(args.json, {"curves": curves})
    else:
        try:
            curves = json.loads(read_user_text(args.json, f"curves file '{args.json}'"))["curves"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"curves file '{args.json}' is not a curves file (a JSON object with 'curves')") from None
    for c in curves:
        print(f"{c['label']}: {c.get('iterations')} iterations, val mIoU final {100 * c['final']:.2f}, best "
              f"{100 * c['best']:.2f}")
    if args.plot:
        plot_curves(curves, args.plot, args.title)
    return 0


@guard
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: exit code 2 with one line ``error: ...`` on bad input."""
    return _main(argv)
