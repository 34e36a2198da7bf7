"""The README's Python examples as code, for the tests that run them (not a test module)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(marker: str) -> str:
    """The one ```python block of README.md that contains ``marker``."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks containing {marker!r}, expected 1"
    return found[0]


def substitute(code: str, replacements: dict[str, str]) -> str:
    """``code`` with each key replaced by its value; a key that is not there fails (the README changed)."""
    for old, new in replacements.items():
        assert old in code, f"the README block no longer contains {old!r}: update the test"
        code = code.replace(old, new)
    return code
