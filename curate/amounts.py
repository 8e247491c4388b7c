"""Row amounts: a share of a total (`10%`, or a fraction `0.1`) or a row count (`500`) -> k rows.

The one rounding rule: a share gives k = ceil(total * pct / 100), at least 1 (10% of 64 rows = 7;
2% of 54,400 = 1,088); the arithmetic is exact (decimal text, no float error). A share must lie in
(0%, 100%] (a fraction in (0, 1]); a count must be at least 1 and at most the total. Bad text is one
CurateError line that names the text, not a command-line option (the caller may prefix its own name).
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

from curate.errors import CurateError

_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")
_FRACTION = re.compile(r"\d*\.\d*")
_COUNT = re.compile(r"\d+")
USAGE = "expected a percentage in (0, 100] like 10%, a fraction in (0, 1] like 0.1, or a row count like 500"


def _label(text: object, what: str) -> str:
    return f"{what} {text!r}" if what else repr(text)


def _parse(text: object, what: str) -> tuple[Fraction | None, int | None]:
    """(share in (0, 1], None) or (None, count >= 1); syntax only."""
    raw = str(text).strip()
    m = _PERCENT.fullmatch(raw)
    if m:
        share = Fraction(m.group(1)) / 100
    elif _COUNT.fullmatch(raw):
        count = int(raw)
        if count < 1:
            raise CurateError(f"{_label(text, what)}: must be at least 1 row")
        return None, count
    elif _FRACTION.fullmatch(raw) and raw != ".":
        share = Fraction(raw)
    else:
        raise CurateError(f"{_label(text, what)}: {USAGE}")
    if not 0 < share <= 1:
        raise CurateError(f"{_label(text, what)}: {USAGE}")
    return share, None


def check_amount(text: object, what: str = "") -> None:
    """Reject malformed amount text before the total is known."""
    _parse(text, what)


def parse_amount(text: object, total: int, what: str = "") -> int:
    """The number of rows `text` asks for out of `total` (see the module docstring for the rule)."""
    share, count = _parse(text, what)
    if count is not None:
        if count > total:
            raise CurateError(f"{_label(text, what)}: more rows than the {total} there are")
        return count
    assert share is not None
    return max(1, math.ceil(total * share))
