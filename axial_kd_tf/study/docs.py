"""Regenerating the marked blocks (``<!-- BEGIN generated:NAME -->`` … ``<!-- END generated:NAME -->``) of Markdown
documents from a records file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_text, read_user_text
from axial_kd_tf.study.markdown import BLOCKS, PAPER_BLOCKS
from axial_kd_tf.study.records import SPLITS
from axial_kd_tf.study.summary import select_records, summarize

# ------------------------------------------------------------------------------------------ generated doc blocks
_BLOCK_RE = re.compile(r"<!-- (BEGIN|END) generated:([^\s>]*) -->")
_BLOCK_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(@[A-Za-z]+)?\Z")


def regenerate_blocks(text: str, render: Callable[[str], str], where: str = "the document") -> str:
    """Replace the text between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` by
    ``render(NAME)``. Markers must pair up (no nesting); ``render`` raises KeyError for an unknown name."""
    out, pos, open_name = [], 0, None
    for m in _BLOCK_RE.finditer(text):
        kind, name = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if kind == "BEGIN":
            if open_name is not None:
                raise UserError(f"{where} line {line}: block '{name}' starts inside block '{open_name}'; close it "
                                f"first with <!-- END generated:{open_name} -->")
            if not _BLOCK_NAME_RE.match(name):
                raise UserError(f"{where} line {line}: bad block name '{name}'; use NAME or NAME@SPLIT")
            try:
                content = render(name)
            except KeyError:
                raise UserError(f"{where} line {line}: unknown generated block '{name}' (known: "
                                f"{', '.join(list(BLOCKS) + list(PAPER_BLOCKS))}; optionally NAME@val or "
                                "NAME@test)") from None
            out.append(text[pos:m.end()])
            out.append("\n" + content.strip("\n") + "\n")
            open_name, pos = name, None
        else:
            if open_name != name:
                raise UserError(f"{where} line {line}: <!-- END generated:{name} --> without its BEGIN"
                                + (f" (block '{open_name}' is open)" if open_name else ""))
            pos, open_name = m.start(), None
    if open_name is not None:
        raise UserError(f"{where}: block '{open_name}' has no <!-- END generated:{open_name} -->")
    out.append(text[pos:])
    return "".join(out)


def update_docs(files: Sequence[str | Path], records: Sequence[Mapping], split: str, study: Optional[str],
                where: str = "the records", paper: Optional[Sequence[Mapping]] = None,
                method: Optional[str] = None) -> list[Path]:
    """Regenerate the marked blocks of each Markdown file from the records; files change only when their text does.

    The ``paper`` and ``paper-classes`` blocks put the paper's rows (``paper``, from :func:`load_paper`) next to ours,
    with the variant ``method`` as "with". Every file is rendered before any is written, so one bad block leaves
    every file as it was.
    """
    cache: dict[str, Mapping] = {}

    def summary_for(sp: str) -> Mapping:
        if sp not in cache:
            name, recs = select_records(records, sp, study, where)
            cache[sp] = summarize(recs, sp, name)
        return cache[sp]

    def render(block: str) -> str:
        name, _, sp = block.partition("@")
        sp = sp or split
        if (name not in BLOCKS and name not in PAPER_BLOCKS) or sp not in SPLITS:
            raise KeyError(block)
        if name in PAPER_BLOCKS and (paper is None or method is None):
            raise UserError(f"generated block '{block}' needs the paper's table and the method's variant: pass "
                            "--paper docs/results/paper.json and --method VARIANT")
        s = summary_for(sp)
        if not s["records"]:
            return f"_No {sp} records of study {s['study'] or study or '?'} yet._"
        return PAPER_BLOCKS[name](s, paper, method) if name in PAPER_BLOCKS else BLOCKS[name](s)

    new_texts = []
    for f in files:
        p = Path(f)
        text = read_user_text(p, f"document '{f}'")
        if not _BLOCK_RE.search(text):
            raise UserError(f"document '{f}' has no <!-- BEGIN generated:NAME --> block")
        new_texts.append((p, text, regenerate_blocks(text, render, where=f"document '{f}'")))
    changed = []
    for p, old, new in new_texts:
        if new != old:
            atomic_write_text(p, new)
            changed.append(p)
    return changed
