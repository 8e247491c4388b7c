"""Training for several epochs (`training/plan.py` epochs, `curate train --epochs`): each pass holds every row once,
later passes in fresh seeded orders recorded in the run's plan, a bit-identical resume mid-epoch, and the
row -> step mapping that `curate score` windows of such a run rely on (`pipelines/score_job.py`)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.training.plan import TrainingPlan, epoch_steps, plan_from_json, resolve_stream, with_epochs
from curate.training.spec import TrainSpec, steps_of_epochs
from curate.training.trainer import train
from tests.corpus_helpers import run_cli
from tests.test_training import TINY, VOCAB, copy_rows, write_corpus

ROWS = 48  # 6 steps of 8 per epoch
BATCH = 8


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("epochs") / "c", copy_rows(ROWS, 3))


@pytest.fixture(scope="module")
def heldout_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("epochs") / "h", copy_rows(60, 4), heldout_start=40)


def plan_of(epochs: int, seed: int = 0, **extra) -> TrainingPlan:
    return plan_from_json({"epochs": epochs, "epoch_seed": seed, **extra}, Path("/"), "p")


def test_two_epochs_hold_each_row_twice_in_different_orders(small_corpus):
    base = open_corpus(small_corpus)
    plan = plan_of(2)
    stream = resolve_stream(plan, base, BATCH, 2 * ROWS // BATCH)
    rows = stream.row.tolist()
    assert Counter(Counter(rows).values()) == {2: ROWS}  # every row exactly twice
    first, second = rows[:ROWS], rows[ROWS:]
    assert first == list(range(ROWS))  # the first epoch is the corpus's own order (the one-epoch run's stream)
    assert sorted(second) == list(range(ROWS)) and second != first  # a fresh order for the second
    # the same seed gives the same plan and stream; another seed another order
    assert resolve_stream(plan_of(2), base, BATCH, 12).row.tolist() == rows
    assert resolve_stream(plan_of(2, seed=1), base, BATCH, 12).row.tolist()[ROWS:] != second
    # three epochs: three different orders, each a permutation
    three = resolve_stream(plan_of(3), base, BATCH, 3 * ROWS // BATCH).row.reshape(3, ROWS)
    assert three[1].tolist() == second and three[2].tolist() != second and sorted(three[2].tolist()) == list(range(ROWS))
    # drops leave every pass
    dropped = resolve_stream(plan_of(2, drop=[0, 5]), base, BATCH, (2 * (ROWS - 2)) // BATCH).row.tolist()
    assert 0 not in dropped and 5 not in dropped and Counter(dropped)[7] == 2
    # more steps than the epochs hold: one line naming both
    with pytest.raises(CurateError, match=r"2 passes over its rows\), but 13 steps"):
        resolve_stream(plan, base, BATCH, 13)


def test_epochs_are_recorded_in_the_plan_and_its_hash():
    one, two = TrainingPlan(), with_epochs(TrainingPlan(), 2, 7)
    assert one.to_json() == {"version": 1} and one.is_baseline  # a one-epoch plan is what it was before epochs
    assert two.to_json() == {"version": 1, "epochs": 2, "epoch_seed": 7} and not two.is_baseline
    assert len({one.plan_hash(), two.plan_hash(), with_epochs(TrainingPlan(), 2, 8).plan_hash()}) == 3
    assert plan_from_json(two.to_json(), Path("/"), "p").to_json() == two.to_json()
    with pytest.raises(CurateError, match="sets 2 epochs"):
        with_epochs(two, 3, 7)
    with pytest.raises(CurateError, match="epochs must be a whole number"):
        plan_from_json({"epochs": 0}, Path("/"), "p")


def test_epochs_skip_the_heldout_rows(heldout_corpus):
    base = open_corpus(heldout_corpus)
    plan = plan_of(2)
    assert epoch_steps(plan, base, BATCH) == 10  # 2 x 40 training rows
    rows = resolve_stream(plan, base, BATCH, 10).row
    assert rows.max() < 40 and Counter(rows.tolist())[39] == 2


def spec(corpus: Path, **kw) -> TrainSpec:
    base = dict(corpus=str(corpus), model_config={**TINY, "vocab_size": VOCAB}, steps=12, eval_every=4,
                checkpoints="every:4", warmup_steps=2, heldout_rows=0, eval_probes=4, probe_half_len=8, epochs=2)
    base.update(kw)
    return TrainSpec(**base)


class Stop(Exception):
    pass


def test_resume_in_the_second_epoch_is_bit_identical(small_corpus, tmp_path):
    assert steps_of_epochs(spec(small_corpus)) == 12
    seen: list[int] = []
    whole = train(spec(small_corpus), tmp_path / "whole", progress=False,
                  on_batch=lambda step, src, rows, tokens: seen.extend(rows.tolist()))
    assert Counter(Counter(seen).values()) == {2: ROWS}

    def kill(step, src, rows, tokens):
        if step == 10:  # step 8 is the second epoch's third step
            raise Stop

    with pytest.raises(Stop):
        train(spec(small_corpus), tmp_path / "run", progress=False, on_batch=kill)
    resumed = train(spec(small_corpus), tmp_path / "run", progress=False, resume=True)
    assert resumed.resumed_from == 8 and resumed.fingerprint == whole.fingerprint
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan == {"version": 1, "epochs": 2, "epoch_seed": 0}
    stream = pq.read_table(tmp_path / "run" / "stream.parquet").to_pydict()
    assert stream["row_id"] == seen and stream["step"] == [i // BATCH for i in range(12 * BATCH)]
    other_seed = train(spec(small_corpus, seed=1, steps=7, checkpoints="none"), tmp_path / "seed1", progress=False)
    rows1 = pq.read_table(tmp_path / "seed1" / "stream.parquet").column("row_id").to_pylist()
    assert rows1[:ROWS] == seen[:ROWS] and rows1[ROWS:] != seen[ROWS:56]
    assert other_seed.final_step == 7


def test_cli_epochs_train_every_whole_step(small_corpus, tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "vocab_size": VOCAB}))
    common = ["train", "--corpus", small_corpus, "--config", config, "--eval-every", "6", "--checkpoints", "none",
              "--quiet", "--json"]
    code, out, err = run_cli([*common, "--epochs", "3", "--out", tmp_path / "run"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 18  # 3 x 48 rows / 8
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["spec"]["epochs"] == 3 and run["spec"]["plan"] is None
    rows = pq.read_table(tmp_path / "run" / "stream.parquet").column("row_id").to_pylist()
    assert Counter(Counter(rows).values()) == {3: ROWS}
    code, out, err = run_cli([*common, "--epochs", "0", "--out", tmp_path / "bad"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --epochs must be at least 1") and not (tmp_path / "bad").exists()
    code, out, err = run_cli([*common, "--epochs", "2", "--steps", "13", "--out", tmp_path / "bad"], monkeypatch, capsys)
    assert code == 2 and "need 104; train fewer steps or more epochs" in err and not (tmp_path / "bad").exists()


def test_score_windows_of_an_epochs_run_map_rows_to_their_steps(small_corpus, tmp_path):
    """A window inside the first epoch is rows [start*B, end*B) of the corpus, exactly the rows those steps trained
    on; a window from 0 past it is scored as the first epoch's steps (every row, once); a later start is refused."""
    from curate.pipelines.score_job import _first_epoch_window

    base = open_corpus(small_corpus)
    stream = resolve_stream(plan_of(3), base, BATCH, 18)
    for start, end in ((0, 6), (2, 5)):
        assert _first_epoch_window(start, end, BATCH, base, 3, []) == end
        assert stream.row[start * BATCH : end * BATCH].tolist() == list(range(start * BATCH, end * BATCH))
    notes: list[str] = []
    assert _first_epoch_window(0, 15, BATCH, base, 3, notes) == 6
    assert "scored as 0:6" in notes[0] and "2.5 epochs" in notes[0]
    assert set(stream.row[: 15 * BATCH].tolist()) == set(range(6 * BATCH))  # the window trained on every row
    with pytest.raises(CurateError, match=r"window 3:8 reaches past the first epoch \(steps 0:6\)"):
        _first_epoch_window(3, 8, BATCH, base, 3, [])
