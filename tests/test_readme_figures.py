"""No README figure without its run: every figure in a README paragraph that cites `bench/RESULTS.md` appears there.

The rule, precisely:
- a paragraph is a block of README lines between blank lines; it cites RESULTS when it contains "RESULTS.md";
- a figure is a number written with a decimal point (`1.15`, `0.003`) or followed by a unit (`46 s`, `8 minutes`,
  `3,132 hours`, `1.2x`, `90%`, `4.1M`, `2 GiB`); a version (`0.16.1`) is none, nor is a bare count (`1,024 rows`),
  a step (`step 1,500`) or a flag value;
- it appears in RESULTS when some number there (its own `K`/`M`/`B` suffix applied; versions are no numbers)
  rounds to it at the precision it is written with: `4.1M` matches `4.10M` or `4,096,000`, `1.15` matches `1.15`
  or `1.149`, `46 s` matches `46` or `46.3`. The unit is not compared (RESULTS writes `**1.15**` where the README
  writes `1.15x`), so the check is necessary, not sufficient: a figure must also be the one its run measured.
Figures from the code (a preset's weight decay) belong in paragraphs that do not cite RESULTS.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCALE = {"K": 1e3, "k": 1e3, "M": 1e6, "B": 1e9}
UNITS = r"x|%|s|ms|min|minutes?|hours?|h|days?|GiB|GB|MiB|MB|KiB|tokens/s|rows/s|seconds?"
FIGURE = re.compile(
    rf"(?<![\w.])(?P<int>\d{{1,3}}(?:,\d{{3}})+|\d+)(?P<dec>\.\d+)?(?![\w.]*\.\d)"
    rf"(?:(?P<scale>[KkMB])\b|\s?(?P<unit>{UNITS})(?![\w]))?"
)
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w.]*\.\d)([KkMB])?")
"""A number in RESULTS (a version such as `2.5.1` is none)."""


def figures(text: str) -> list[tuple[str, float, float]]:
    """(as written, value, half of its last digit) of every figure in `text`."""
    out = []
    for m in FIGURE.finditer(text):
        if not (m.group("dec") or m.group("scale") or m.group("unit")):
            continue
        scale = SCALE.get(m.group("scale") or "", 1.0)
        digits = len(m.group("dec") or ".") - 1
        value = float(m.group("int").replace(",", "") + (m.group("dec") or "")) * scale
        out.append((m.group(0), value, 0.5 * 10 ** -digits * scale))
    return out


def recorded_values(text: str) -> list[float]:
    return [float(m.group(1).replace(",", "") + (m.group(2) or "")) * SCALE.get(m.group(3) or "", 1.0)
            for m in NUMBER.finditer(text)]


def citing_paragraphs(readme: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", readme) if "RESULTS.md" in p]


def unrecorded(readme: str, results: str) -> list[tuple[str, str]]:
    """(figure, the paragraph's first words) of each figure a citing paragraph has and RESULTS has not."""
    values = recorded_values(results)
    missing = []
    for para in citing_paragraphs(readme):
        for written, value, half in figures(para):
            if not any(abs(v - value) <= half * (1 + 1e-9) for v in values):
                missing.append((written, " ".join(para.split()[:8])))
    return missing


def test_every_figure_in_a_paragraph_citing_results_is_in_results() -> None:
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    assert citing_paragraphs(readme), "the README cites bench/RESULTS.md nowhere: the rule checks nothing"
    assert unrecorded(readme, results) == []


@pytest.mark.parametrize("text, found", [
    ("took 3,132 hours", [("3,132 hours", 3132.0)]),
    ("158 / 46 s per row", [("46 s", 46.0)]),
    ("1.15x a bare forward", [("1.15x", 1.15)]),
    ("4.1M tokens", [("4.1M", 4.1e6)]),
    ("megatron-core 0.16.1, 1,024 rows, step 1,500", []),
    ("bergson 2.5.1 took 2.5 min", [("2.5 min", 2.5)]),
    ("about 8 minutes", [("8 minutes", 8.0)]),
])
def test_what_counts_as_a_figure(text, found) -> None:
    got = figures(text)
    assert [w for w, _, _ in got] == [w for w, _ in found]
    assert [v for _, v, _ in got] == pytest.approx([v for _, v in found])


def test_the_rule_catches_a_figure_without_a_record_and_accepts_rounding() -> None:
    results = "scored 2,407,522 characters; 4.10M tokens; 1.149 s per row; bergson 2.5.1"
    ok = "A mix of 2.4M characters, 4.1M tokens, 1.15 s per row (`bench/RESULTS.md`)."
    assert unrecorded(ok, results) == []
    bad = "The dry run (`bench/RESULTS.md`)\nmeasured 3,132 hours."
    assert unrecorded(bad, results) == [("3,132 hours", "The dry run (`bench/RESULTS.md`) measured 3,132 hours.")]
    assert unrecorded("3,132 hours, citing nothing", results) == []
    assert unrecorded("took 2.5 min (`bench/RESULTS.md`)", results) == [("2.5 min", "took 2.5 min (`bench/RESULTS.md`)")]
