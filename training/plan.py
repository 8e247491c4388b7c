"""Training plans: which rows a run drops, which extra rows it inserts where, and the resulting row stream.

A plan is a JSON file (relative paths inside it are relative to the plan file's folder):

    {
      "version": 1,
      "corpus": "mix/",                 # optional: base corpus (default: the run's --corpus)
      "order": [5, 3, 9, ...],          # optional: explicit base row order (or "order_file")
      "drop": [17, 4031, ...],          # optional: base row ids to remove (or "drop_file")
      "insert": [                       # optional
        {"step": 900, "corpus": "synthetic/", "rows": [0, 1, 2]},    # one block (or "rows_file")
        {"steps": [200, 400], "corpus": "top/"}                      # spread evenly, all rows of top/
      ],
      "epochs": 3, "epoch_seed": 0,     # optional: passes over the rows (default 1), each later one reshuffled
      "note": "free text"
    }

A plan may also be just a corpus path (e.g. a mix built by `build-mix`, which ships its rows in
training order): the stream is then that corpus's rows in order. The baseline is the empty plan.
Row-id files (`*_file`) are `.npy` (1-D integers), `.json` (a list), `.parquet` (a `row_id`
column) or text (one id per line, `#` comments).

Stream semantics (what "the same order" means in experiments), with B = batch size:
1. Base stream S0 = the base corpus rows in `order` (default 0, 1, ..., N-1) with every row whose id
   is in `drop` removed (all its occurrences; later rows move up to fill the gap). With `epochs` E > 1,
   S0 is E passes over those rows (without an order: the rows before the corpus's held-out rows,
   `heldout_start`, when it has them), one after the other: the first in that order (the corpus's own
   training order, so a multi-epoch run's first epoch is the one-epoch run's stream), pass e >= 1 in
   the seeded permutation `epoch_order(rows, epoch_seed, e)`. Epochs need not end on a step boundary:
   with P rows per pass, step k holds stream positions [k*B, (k+1)*B), which may straddle two passes.
2. Every inserted row gets an anchor, a position in S0: a block at `step` s anchors all its rows at
   s*B; a spread over `steps` [a, b) anchors its j-th of n rows at a*B + floor(j*(b-a)*B/n).
3. The stream is S0 with each inserted row placed immediately BEFORE the S0 row at its anchor;
   inserted rows with the same anchor keep plan order (insertions in file order, rows in list order).
4. Step k trains on stream positions [k*B, (k+1)*B). So without drops and earlier insertions, a
   block inserted at step s is exactly the batches from step s on, and the S0 rows that step s
   would have seen come right after it; every S0 row keeps its relative order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.corpus import Corpus, open_corpus, training_rows
from curate.errors import CurateError

PLAN_VERSION = 1
PLAN_KEYS = {"version", "corpus", "order", "order_file", "drop", "drop_file", "insert", "epochs", "epoch_seed", "note"}
INSERT_KEYS = {"step", "steps", "corpus", "rows", "rows_file", "note"}
BASE_SOURCE = 0


@dataclass
class Insertion:
    """Extra rows from `corpus` (ids `rows`, or all its rows when None) placed at `step` or spread over `steps`."""

    corpus: str
    rows: np.ndarray | None = None
    step: int | None = None
    steps: tuple[int, int] | None = None

    def first_step(self) -> int:
        return self.step if self.step is not None else self.steps[0]  # type: ignore[index]

    def to_json(self) -> dict:
        out: dict = {"corpus": self.corpus}
        if self.rows is not None:
            out["rows"] = [int(r) for r in self.rows]
        if self.step is not None:
            out["step"] = self.step
        else:
            out["steps"] = list(self.steps)  # type: ignore[arg-type]
        return out


@dataclass
class TrainingPlan:
    """A resolved plan (absolute paths, row ids as arrays); the empty plan is the baseline."""

    corpus: str | None = None
    order: np.ndarray | None = None
    drop: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    insert: list[Insertion] = field(default_factory=list)
    note: str = ""
    source: str | None = None  # the file or corpus path it was loaded from
    epochs: int = 1  # passes over the base rows; pass e >= 1 in the permutation epoch_order(..., epoch_seed, e)
    epoch_seed: int = 0

    @property
    def is_baseline(self) -> bool:
        return self.corpus is None and self.order is None and len(self.drop) == 0 and not self.insert and self.epochs == 1

    def to_json(self) -> dict:
        """Self-contained JSON form (absolute paths, ids inline): what a run folder records in plan.json."""
        out: dict = {"version": PLAN_VERSION}
        if self.corpus is not None:
            out["corpus"] = self.corpus
        if self.order is not None:
            out["order"] = [int(r) for r in self.order]
        if len(self.drop):
            out["drop"] = [int(r) for r in self.drop]
        if self.insert:
            out["insert"] = [ins.to_json() for ins in self.insert]
        if self.epochs != 1:  # one epoch is left out, so plans (and their hashes) from before epochs are unchanged
            out["epochs"] = self.epochs
            out["epoch_seed"] = self.epoch_seed
        if self.note:
            out["note"] = self.note
        return out

    def plan_hash(self, legacy: bool = False) -> str:
        """Short sha256 of the canonical JSON form (the note excluded: it does not change the stream), corpora
        by their content (`legacy`: by their absolute paths, as runs recorded it before content keys)."""
        body = self.to_json()
        body.pop("note", None)
        if not legacy:
            if "corpus" in body:
                body["corpus"] = corpus_key(body["corpus"])
            for ins in body.get("insert", []):
                ins["corpus"] = corpus_key(ins["corpus"])
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def corpus_key(path: str | None) -> str | None:
    """A corpus named by its content (`Corpus.content_key`), so moving it keeps the hashes that name it;
    a path that opens no corpus stays a path."""
    if path is None:
        return None
    try:
        return "content:" + open_corpus(path).content_key()
    except (CurateError, OSError):
        return str(Path(path).expanduser().resolve())


# ---- loading --------------------------------------------------------------------------------------
def read_row_ids(path: Path, what: str) -> np.ndarray:
    """Row ids from a `.npy`, `.json`, `.parquet` (`row_id` column) or text file, as int64."""
    if not path.is_file():
        raise CurateError(f"{path}: {what} file not found")
    try:
        if path.suffix == ".npy":
            ids = np.load(path)
        elif path.suffix == ".json":
            ids = np.asarray(json.loads(path.read_text()))
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            if "row_id" not in table.column_names:
                raise CurateError(f"{path}: no 'row_id' column (columns: {', '.join(table.column_names)})")
            ids = table.column("row_id").to_numpy()
        else:
            lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
            ids = np.asarray([int(ln) for ln in lines if ln], dtype=np.int64)
    except CurateError:
        raise
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise CurateError(f"{path}: cannot read {what} row ids ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return _as_ids(ids, f"{path}")


def _as_ids(value: object, where: str) -> np.ndarray:
    """Validate a list/array of non-negative integer row ids."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise CurateError(f"{where}: expected a list of integer row ids")
        arr = np.asarray(value, dtype=np.int64)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise CurateError(f"{where}: expected a 1-D list of integer row ids")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise CurateError(f"{where}: negative row id {int(arr.min())}")
    return arr


def _step_value(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CurateError(f"{where}: expected a non-negative integer step, got {value!r}")
    return value


def _path(base: Path, value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CurateError(f"{where}: expected a path string")
    p = Path(value).expanduser()
    return str((base / p).resolve() if not p.is_absolute() else p)


def plan_from_json(raw: object, base_dir: Path, where: str) -> TrainingPlan:
    """Parse and validate a plan's JSON object (paths relative to `base_dir`); `where` names it in errors."""
    if not isinstance(raw, dict):
        raise CurateError(f"{where}: a plan is a JSON object")
    unknown = sorted(set(raw) - PLAN_KEYS)
    if unknown:
        raise CurateError(f"{where}: unknown plan key {unknown[0]!r} (known: {', '.join(sorted(PLAN_KEYS))})")
    version = raw.get("version", PLAN_VERSION)
    if version != PLAN_VERSION:
        raise CurateError(f"{where}: unsupported plan version {version!r} (expected {PLAN_VERSION})")
    plan = TrainingPlan(source=where)
    if "corpus" in raw:
        plan.corpus = _path(base_dir, raw["corpus"], f"{where}: corpus")
    for key in ("order", "drop"):
        if key in raw and f"{key}_file" in raw:
            raise CurateError(f"{where}: give {key!r} or {key + '_file'!r}, not both")
    if "order" in raw:
        plan.order = _as_ids(raw["order"], f"{where}: order")
    if "order_file" in raw:
        plan.order = read_row_ids(Path(_path(base_dir, raw["order_file"], f"{where}: order_file")), "order")
    if "drop" in raw:
        plan.drop = _as_ids(raw["drop"], f"{where}: drop")
    if "drop_file" in raw:
        plan.drop = read_row_ids(Path(_path(base_dir, raw["drop_file"], f"{where}: drop_file")), "drop")
    if len(plan.drop):
        uniq, counts = np.unique(plan.drop, return_counts=True)
        if (counts > 1).any():
            raise CurateError(f"{where}: drop lists row {int(uniq[counts > 1][0])} more than once")
    if "note" in raw:
        if not isinstance(raw["note"], str):
            raise CurateError(f"{where}: note must be a string")
        plan.note = raw["note"]
    if "epochs" in raw:
        epochs = raw["epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise CurateError(f"{where}: epochs must be a whole number of at least 1, got {epochs!r}")
        plan.epochs = epochs
    if "epoch_seed" in raw:
        if isinstance(raw["epoch_seed"], bool) or not isinstance(raw["epoch_seed"], int) or raw["epoch_seed"] < 0:
            raise CurateError(f"{where}: epoch_seed must be a non-negative integer, got {raw['epoch_seed']!r}")
        plan.epoch_seed = raw["epoch_seed"]
    inserts = raw.get("insert", [])
    if not isinstance(inserts, list):
        raise CurateError(f"{where}: insert must be a list of objects")
    for i, item in enumerate(inserts):
        plan.insert.append(_insertion_from_json(item, base_dir, f"{where}: insert[{i}]"))
    return plan


def _insertion_from_json(item: object, base_dir: Path, where: str) -> Insertion:
    if not isinstance(item, dict):
        raise CurateError(f"{where}: expected an object with step/steps, corpus and rows")
    unknown = sorted(set(item) - INSERT_KEYS)
    if unknown:
        raise CurateError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(INSERT_KEYS))})")
    if "corpus" not in item:
        raise CurateError(f"{where}: missing 'corpus'")
    if ("step" in item) == ("steps" in item):
        raise CurateError(f"{where}: give exactly one of 'step' (a block) or 'steps' ([first, end) to spread over)")
    ins = Insertion(corpus=_path(base_dir, item["corpus"], f"{where}: corpus"))
    if "step" in item:
        ins.step = _step_value(item["step"], f"{where}: step")
    else:
        span = item["steps"]
        if not isinstance(span, list) or len(span) != 2:
            raise CurateError(f"{where}: steps must be [first, end)")
        a, b = (_step_value(v, f"{where}: steps") for v in span)
        if b <= a:
            raise CurateError(f"{where}: steps [{a}, {b}) is empty")
        ins.steps = (a, b)
    if "rows" in item and "rows_file" in item:
        raise CurateError(f"{where}: give 'rows' or 'rows_file', not both")
    if "rows" in item:
        ins.rows = _as_ids(item["rows"], f"{where}: rows")
    if "rows_file" in item:
        ins.rows = read_row_ids(Path(_path(base_dir, item["rows_file"], f"{where}: rows_file")), "insert")
    if ins.rows is not None and len(ins.rows) == 0:
        raise CurateError(f"{where}: rows is empty")
    return ins


def load_plan(path: str | Path | None) -> TrainingPlan:
    """A plan from a JSON file, or a corpus path whose rows are the stream in order; None = the baseline."""
    if path is None:
        return TrainingPlan()
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".json" and p.name != "corpus.json":
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CurateError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return plan_from_json(raw, p.parent.resolve(), str(p))
    if p.name == "corpus.json" and p.is_file():
        p = p.parent
    if not p.exists() and not p.with_name(p.name + ".idx").is_file():
        raise CurateError(f"{p}: plan not found (expected a plan .json file or a corpus path)")
    open_corpus(p)  # validates; one line on failure
    return TrainingPlan(corpus=str(p.resolve()), source=str(p))


# ---- epochs ---------------------------------------------------------------------------------------
def epoch_order(rows: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The rows of one pass in training order: epoch 0 as given, epoch e >= 1 permuted by a generator seeded
    with (seed, e), so every pass has its own order and the same seed gives the same passes."""
    if epoch == 0:
        return rows
    return rows[np.random.default_rng([int(seed), int(epoch)]).permutation(len(rows))]


def with_epochs(plan: TrainingPlan, epochs: int | None, seed: int) -> TrainingPlan:
    """`plan` trained for `epochs` passes shuffled with `seed` (None: as the plan says); a plan that sets its own
    epochs must agree."""
    if epochs is None or (epochs == plan.epochs and (epochs == 1 or seed == plan.epoch_seed)):
        return plan
    if plan.epochs != 1:
        raise CurateError(f"{plan.source or 'plan'}: sets {plan.epochs} epochs (seed {plan.epoch_seed}); "
                          f"the run asks for {epochs} (seed {seed})")
    if epochs < 1:
        raise CurateError(f"epochs must be at least 1, got {epochs}")
    if epochs > 1 and seed < 0:
        raise CurateError(f"the epochs are shuffled with the run's seed, which must not be negative (got {seed})")
    return replace(plan, epochs=int(epochs), epoch_seed=int(seed) if epochs > 1 else 0)


def epoch_rows(plan: TrainingPlan, base: Corpus) -> int:
    """Rows of one pass over the base corpus under `plan` (its order, less its drops)."""
    n = len(plan.order) if plan.order is not None else training_rows(base)
    if not len(plan.drop):
        return n
    order = plan.order if plan.order is not None else np.arange(n, dtype=np.int64)
    return int((~np.isin(order, plan.drop)).sum())


def epoch_steps(plan: TrainingPlan, base: Corpus, batch_size: int) -> int:
    """Whole steps of `plan.epochs` passes plus the plan's inserted rows (when the rows do not fill the last step,
    its rows go untrained)."""
    inserted = 0
    for ins in plan.insert:
        inserted += len(ins.rows) if ins.rows is not None else open_corpus(ins.corpus).num_rows
    return (plan.epochs * epoch_rows(plan, base) + inserted) // batch_size


# ---- the row stream -------------------------------------------------------------------------------
@dataclass
class RowStream:
    """The rows a run trains on, position by position: `sources[source[i]]` row `row[i]`."""

    sources: list[Corpus]
    source: np.ndarray  # int32 per stream position; 0 = the base corpus
    row: np.ndarray  # int64 row id inside its source corpus
    batch_size: int

    @property
    def row_len(self) -> int:
        return self.sources[BASE_SOURCE].row_len

    @property
    def num_steps(self) -> int:
        return len(self.row) // self.batch_size

    def positions(self, step: int) -> slice:
        return slice(step * self.batch_size, (step + 1) * self.batch_size)

    def batch_ids(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, row id) of each row of step `step`'s batch."""
        s = self.positions(step)
        return self.source[s], self.row[s]

    def read_batch(self, step: int) -> np.ndarray:
        """Step `step`'s rows as an int64 array (batch_size, row_len)."""
        src, rows = self.batch_ids(step)
        if len(rows) != self.batch_size:
            raise CurateError(f"step {step} is past the end of the row stream ({self.num_steps} steps)")
        out = np.empty((len(rows), self.row_len), dtype=np.int64)
        for s in np.unique(src):
            mask = src == s
            out[mask] = self.sources[int(s)].take(rows[mask])
        return out


def resolve_stream(
    plan: TrainingPlan,
    base: Corpus,
    batch_size: int,
    steps: int,
    start_step: int = 0,
) -> RowStream:
    """The stream of the first `steps` batches under `plan` on `base` (the plan's corpus when it names one).

    Validates the plan against the corpora and the run (row ids in range, row lengths, steps inside
    [start_step, steps)); every problem is one CurateError line.
    """
    where = plan.source or "plan"
    needed = steps * batch_size
    n = base.num_rows
    if plan.order is not None:
        if len(plan.order) and plan.order.max() >= n:
            raise CurateError(f"{where}: order names row {int(plan.order.max())}, but {base.path} has {n} rows")
        order = plan.order
    elif plan.epochs > 1:
        order = np.arange(training_rows(base), dtype=np.int64)  # every pass holds all the training rows
    else:
        order = np.arange(min(n, needed + len(plan.drop)), dtype=np.int64)
    if len(plan.drop):
        if plan.drop.max() >= n:
            raise CurateError(f"{where}: drop names row {int(plan.drop.max())}, but {base.path} has {n} rows")
        if plan.order is not None:
            missing = np.setdiff1d(plan.drop, plan.order)
            if len(missing):
                raise CurateError(f"{where}: drop names row {int(missing[0])}, which is not in the plan's order")
        base_stream = order[~np.isin(order, plan.drop)]
    else:
        base_stream = order
    if plan.epochs > 1:
        base_stream = np.concatenate([epoch_order(base_stream, plan.epoch_seed, e) for e in range(plan.epochs)])
    base_stream = base_stream[:needed]

    sources: list[Corpus] = [base]
    source_index: dict[str, int] = {}
    ins_anchor: list[np.ndarray] = []
    ins_source: list[np.ndarray] = []
    ins_row: list[np.ndarray] = []
    for i, ins in enumerate(plan.insert):
        here = f"{where}: insert[{i}]"
        last = ins.step if ins.step is not None else ins.steps[1] - 1  # type: ignore[index]
        if ins.first_step() < start_step:
            raise CurateError(f"{here}: step {ins.first_step()} is before the run's start step {start_step}")
        if last >= steps:
            raise CurateError(f"{here}: step {last} is not before the run's end (step {steps}); the rows would never be seen")
        key = str(Path(ins.corpus).resolve())
        if key not in source_index:
            corpus = open_corpus(ins.corpus)
            if Path(corpus.path).resolve() == Path(base.path).resolve():
                source_index[key] = BASE_SOURCE  # rows of the base corpus itself (e.g. duplicating top rows)
            else:
                if corpus.row_len != base.row_len:
                    raise CurateError(f"{here}: {ins.corpus} has rows of {corpus.row_len} tokens, the base corpus {base.row_len}")
                source_index[key] = len(sources)
                sources.append(corpus)
        s = source_index[key]
        corpus = sources[s]
        rows = np.arange(corpus.num_rows, dtype=np.int64) if ins.rows is None else ins.rows
        if len(rows) == 0:
            raise CurateError(f"{here}: {ins.corpus} has no rows")
        if rows.max() >= corpus.num_rows:
            raise CurateError(f"{here}: row {int(rows.max())} is outside {ins.corpus} ({corpus.num_rows} rows)")
        if ins.step is not None:
            anchor = np.full(len(rows), ins.step * batch_size, dtype=np.int64)
        else:
            a, b = ins.steps  # type: ignore[misc]
            anchor = a * batch_size + (np.arange(len(rows), dtype=np.int64) * (b - a) * batch_size) // len(rows)
        if anchor[0] > len(base_stream):
            raise CurateError(
                f"{here}: step {ins.first_step()} lies past the end of the base rows ({len(base_stream)} rows after drops)"
            )
        ins_anchor.append(anchor)
        ins_source.append(np.full(len(rows), s, dtype=np.int32))
        ins_row.append(rows)

    if ins_anchor:
        anchor = np.concatenate(ins_anchor)
        keep = anchor <= len(base_stream)
        anchor, isrc, irow = anchor[keep], np.concatenate(ins_source)[keep], np.concatenate(ins_row)[keep]
        order_ins = np.argsort(anchor, kind="stable")
        anchor, isrc, irow = anchor[order_ins], isrc[order_ins], irow[order_ins]
        total = len(base_stream) + len(anchor)
        source = np.empty(total, dtype=np.int32)
        row = np.empty(total, dtype=np.int64)
        ins_pos = anchor + np.arange(len(anchor), dtype=np.int64)
        base_pos = np.arange(len(base_stream), dtype=np.int64) + np.searchsorted(anchor, np.arange(len(base_stream)), side="right")
        source[ins_pos], row[ins_pos] = isrc, irow
        source[base_pos], row[base_pos] = BASE_SOURCE, base_stream
    else:
        source = np.zeros(len(base_stream), dtype=np.int32)
        row = base_stream.astype(np.int64)
    if len(row) < needed:
        passes = f"{plan.epochs} passes over its rows" if plan.epochs > 1 else "one pass over its rows"
        raise CurateError(
            f"{base.path}: the plan leaves {len(row)} rows ({passes}), but {steps} steps at batch size {batch_size} "
            f"need {needed}; train fewer steps or more epochs"
        )
    return RowStream(sources=sources, source=source[:needed], row=row[:needed], batch_size=batch_size)
