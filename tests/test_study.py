"""Study records and statistics (axial_kd_tf.study): t quantiles, paired CIs, collapse check, reports, doc blocks."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from axial_kd_tf import study
from axial_kd_tf.errors import UserError

CLASSES = ["a", "b"]


def rec(arch, variant, fold, seed, student, teacher=None, b=0.5, split="val", study_name="s", dis=None):
    """A minimal record: class a's IoU is ``student``, b's is ``b``; mIoU their mean."""
    outputs = {"student": {"per_class_iou": {"a": student, "b": b}, "miou": (student + b) / 2}}
    if teacher is not None:
        outputs["teacher"] = {"per_class_iou": {"a": teacher, "b": b}, "miou": (teacher + b) / 2}
    return {"study": study_name, "arch": arch, "mode": "baseline" if variant == "baseline" else "distill",
            "variant": variant, "fold": fold, "seed": seed, "split": split, "class_names": CLASSES,
            "outputs": outputs, "config_digest": "d1",
            "diagnostics": {} if dis is None else {"val_argmax_disagreement": dis}}


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = study.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------------- t quantile
@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228),
                                          (30, 2.042), (1e6, 1.960), (math.inf, 1.960)])
def test_t_quantile_matches_tables(df, expected):
    assert study.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_other_levels_and_symmetry():
    assert study.t_quantile(0.995, 5) == pytest.approx(4.032, abs=5e-4)
    assert study.t_quantile(0.95, 1) == pytest.approx(6.314, abs=5e-4)
    assert study.t_quantile(0.025, 4) == pytest.approx(-study.t_quantile(0.975, 4))
    assert study.t_quantile(0.5, 7) == 0.0
    for df in (1, 3, 12):  # the quantile inverts the CDF
        assert study.t_cdf(study.t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-10)
    # the incomplete beta: I_x(1, 1) = x, I_x(a, 1) = x^a, I_0.5(a, a) = 0.5
    assert study.betainc(1, 1, 0.3) == pytest.approx(0.3)
    assert study.betainc(3, 1, 0.7) == pytest.approx(0.7 ** 3)
    assert study.betainc(4.5, 4.5, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        study.t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        study.t_quantile(0.9, 0)


def test_mean_ci_by_hand():
    values = [0.01, 0.03, 0.02, None]  # None: undefined, left out
    s = study.mean_ci(values)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.02)
    assert s["std"] == pytest.approx(np.std([0.01, 0.03, 0.02], ddof=1)) == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)  # t_{0.975, 2} · s / √n
    assert s["ci"] == pytest.approx([0.02 - half, 0.02 + half], abs=1e-7)
    assert study.mean_ci([0.5])["ci"] is None and study.mean_ci([0.5])["std"] is None
    assert study.mean_ci([]) == {"mean": None, "std": None, "n": 0, "ci": None}


# ---------------------------------------------------------------------------------------------------- statistics
def _records() -> list[dict]:
    recs = []
    # baseline class a per (arch, seed); variant "kl" changes it by known amounts; "bad" collapses class a once
    base = {("unet", 1): 0.60, ("unet", 2): 0.70, ("unet", 3): 0.65, ("linknet", 1): 0.50, ("linknet", 2): 0.55}
    shift = {("unet", 1): 0.02, ("unet", 2): 0.06, ("unet", 3): 0.04, ("linknet", 1): -0.02, ("linknet", 2): 0.0}
    for (arch, seed), a in base.items():
        recs.append(rec(arch, "baseline", 0, seed, a))
        recs.append(rec(arch, "kl", 0, seed, a + shift[(arch, seed)], teacher=a + 2 * shift[(arch, seed)],
                        dis=0.01 * seed))
        recs.append(rec(arch, "bad", 0, seed, 0.005 if (arch, seed) == ("unet", 1) else a, teacher=a))
    recs.append(rec("unet", "kl", 0, 9, 0.9))  # no baseline of seed 9: counted in its group, not paired
    recs.append(rec("unet", "kl", 0, 1, 0.1, split="test"))  # another split: ignored
    return recs


def test_summary_statistics_against_numpy():
    s = study.summarize(_records(), "val")
    assert s["archs"] == ["unet", "linknet"]  # the paper's order, not alphabetical
    assert s["variants"] == ["baseline", "bad", "kl"]
    g = {(x["arch"], x["variant"], x["output"]): x for x in s["groups"]}
    unet_kl = g[("unet", "kl", "student")]
    a_values = [0.62, 0.76, 0.69, 0.9]
    assert unet_kl["n"] == 4
    assert unet_kl["per_class_iou"]["a"]["mean"] == pytest.approx(np.mean(a_values))
    assert unet_kl["per_class_iou"]["a"]["std"] == pytest.approx(np.std(a_values, ddof=1))
    assert unet_kl["miou"]["mean"] == pytest.approx(np.mean([(v + 0.5) / 2 for v in a_values]))
    assert ("unet", "baseline", "teacher") not in g
    # paired Δ mIoU (student): the mIoU moves by half the class-a shift
    d = {(x["arch"], x["variant"], x["output"]): x for x in s["deltas"]}
    unet = d[("unet", "kl", "student")]
    diffs = np.array([0.02, 0.06, 0.04]) / 2
    assert unet["n"] == 3 and [p["seed"] for p in unet["pairs"]] == [1, 2, 3]
    assert unet["mean"] == pytest.approx(diffs.mean()) and unet["std"] == pytest.approx(diffs.std(ddof=1))
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)
    assert unet["ci"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], abs=1e-6)
    assert d[("unet", "kl", "teacher")]["mean"] == pytest.approx(2 * diffs.mean())
    # pooled over architectures: the 5 pairs of both
    pooled = {(x["variant"], x["output"]): x for x in s["pooled"]}["kl", "student"]
    all_diffs = np.array([0.02, 0.06, 0.04, -0.02, 0.0]) / 2
    assert pooled["n"] == 5 and pooled["archs"] == ["unet", "linknet"]
    assert pooled["mean"] == pytest.approx(all_diffs.mean())
    half = 2.776445 * all_diffs.std(ddof=1) / math.sqrt(5)
    assert pooled["ci"] == pytest.approx([all_diffs.mean() - half, all_diffs.mean() + half], abs=1e-6)


def test_collapse_check():
    s = study.summarize(_records(), "val")
    col = s["collapse"]
    assert col["cases"] == [{"arch": "unet", "variant": "bad", "fold": 0, "seed": 1, "class": "a",
                             "student_iou": 0.005, "baseline_iou": 0.60}]
    assert col["per_variant"]["bad"] == {"cases": 1, "runs": 1, "runs_checked": 5}
    assert col["per_variant"]["kl"] == {"cases": 0, "runs": 0, "runs_checked": 5}
    # a class the baseline also fails (<= 10 %) is no collapse
    recs = [rec("unet", "baseline", 0, 1, 0.08), rec("unet", "x", 0, 1, 0.0)]
    assert study.summarize(recs, "val")["collapse"]["cases"] == []
    md = study.md_collapse(s)
    assert "| bad | 5 | 1 | 1 | U-Net f0 s1 a 0.50 (baseline 60.00) |" in md


def test_teacher_vs_student():
    s = study.summarize(_records(), "val")
    t = {(x["arch"], x["variant"]): x for x in s["teacher_vs_student"]}
    gaps = [abs(v) / 2 for v in (0.02, 0.06, 0.04)]  # |teacher − student| mIoU = half the class-a shift
    assert t[("unet", "kl")]["abs_miou_gap"]["mean"] == pytest.approx(np.mean(gaps))
    assert t[("unet", "kl")]["val_argmax_disagreement"]["mean"] == pytest.approx(np.mean([0.01, 0.02, 0.03]))
    all_kl = t[("all", "kl")]
    assert all_kl["n"] == 5 and all_kl["val_argmax_disagreement"]["n"] == 5
    assert ("unet", "baseline") not in t


def test_markdown_tables():
    s = study.summarize(_records(), "val")
    assert study.delta_cell({"mean": 0.0123, "ci": [-0.004, 0.0286]}) == "+1.23 [-0.40, +2.86]"
    assert study.delta_cell({"mean": -0.00001, "ci": None}) == "+0.00"  # no "-0.00"
    assert study.delta_cell(None) == ""
    lines = study.md_delta(s).splitlines()
    assert lines[0] == "| Model | variant | pairs | Δ mIoU student [95 % CI] | std | Δ mIoU teacher [95 % CI] |"
    unet = next(line for line in lines if line.startswith("| U-Net | kl |"))
    cells = [c.strip() for c in unet.strip("|").split("|")]
    d = {(x["arch"], x["variant"], x["output"]): x for x in s["deltas"]}[("unet", "kl", "student")]
    assert cells[2] == "3" and cells[3] == study.delta_cell(d) == (
        f"+{100 * d['mean']:.2f} [{100 * d['ci'][0]:+.2f}, {100 * d['ci'][1]:+.2f}]")
    iou = study.md_iou(s)
    assert "| U-Net | baseline | student | 3 | 65.00 ± 5.00 | 50.00 ± 0.00 | 57.50 ± 2.50 |" in iou
    report = study.md_report(s)
    for heading in ("## Δ mIoU per architecture", "## Δ mIoU pooled over architectures", "## Collapse check",
                    "## Teacher vs student"):
        assert heading in report


def test_plot(tmp_path):
    s = study.summarize(_records(), "val")
    out = study.plot_deltas(s, tmp_path / "d.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 100
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left


# ------------------------------------------------------------------------------------------------------- records
def test_upsert_is_idempotent_sorted_and_deduplicated(tmp_path):
    path = tmp_path / "results" / "study.json"
    r1, r2, r3 = rec("unet", "kl", 0, 2, 0.6), rec("unet", "baseline", 0, 1, 0.5), rec("linknet", "kl", 0, 1, 0.4)
    study.upsert_records(path, [r1, r2])
    first = path.read_text()
    study.upsert_records(path, [r2, r1])
    assert path.read_text() == first  # same records, same bytes
    changed = dict(r1, outputs={"student": {"per_class_iou": {"a": 0.9, "b": 0.5}, "miou": 0.7}})
    out = study.upsert_records(path, [changed, r3])
    assert len(out) == 3  # r1 replaced, not duplicated
    assert [(r["arch"], r["variant"], r["seed"]) for r in out] == [("linknet", "kl", 1), ("unet", "baseline", 1),
                                                                   ("unet", "kl", 2)]
    assert json.loads(path.read_text())[2]["outputs"]["student"]["miou"] == 0.7
    assert path.read_text().startswith("[\n  {")  # pretty-printed
    # another split or study is another record
    assert len(study.upsert_records(path, [dict(r1, split="test"), dict(r1, study="other")])) == 5


def test_bad_records_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        study.upsert_records(bad, [rec("unet", "kl", 0, 1, 0.5)])
    assert bad.read_text() == "{not json"  # left as it was
    bad.write_text('[{"arch": "unet"}]')
    with pytest.raises(UserError, match="entry 0 is not a run record"):
        study.load_records(bad)
    with pytest.raises(UserError, match="does not exist"):
        study.load_records(tmp_path / "missing.json")
    assert study.load_records(tmp_path / "missing.json", missing_ok=True) == []


def _fake_run(root: Path, split: str = "val") -> Path:
    """A run directory as the runner leaves it after evaluating a variant's distill run (no training needed)."""
    run = root / "runs" / "unet" / "kl" / "fold0-seed2"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: s\nmodel: {arch: unet, encoder: resnet18}\nteacher: {pool_size: 2}\n"
                                     "train: {epochs: 3, steps_per_epoch: 50, batch_size: 8, "
                                     "mixed_precision: mixed_bfloat16}\n")
    metrics = {
        "split": split, "class_names": CLASSES, "arch": "unet", "mode": "distill", "fold": 0, "seed": 2,
        "variant": {"name": "kl", "dirname": "kl", "overrides": {"distill.target": "kl"}},
        "outputs": {"student": {"per_class_iou": {"a": 0.6, "b": 0.4}, "miou": 0.5, "iou_extra": 1},
                    "teacher": {"per_class_iou": {"a": 0.7, "b": 0.4}, "miou": 0.55}},
        "run_dir": str(run), "best_epoch": 2, "epochs": 3, "steps_per_epoch": 50, "val_miou": {"student": 0.5},
        "train_wall_time_s": 12.5, "study": "s", "config_digest": "abc",
        "grid_overrides": [f"data.root={root}", "train.epochs=3", f"logging.dir={root}/logs"],
        "evaluated_at": "2026-01-02T03:04:05+0000", "git_commit": "f" * 40, "git_dirty": False, "num_images": 64,
    }
    (run / f"{split}_metrics.json").write_text(json.dumps(metrics))
    # a resumed run logs epoch 1 twice; the later row wins
    (run / "history.csv").write_text(
        "epoch,gate,val_argmax_disagreement,val_student_miou,val_teacher_miou,loss\n"
        "0,0.1,0.2,0.41234,0.4,1.0\n1,0.2,0.3,0.5,0.45,0.9\n1,0.25,0.35,0.51,0.46,0.9\n2,0.3,0.1,0.52,0.47,0.8\n")
    return run


def test_build_record_from_a_run_directory(tmp_path):
    root = tmp_path / "out" / "s"
    run = _fake_run(root)
    r = study.build_record(run, root, "val")
    assert r["study"] == "s" and r["variant"] == "kl" and r["mode"] == "distill"
    assert r["overrides"] == {"distill.target": "kl"}
    assert r["grid_overrides"] == ["train.epochs=3", "logging.dir=<local path>"]  # data.root left out
    assert (r["iterations"], r["batch_size"], r["encoder"], r["mixed_precision"], r["teacher_pool_size"]) == (
        150, 8, "resnet18", "mixed_bfloat16", 2)
    assert r["outputs"]["student"] == {"per_class_iou": {"a": 0.6, "b": 0.4}, "miou": 0.5}
    assert r["diagnostics"] == {"gate": 0.3, "val_argmax_disagreement": 0.1,
                                "val_student_miou": [0.4123, 0.51, 0.52], "val_teacher_miou": [0.4, 0.46, 0.47]}
    assert r["run_dir"] == "runs/unet/kl/fold0-seed2"
    assert (r["date"], r["git_commit"], r["best_epoch"], r["val_miou"]) == (
        "2026-01-02T03:04:05+0000", "f" * 40, 2, {"student": 0.5})
    text = json.dumps(r)
    assert str(tmp_path) not in text  # no path of this machine
    strings = []

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                strings.append(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            strings.append(v)

    walk(r)
    assert not [s for s in strings if s.startswith("/") or "=/" in s]
    assert set(study.RECORD_KEY) <= set(r)


def test_curves_cli_writes_and_replots(tmp_path):
    run = _fake_run(tmp_path / "out" / "s")
    out_json, png = tmp_path / "curves.json", tmp_path / "c.png"
    rc, out, err = run_cli("curves", "--run", f"three epochs={run}", "--json", out_json, "--plot", png)
    assert rc == 0, err
    (curve,) = json.loads(out_json.read_text())["curves"]
    assert curve["label"] == "three epochs" and curve["iterations"] == 150 and curve["arch"] == "unet"
    assert curve["val_student_miou"] == [0.4123, 0.51, 0.52]  # the resumed epoch counts once
    assert curve["best"] == curve["final"] == 0.52 and "150 iterations, val mIoU final 52.00" in out
    assert cv2.imread(str(png)) is not None
    png.unlink()
    rc, _, err = run_cli("curves", "--json", out_json, "--plot", png)  # re-plot from the JSON alone
    assert rc == 0 and png.is_file()
    for args, message in ((["--run", "no-equals-sign"], "LABEL=RUN_DIR"), (["--run", f"x={tmp_path}"], "no readable")):
        rc, _, err = run_cli("curves", *args, "--json", tmp_path / "other.json")
        assert rc == 2 and message in err and err.count("\n") == 1


def test_scrub():
    assert study.scrub_overrides(["data.root=/x/y", "a.b=~/z", "c.d=rel/path", "e.f=3"]) == [
        "a.b=<local path>", "c.d=rel/path", "e.f=3"]
    assert study.scrub({"k": ["/abs", "ok", {"x": "C:\\data"}]}) == {"k": ["<local path>", "ok", {"x": "<local path>"}]}


# -------------------------------------------------------------------------------------------------- marked blocks
DOC = """# Method

Prose that stays.

<!-- BEGIN generated:delta -->
old table
<!-- END generated:delta -->

More prose.
<!-- BEGIN generated:pooled@test -->
<!-- END generated:pooled@test -->
"""


def test_regenerate_blocks():
    calls = []

    def render(name):
        calls.append(name)
        return f"table {name}\n"

    out = study.regenerate_blocks(DOC, render)
    assert calls == ["delta", "pooled@test"]
    assert "old table" not in out and "Prose that stays." in out and "More prose." in out
    assert "<!-- BEGIN generated:delta -->\ntable delta\n<!-- END generated:delta -->" in out
    assert "<!-- BEGIN generated:pooled@test -->\ntable pooled@test\n<!-- END generated:pooled@test -->" in out
    assert study.regenerate_blocks(out, render) == out  # idempotent

    def unknown(name):
        raise KeyError(name)

    with pytest.raises(UserError, match="doc.md line 5: unknown generated block 'delta'"):
        study.regenerate_blocks(DOC, unknown, "doc.md")
    with pytest.raises(UserError, match="has no <!-- END generated:x -->"):
        study.regenerate_blocks("<!-- BEGIN generated:x -->\n", render)
    with pytest.raises(UserError, match="without its BEGIN"):
        study.regenerate_blocks("<!-- END generated:x -->\n", render)
    with pytest.raises(UserError, match="starts inside block 'x'"):
        study.regenerate_blocks("<!-- BEGIN generated:x -->\n<!-- BEGIN generated:y -->\n", render)


def test_docs_cli_regenerates_blocks_of_every_file(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps([r for r in _records() if r["split"] == "val"]))
    doc = tmp_path / "method.md"
    doc.write_text(DOC)
    rc, out, err = run_cli("docs", "--results", results, "--split", "val", "--file", doc)
    assert rc == 0, err
    text = doc.read_text()
    s = study.summarize(_records(), "val")
    assert study.md_delta(s) in text and "Prose that stays." in text
    assert "_No test records of study s yet._" in text  # pooled@test: a placeholder until the test split is read
    rc, _, _ = run_cli("docs", "--results", results, "--file", doc)
    assert rc == 0 and doc.read_text() == text  # unchanged on a second run
    # an unknown block: exit 2, one line naming the file and the block; no file is changed
    other = tmp_path / "results.md"
    other.write_text("<!-- BEGIN generated:delta -->\n<!-- END generated:delta -->\n")
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- BEGIN generated:deltas -->\n<!-- END generated:deltas -->\n")
    rc, _, err = run_cli("docs", "--results", results, "--file", other, "--file", bad)
    assert rc == 2 and err.count("\n") == 1 and str(bad) in err and "'deltas'" in err
    assert other.read_text() == "<!-- BEGIN generated:delta -->\n<!-- END generated:delta -->\n"


PAPER = [
    {"arch": "unet", "output": "without", "per_class_iou": {"a": 0.70, "b": 0.90}, "miou": 0.80},
    {"arch": "unet", "output": "student", "per_class_iou": {"a": 0.72, "b": 0.90}, "miou": 0.81},
    {"arch": "unet", "output": "teacher", "per_class_iou": {"a": 0.74, "b": 0.90}, "miou": 0.82},
    {"arch": "fpn", "output": "without", "per_class_iou": {"a": 0.60, "b": 0.80}, "miou": 0.70},
]


def test_paper_blocks_put_the_papers_rows_next_to_ours(tmp_path):
    recs = [rec("unet", "baseline", 0, s, 0.60 + 0.01 * s) for s in (1, 2, 3)]
    recs += [rec("unet", "kl", 0, s, 0.62 + 0.01 * s, teacher=0.63 + 0.01 * s) for s in (1, 2, 3)]
    summary = study.summarize(recs, "val")
    table = study.md_paper(summary, PAPER, "kl")
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, rule, U-Net, FPN (the paper's row even without runs of ours)
    unet = [c.strip() for c in lines[2].strip("|").split("|")]
    assert unet[0] == "U-Net" and unet[1] == "80.00" and unet[2] == "81.00 (+1.00)" and unet[3] == "82.00 (+2.00)"
    # ours: without = mean of class a 0.61..0.63 and b 0.5 → mIoU 56.0 ± 0.5; student Δ +1 pp with no spread
    assert unet[4] == "56.00 ± 0.50"
    assert unet[5].startswith("57.00 ± 0.50 (+1.00 [+1.00, +1.00])") and unet[6].startswith("57.50 ± 0.50 (+1.50")
    assert unet[7] == "3/3/3"
    fpn = [c.strip() for c in lines[3].strip("|").split("|")]
    assert fpn[1] == "70.00" and fpn[2] == "—" and fpn[4] == "—" and fpn[7] == "0/0/0"
    classes = study.md_paper_classes(summary, PAPER, "kl")
    assert "| U-Net | paper: student | 1 | 72.00 | 90.00 | 81.00 |" in classes
    assert "| U-Net | ours: teacher | 3 | 65.00 ± 1.00 | 50.00 ± 0.00 | 57.50 ± 0.50 |" in classes
    # through the docs CLI: the paper blocks need --paper and --method
    results, paper, doc = tmp_path / "r.json", tmp_path / "paper.json", tmp_path / "results.md"
    results.write_text(json.dumps(recs))
    paper.write_text(json.dumps({"tables": {"sstem": PAPER}}))
    doc.write_text("<!-- BEGIN generated:paper -->\n<!-- END generated:paper -->\n")
    rc, _, err = run_cli("docs", "--results", results, "--file", doc)
    assert rc == 2 and "--paper" in err and err.count("\n") == 1
    rc, _, err = run_cli("docs", "--results", results, "--file", doc, "--paper", paper, "--method", "kl")
    assert rc == 0, err
    assert table in doc.read_text()
    rc, _, err = run_cli("docs", "--results", results, "--file", doc, "--paper", paper, "--method", "kl",
                         "--dataset", "covid")
    assert rc == 2 and "no table 'covid'" in err


def test_report_cli(tmp_path):
    results = tmp_path / "r.json"
    results.write_text(json.dumps(_records()))
    rc, out, err = run_cli("report", "--results", results, "--split", "val", "--md", tmp_path / "r.md",
                           "--plot", tmp_path / "d.png", "--json", tmp_path / "s.json")
    assert rc == 0, err
    assert out == (tmp_path / "r.md").read_text() and out.startswith("# Study s: val split")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["records"] == 16 and summary["collapse"]["per_variant"]["bad"]["cases"] == 1
    assert (tmp_path / "d.png").stat().st_size > 1000


@pytest.mark.parametrize("setup, args, message", [
    (None, ["report", "--results", "{d}/missing.json"], "does not exist"),
    ("{", ["report", "--results", "{f}"], "not valid JSON"),
    ("[]", ["report", "--results", "{f}"], "has no val records"),
    ("two", ["report", "--results", "{f}"], "several studies (a, s); pick one with --study"),
    ("recs", ["report", "--results", "{f}", "--study", "zz"], "no study 'zz'"),
    ("recs", ["report", "--results", "{f}", "--split", "train"], "invalid choice"),
    ("recs", ["report", "--results", "{f}", "--md", "{d}"], "is a directory"),
    ("recs", ["docs", "--results", "{f}", "--file", "{d}/none.md"], "does not exist"),
    ("recs", ["frobnicate"], "invalid choice"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, setup, args, message):
    f = tmp_path / "r.json"
    if setup == "recs":
        f.write_text(json.dumps(_records()))
    elif setup == "two":
        f.write_text(json.dumps(_records() + [rec("unet", "baseline", 0, 1, 0.5, study_name="a")]))
    elif setup is not None:
        f.write_text(setup)
    argv = [a.format(d=tmp_path, f=f) for a in args]
    with pytest.raises(SystemExit) if "invalid choice" in message else contextlib.nullcontext() as ctx:
        rc, _, err = run_cli(*argv)
    if ctx is not None:  # argparse errors exit through SystemExit(2), also with one line
        assert ctx.value.code == 2
        return
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "s.json").exists()


def test_study_module_is_light_and_matches_the_zoo():
    # reports must not pull in TensorFlow or the runner's CLI (the runner imports this module, not the reverse)
    code = ("import sys, axial_kd_tf.study; "
            "assert 'axial_kd_tf.experiments' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    from axial_kd_tf.models import ZOO

    assert study.ARCH_ORDER == tuple(ZOO)
