"""The measured reason as a script: how much of the window's copy mass each method's top rows hold.

    python bench/copy_mass.py SCORES [SCORES ...] [--top 10%] [--copy COPY_SHARE_SCORES] [--json]

Each SCORES is a scores folder of the same window (`curate score` / an experiment's EXP/scores, EXP/scores-<method>),
optionally named NAME=FOLDER (default name: the summary's method, `-trajectory` added for trajectory scores). The
copy statistic is copy-share's per-row score (the share of a row's 4-grams that repeat an earlier 4-gram of the
row), read from the copy-share folder among the arguments (or --copy); the window's copy mass is its sum over the
window's rows. Prints:
- per folder, and per checkpoint of trajectory scores (`checkpoints/stepK/`): the share of the copy mass its top
  rows (highest score first, ties by lower row) hold, and the share of its top rows among copy-share's top rows;
  beside the copy mass a random set of that size holds on average (the top share of rows);
- the pairwise overlaps of the folders' top rows (|A and B| / top rows).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.amounts import parse_amount
from curate.attribution.scores_folder import open_scores, read_window
from curate.augment.mix import rank_rows, window_scores
from curate.errors import CurateError

COPY_METHOD = "copy-share"
TRAJECTORY_DIR = "checkpoints"  # pipelines.score_trajectory.CHECKPOINTS_DIR


@dataclass
class Entry:
    """One scores folder (or one checkpoint of a trajectory folder) read over the window."""

    name: str
    folder: Path
    values: np.ndarray  # score per window row (window-relative), NaN where unscored
    method: str | None
    window: tuple[int, int, int]  # start step, end step, batch size


def read_entry(name: str | None, folder: Path) -> Entry:
    scores = open_scores(folder)
    w = read_window(scores)
    method = scores.summary.get("method")
    if name is None:
        name = str(method or folder.name) + ("-trajectory" if scores.summary.get("trajectory") else "")
    return Entry(name, folder, window_scores(scores, w), method, (w.start_step, w.end_step, w.batch_size))


def checkpoint_entries(entry: Entry) -> list[Entry]:
    """The per-checkpoint folders of a trajectory scores folder, in step order (none for a one-checkpoint folder)."""
    root = entry.folder / TRAJECTORY_DIR
    if not root.is_dir():
        return []
    steps = sorted((int(p.name[4:]), p) for p in root.iterdir() if p.name.startswith("step") and p.name[4:].isdigit())
    return [read_entry(f"{entry.name}@step{step}", path) for step, path in steps]


def top_rows(values: np.ndarray, n: int, where: str) -> np.ndarray:
    ranked = rank_rows(values)
    if len(ranked) < n:
        raise CurateError(f"{where}: {len(ranked)} window rows are scored, fewer than the {n} top rows")
    return ranked[:n]


def copy_mass_share(copy: np.ndarray, rows: np.ndarray) -> float:
    """The share of the window's copy mass held by `rows`."""
    total = float(copy.sum())
    if total <= 0:
        raise CurateError("the window has no copy mass (every row's copy-share is 0)")
    return float(copy[rows].sum()) / total


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """|A and B| / |A| for two top sets of the same size."""
    return len(np.intersect1d(a, b)) / len(a)


def measure(entries: list[Entry], copy_entry: Entry, top: str) -> dict:
    """Every number the script prints."""
    rows = len(copy_entry.values)
    if np.isnan(copy_entry.values).any():
        raise CurateError(f"{copy_entry.folder}: the copy-share scores leave window rows unscored")
    for e in entries:
        if e.window != copy_entry.window:
            raise CurateError(f"{e.folder}: scores the window {e.window[0]}:{e.window[1]} at batch {e.window[2]}, not "
                              f"the copy-share folder's {copy_entry.window[0]}:{copy_entry.window[1]} at batch {copy_entry.window[2]}")
    n = parse_amount(top, rows, "top")
    copy = copy_entry.values
    copy_top = top_rows(copy, n, str(copy_entry.folder))
    shares, tops = [], {}
    for e in entries:
        for part in [e, *checkpoint_entries(e)]:
            chosen = top_rows(part.values, n, str(part.folder))
            shares.append({"name": part.name, "top_share": copy_mass_share(copy, chosen), "checkpoint": part is not e,
                           "copy_overlap": overlap(chosen, copy_top)})
            if part is e:
                tops[e.name] = chosen
    names = list(tops)
    overlaps = [{"a": a, "b": b, "overlap": overlap(tops[a], tops[b])} for i, a in enumerate(names) for b in names[i + 1:]]
    return {"window_rows": rows, "top_rows": n, "top": top, "random_share": n / rows, "copy_mass": float(copy.sum()),
            "shares": shares, "overlaps": overlaps}


def table(result: dict) -> str:
    lines = [f"window: {result['window_rows']:,} rows, copy mass {result['copy_mass']:.1f}; top {result['top']} = "
             f"{result['top_rows']:,} rows (a random set of that size holds {100 * result['random_share']:.1f}% on average)",
             "", "| scores | copy mass in the top rows | overlap with copy-share's top rows |", "|---|---|---|"]
    for s in result["shares"]:
        lines.append(f"| {'  ' if s['checkpoint'] else ''}{s['name']} | {100 * s['top_share']:.1f}% | {100 * s['copy_overlap']:.1f}% |")
    if result["overlaps"]:
        lines += ["", "| top rows of | and of | overlap |", "|---|---|---|"]
        lines += [f"| {o['a']} | {o['b']} | {100 * o['overlap']:.1f}% |" for o in result["overlaps"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scores", nargs="+", help="Scores folders of the same window, FOLDER or NAME=FOLDER.")
    p.add_argument("--top", default="10%", help="The top rows: a share of the window (10%%), a fraction or a count.")
    p.add_argument("--copy", default=None, help="The copy-share scores folder (default: the copy-share folder among SCORES).")
    p.add_argument("--json", action="store_true", help="Print the numbers as JSON.")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    entries = []
    for item in args.scores:
        name, sep, folder = item.partition("=")
        entries.append(read_entry(name if sep else None, Path(folder if sep else item)))
    if args.copy is not None:
        copy_entry = read_entry(None, Path(args.copy))
    else:
        found = [e for e in entries if e.method == COPY_METHOD]
        if not found:
            raise CurateError(f"no {COPY_METHOD} scores folder among the arguments: add one, or name it with --copy")
        copy_entry = found[0]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CurateError(f"two folders are named alike ({', '.join(names)}): name them NAME=FOLDER")
    result = measure(entries, copy_entry, args.top)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return result


def main() -> None:
    try:
        run()
    except CurateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
