"""The retraining module: bit-identical resume, plan semantics, schedule, checkpoints, curves, CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPTNeoXForCausalLM

from curate.atomic import write_json
from tests import corpus_helpers
from curate.corpus import CorpusMeta, open_corpus
from curate.errors import CurateError
from curate.megatron import write_megatron
from curate.training.curves import emergence_step, summarize_curves
from curate.attribution.fingerprint import model_fingerprint
from curate.training.models import build_model, config_from_dict, load_model
from curate.training.plan import TrainingPlan, load_plan, plan_from_json, resolve_stream
from curate.training.schedule import lr_at, parse_checkpoint_steps
from curate.training.spec import TrainSpec
from curate.training.trainer import train

VOCAB = 32
ROW_LEN = 33
BATCH = 8
NUM_ROWS = 600
HELDOUT_START = 560
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, rotary_pct=1.0, tie_word_embeddings=False)


def write_corpus(folder: Path, rows: np.ndarray, heldout_start: int | None = None, batch_size: int = BATCH) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_megatron(folder / "corpus", rows, np.uint16)
    extra = {"heldout_start": heldout_start} if heldout_start is not None else {}
    write_json(folder / "corpus.json", CorpusMeta(data="corpus.idx", batch_size=batch_size, vocab_size=VOCAB, extra=extra).to_json())
    return folder


def copy_rows(n: int, seed: int) -> np.ndarray:
    """Random rows in which one span recurs later (some induction signal)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, VOCAB, (n, ROW_LEN))
    for r in rows:
        length = int(rng.integers(4, 12))
        a = int(rng.integers(0, ROW_LEN - 2 * length))
        b = int(rng.integers(a + length, ROW_LEN - length + 1))
        r[b : b + length] = r[a : a + length]
    return rows


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c", copy_rows(NUM_ROWS, 0), HELDOUT_START)


@pytest.fixture(scope="module")
def extra_dir(tmp_path_factory) -> Path:
    """A second corpus (rows that are easy to tell apart: every token of row i is i % VOCAB)."""
    rows = np.repeat((np.arange(40) % VOCAB)[:, None], ROW_LEN, axis=1)
    return write_corpus(tmp_path_factory.mktemp("extra") / "x", rows)


def spec(corpus: Path, **kw) -> TrainSpec:
    base = dict(corpus=str(corpus), model_config=TINY, steps=24, eval_every=8, checkpoints="every:10",
                warmup_steps=5, heldout_rows=16, eval_probes=8, probe_half_len=8)
    base.update(kw)
    return TrainSpec(**base)


class Stop(Exception):
    pass


# ---- resume and checkpoints ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ref"
    return train(spec(corpus_dir), out, progress=False)


def test_resume_after_kill_is_bit_identical(reference_run, corpus_dir, tmp_path):
    def kill(step, src, rows, tokens):
        if step == 17:
            raise Stop

    with pytest.raises(Stop):
        train(spec(corpus_dir), tmp_path / "run", progress=False, on_batch=kill)
    assert not (tmp_path / "run" / "checkpoints" / "step20").exists()
    resumed = train(spec(corpus_dir), tmp_path / "run", progress=False, resume=True)
    assert resumed.resumed_from == 10
    assert resumed.fingerprint == reference_run.fingerprint
    a = load_model(reference_run.final_checkpoint).state_dict()
    b = load_model(resumed.final_checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.dumps(resumed.curves) == json.dumps(reference_run.curves)
    # a finished run resumed again trains nothing and reports the same result
    again = train(spec(corpus_dir), tmp_path / "run", progress=False, resume=True)
    assert again.fingerprint == reference_run.fingerprint


def test_branch_from_reference_checkpoint_reproduces_the_run(reference_run, corpus_dir, tmp_path):
    """--from RUN --revision step10 --resume continues the reference state (optimizer, step, data position)."""
    branch = train(spec(corpus_dir, model_config=None, init_from=str(reference_run.out_dir), revision="step10", init_state=True),
                   tmp_path / "branch", progress=False)
    assert branch.start_step == 10
    assert branch.fingerprint == reference_run.fingerprint
    # the branch inherits the reference's evaluation history up to step 10, so its curves are the whole run's
    assert json.dumps(branch.curves) == json.dumps(reference_run.curves)
    assert branch.summary["emergence"] == reference_run.summary["emergence"]
    # warm start from the same weights with a NEW optimizer: same data position, different trajectory
    warm = train(spec(corpus_dir, model_config=None, init_from=str(reference_run.out_dir / "checkpoints" / "step10")),
                 tmp_path / "warm", progress=False)
    assert warm.start_step == 10
    assert warm.fingerprint != reference_run.fingerprint


def test_checkpoints_load_with_from_pretrained(reference_run):
    ckpts = sorted(p.name for p in (reference_run.out_dir / "checkpoints").iterdir())
    assert ckpts == ["step10", "step20", "step24"]
    model = GPTNeoXForCausalLM.from_pretrained(reference_run.final_checkpoint)
    assert model_fingerprint(model) == reference_run.fingerprint
    assert (reference_run.final_checkpoint / "model.safetensors").is_file()
    state = torch.load(reference_run.out_dir / "checkpoints" / "step10" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 10 and len(state["curves"]) == 2  # evaluations at steps 0 and 8
    via_run = load_model(reference_run.out_dir, revision="step20")
    direct = load_model(reference_run.out_dir / "checkpoints" / "step20")
    assert model_fingerprint(via_run) == model_fingerprint(direct) != reference_run.fingerprint


def test_rerun_into_existing_folder_needs_resume_and_same_spec(reference_run, corpus_dir):
    with pytest.raises(CurateError, match="already holds a run"):
        train(spec(corpus_dir), reference_run.out_dir, progress=False)
    with pytest.raises(CurateError, match="different settings"):
        train(spec(corpus_dir, lr=2e-3), reference_run.out_dir, progress=False, resume=True)


# ---- curves and summary ----------------------------------------------------------------------------
def test_curves_files_and_summary(reference_run):
    import pyarrow.parquet as pq

    out = reference_run.out_dir
    points = json.loads((out / "curves.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 8, 16, 24]
    assert points[0]["loss"] is None and points[1]["loss"] > 0
    assert [p["tokens"] for p in points] == [s * BATCH * (ROW_LEN - 1) for s in (0, 8, 16, 24)]
    assert np.asarray(points[0]["induction"]).shape == (2, 2)
    assert all(p["heldout_loss"] is not None and p["icl"] is not None for p in points)
    assert points[2]["lr"] == pytest.approx(lr_at(15, 1e-3, 5, 24, 0.1))
    table = pq.read_table(out / "curves.parquet")
    assert table.num_rows == 4
    assert {"induction_1_0", "previous_token_0_1", "best_induction", "heldout_loss", "icl"} <= set(table.column_names)
    assert table.column("induction_1_1").to_pylist() == [p["induction"][1][1] for p in points]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["fingerprint"] == reference_run.fingerprint
    assert "rows [560, 576)" in summary["heldout"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_emergence_step_requires_staying_above():
    steps = [0, 100, 200, 300, 400, 500]
    assert emergence_step(steps, [0.0, 0.35, 0.2, 0.31, 0.5, 0.6], 0.3) == 300
    assert emergence_step(steps, [0.0, 0.35, 0.4, 0.5, 0.5, 0.29], 0.3) is None
    assert emergence_step(steps, [0.3] * 6, 0.3) == 0


def test_summary_picks_best_head_above_layer_zero():
    def point(step, ind, prev):
        return {"step": step, "induction": ind, "previous_token": prev, "loss": None, "heldout_loss": None, "icl": None}

    curves = [
        point(0, [[0.9, 0.0], [0.1, 0.05]], [[0.1, 0.0], [0.0, 0.0]]),
        point(10, [[0.9, 0.0], [0.2, 0.35]], [[0.5, 0.0], [0.0, 0.0]]),
        point(20, [[0.9, 0.0], [0.6, 0.2]], [[0.6, 0.0], [0.0, 0.0]]),
    ]
    s = summarize_curves(curves, {"induction": 0.3, "previous_token": 0.3})
    # layer-0 induction (0.9, positional) is ignored; best of layer 1 goes 0.1, 0.35, 0.6
    assert s["induction"]["emergence_step"] == 10 and s["induction"]["final"] == pytest.approx(0.6)
    assert s["induction"]["final_head"] == "1.0" and s["induction"]["emergence_head"] == "1.1"
    assert s["induction"]["half_final_step"] == 10  # 50% of 0.6 = 0.3, reached at 10 and kept
    assert s["previous_token"]["emergence_step"] == 10


def test_summary_table_says_never_formed(capsys, monkeypatch):
    """A circuit that never reached its threshold has no "50% of final" step to show (it is not step 0)."""
    from types import SimpleNamespace

    from curate.commands.train import _print_summary

    def point(step, ind):
        return {"step": step, "induction": ind, "previous_token": [[0.5, 0.0], [0.0, 0.0]], "loss": None,
                "heldout_loss": None, "icl": None}

    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    curves = [point(0, [[0.0, 0.0], [0.02, 0.0]]), point(10, [[0.0, 0.0], [0.004, 0.0]])]
    summary = {"emergence": summarize_curves(curves, {"induction": 0.3, "previous_token": 0.3}), "timing": {}}
    _print_summary(SimpleNamespace(summary=summary, out_dir=Path("run"), final_checkpoint=Path("run/step10")))
    out = capsys.readouterr().out
    induction = next(line for line in out.splitlines() if "induction" in line)
    previous = next(line for line in out.splitlines() if "previous-token" in line)
    cells = [c.strip() for c in induction.split("│")]
    assert "never formed" in cells and "0" not in cells
    cells = [c.strip() for c in previous.split("│")]
    assert "never formed" not in cells and cells.count("0") == 2  # formed at step 0: its 50% step is shown


# ---- schedule and checkpoint specs ----------------------------------------------------------------
def test_lr_schedule_shape():
    lr, warm, total = 1e-3, 10, 110
    assert lr_at(0, lr, warm, total) == pytest.approx(lr / 10)
    assert lr_at(9, lr, warm, total) == pytest.approx(lr)
    assert lr_at(10, lr, warm, total) == pytest.approx(lr)
    assert lr_at(60, lr, warm, total) == pytest.approx(0.1 * lr + 0.9 * lr * 0.5)  # cosine midpoint
    assert lr_at(110, lr, warm, total) == pytest.approx(0.1 * lr)
    assert lr_at(500, lr, warm, total) == pytest.approx(0.1 * lr)
    warmup = [lr_at(s, lr, warm, total) for s in range(warm)]
    decay = [lr_at(s, lr, warm, total) for s in range(warm, total + 1)]
    assert np.all(np.diff(warmup) > 0) and np.allclose(np.diff(warmup), lr / 10)
    assert np.all(np.diff(decay) < 0)


def test_checkpoint_step_specs():
    assert parse_checkpoint_steps("log,every:10", 25) == [0, 1, 2, 4, 8, 10, 16, 20, 25]
    assert parse_checkpoint_steps("log:4", 3000) == [0, 1, 2, 4, 3000]
    assert parse_checkpoint_steps("log,every:1000", 3000)[-4:] == [512, 1000, 2000, 3000]
    assert parse_checkpoint_steps("none", 50) == [50]
    assert parse_checkpoint_steps("7, 12", 50, start_step=10) == [12, 50]
    for bad in ("every:0", "log:x", "sometimes", "-3"):
        with pytest.raises(CurateError, match="checkpoint steps"):
            parse_checkpoint_steps(bad, 50)


# ---- training does something ---------------------------------------------------------------------
def test_training_lowers_the_loss(tmp_path):
    """Rows that count up (t+1 = t + 1 mod V) from random starts: a bigram model learns them quickly."""
    rng = np.random.default_rng(3)
    starts = rng.integers(0, VOCAB, 400)
    rows = (starts[:, None] + np.arange(ROW_LEN)[None, :]) % VOCAB
    corpus = write_corpus(tmp_path / "count", rows, heldout_start=380)
    result = train(spec(corpus, steps=40, eval_every=20, lr=3e-3, checkpoints="none"), tmp_path / "run", progress=False)
    first, last = result.curves[0], result.curves[-1]
    assert first["heldout_loss"] == pytest.approx(math.log(VOCAB), abs=0.3)
    assert last["heldout_loss"] < first["heldout_loss"] - 1.5
    assert result.curves[-1]["loss"] < result.curves[1]["loss"]


def test_same_seed_same_weights_other_seed_differs(corpus_dir, tmp_path):
    a = train(spec(corpus_dir, steps=6, checkpoints="none", eval_every=6), tmp_path / "a", progress=False)
    b = train(spec(corpus_dir, steps=6, checkpoints="none", eval_every=6), tmp_path / "b", progress=False)
    c = train(spec(corpus_dir, steps=6, checkpoints="none", eval_every=6, seed=1), tmp_path / "c", progress=False)
    assert a.fingerprint == b.fingerprint != c.fingerprint


# ---- plans: the stream is what the doc says, and the trainer sees exactly it ----------------------
def reference_stream(n_rows: int, order, drop, inserts, batch: int, steps: int):
    """The documented semantics, literally: S0 = order minus drop; inserted rows before S0[anchor]."""
    s0 = [r for r in (order if order is not None else range(n_rows)) if r not in set(drop)]
    anchored: dict[int, list] = {}
    for source, rows, step, span in inserts:
        for j, r in enumerate(rows):
            if step is not None:
                anchor = step * batch
            else:
                a, b = span
                anchor = a * batch + (j * (b - a) * batch) // len(rows)
            anchored.setdefault(anchor, []).append((source, r))
    out = []
    for k, r in enumerate(s0):
        out.extend(anchored.get(k, []))
        out.append((0, r))
    out.extend(anchored.get(len(s0), []))
    return out[: steps * batch]


def test_plan_drops_and_inserts_are_seen_at_their_steps(corpus_dir, extra_dir, tmp_path):
    drop = [3, 4, 17, 100, 101]
    plan = {"drop": drop, "insert": [
        {"step": 2, "corpus": str(extra_dir), "rows": [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]},
        {"steps": [5, 8], "corpus": str(extra_dir), "rows": [20, 21, 22, 23]},
        {"step": 9, "corpus": str(corpus_dir), "rows": [1, 1]},  # duplicate a base row twice
    ]}
    seen: list[tuple[int, int]] = []
    tokens_ok = []
    extra = open_corpus(extra_dir)
    base = open_corpus(corpus_dir)

    def record(step, src, rows, tokens):
        assert len(rows) == BATCH
        seen.extend(zip(src.tolist(), rows.tolist()))
        for s, r, t in zip(src, rows, tokens):
            tokens_ok.append(np.array_equal(t, (extra if s else base).take([r])[0]))

    train(spec(corpus_dir, plan=plan, steps=14, checkpoints="none", eval_every=14), tmp_path / "run",
          progress=False, on_batch=record)
    expected = reference_stream(NUM_ROWS, None, drop, [(1, list(range(5, 15)), 2, None), (1, [20, 21, 22, 23], None, (5, 8)),
                                                       (0, [1, 1], 9, None)], BATCH, 14)
    assert seen == expected
    assert all(tokens_ok)
    base_seen = [r for s, r in seen if s == 0]
    assert not set(drop) & set(base_seen)
    assert seen[2 * BATCH : 2 * BATCH + 10] == [(1, r) for r in range(5, 15)]  # the block starts step 2 exactly
    assert base_seen.count(1) == 3  # the original and two duplicates
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "run" / "stream.parquet")
    assert list(zip(table.column("source").to_pylist(), table.column("row_id").to_pylist())) == expected
    assert table.column("step").to_pylist() == [i // BATCH for i in range(14 * BATCH)]


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.integers(20, 60),
    drop=st.lists(st.integers(0, 59), max_size=8, unique=True),
    blocks=st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(0, 39), min_size=1, max_size=6), st.booleans()), max_size=3),
    batch=st.integers(1, 4),
)
def test_resolve_stream_matches_the_documented_semantics(corpus_dir, extra_dir, n_rows, drop, blocks, batch):
    base = open_corpus(corpus_dir)
    drop = [d for d in drop if d < NUM_ROWS]
    steps = 4
    inserts, plan_inserts = [], []
    for step, rows, spread in blocks:
        span = (step, step + 1) if spread else None
        inserts.append((1, rows, None if spread else step, span))
        plan_inserts.append({"corpus": str(extra_dir), "rows": rows, **({"steps": list(span)} if spread else {"step": step})})
    plan = plan_from_json({"drop": drop, "insert": plan_inserts}, Path("/"), "p")
    stream = resolve_stream(plan, base, batch, steps)
    expected = reference_stream(NUM_ROWS, None, drop, inserts, batch, steps)
    assert list(zip(stream.source.tolist(), stream.row.tolist())) == expected


def test_explicit_order_and_corpus_plan(corpus_dir, tmp_path):
    order = [5, 3, 9, 3, 0, 7, 8, 1, 2, 4]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"corpus": str(corpus_dir), "order": order, "drop": [9]}))
    plan = load_plan(plan_file)
    stream = resolve_stream(plan, open_corpus(plan.corpus), 2, 4)
    assert stream.row.tolist() == [5, 3, 3, 0, 7, 8, 1, 2]
    as_corpus = load_plan(corpus_dir)  # a plan that is just a corpus: its rows in order
    assert as_corpus.corpus == str(corpus_dir.resolve()) and resolve_stream(as_corpus, open_corpus(corpus_dir), 4, 2).row.tolist() == list(range(8))
    assert load_plan(None).is_baseline


BAD_PLANS = [
    ({"drop": [1, 2, 2]}, "more than once"),
    ({"dorp": [1]}, "unknown plan key 'dorp'"),
    ({"drop": [-1]}, "negative row id"),
    ({"drop": [1.5]}, "integer row ids"),
    ({"drop": [True]}, "integer row ids"),
    ({"drop": "1,2"}, "integer row ids"),
    ({"drop": [NUM_ROWS]}, f"drop names row {NUM_ROWS}"),
    ({"version": 2}, "unsupported plan version"),
    ({"insert": [{"step": 3}]}, "missing 'corpus'"),
    ({"insert": [{"corpus": "X", "rows": [1]}]}, "exactly one of 'step'"),
    ({"insert": [{"corpus": "X", "step": 1, "steps": [1, 2]}]}, "exactly one of 'step'"),
    ({"insert": [{"corpus": "X", "steps": [4, 4]}]}, "is empty"),
    ({"insert": [{"corpus": "X", "step": 1, "rows": []}]}, "rows is empty"),
    ({"insert": [{"corpus": "X", "step": 1, "colour": 1}]}, "unknown key 'colour'"),
    ({"insert": [{"corpus": "X", "step": 30, "rows": [1]}]}, "not before the run's end"),
    ({"insert": [{"corpus": "X", "step": 1, "rows": [400]}]}, "row 400 is outside"),
    ({"insert": [{"corpus": "nowhere/none", "step": 1}]}, "nowhere/none"),
    ({"order": [0, 1, 2], "drop": [5]}, "not in the plan's order"),
    ({"order": [0, 1, 2]}, "the plan leaves 3 rows"),
    ({"drop_file": "missing.npy"}, "drop file not found"),
    ({"drop": [1], "drop_file": "x.npy"}, "not both"),
]


@pytest.mark.parametrize("raw,message", BAD_PLANS, ids=[m for _, m in BAD_PLANS])
def test_bad_plans_are_one_line_errors(raw, message, corpus_dir, extra_dir, tmp_path):
    raw = json.loads(json.dumps(raw).replace('"X"', json.dumps(str(extra_dir))))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(raw))
    with pytest.raises(CurateError, match=message) as info:
        plan = load_plan(plan_file)
        resolve_stream(plan, open_corpus(corpus_dir), BATCH, 24)
    assert "\n" not in str(info.value)


def test_plan_bounds_against_the_run(corpus_dir, extra_dir, tmp_path):
    plan = {"insert": [{"corpus": str(extra_dir), "step": 3}]}
    with pytest.raises(CurateError, match="before the run's start step 10"):
        resolve_stream(plan_from_json(plan, tmp_path, "p"), open_corpus(corpus_dir), BATCH, 24, start_step=10)
    with pytest.raises(CurateError, match="held-out rows"):  # 72 steps x 8 rows reach past heldout_start 560
        train(spec(corpus_dir, steps=72), tmp_path / "r", progress=False)
    ids = tmp_path / "drop.txt"
    ids.write_text("# top rows\n4\n9\n")
    plan_file = tmp_path / "p.json"
    plan_file.write_text(json.dumps({"drop_file": "drop.txt"}))
    assert load_plan(plan_file).drop.tolist() == [4, 9]
    assert load_plan(plan_file).plan_hash() == TrainingPlan(drop=np.array([4, 9])).plan_hash()


# ---- models ---------------------------------------------------------------------------------------
def test_build_model_is_deterministic_and_eager():
    config = config_from_dict(TINY)
    a, b, c = build_model(config, 0), build_model(config, 0), build_model(config, 1)
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(c)
    assert a.config._attn_implementation == "eager"
    with torch.no_grad():
        a.gpt_neox.embed_in.weight[0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)


def test_load_model_errors(tmp_path):
    with pytest.raises(CurateError, match="model folder not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="not a model folder"):
        load_model(tmp_path / "empty")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CurateError, match="no complete checkpoint"):
        load_model(tmp_path / "run")
    with pytest.raises(CurateError, match="model_type"):
        config_from_dict({"model_type": "llama"})


# ---- CLI ------------------------------------------------------------------------------------------
def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    return corpus_helpers.run_cli(list(args), monkeypatch, capsys)


def test_cli_trains_and_rejects_bad_input(monkeypatch, capsys, corpus_dir, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    common = ["train", "--corpus", str(corpus_dir), "--config", str(config), "--steps", "6", "--eval-every", "3",
              "--checkpoints", "none", "--quiet"]
    code, out, err = run_cli(monkeypatch, capsys, *common, "--out", str(tmp_path / "run"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["complete"] and summary["steps"] == 6
    assert (tmp_path / "run" / "checkpoints" / "step6" / "model.safetensors").is_file()

    bad_plan = tmp_path / "bad.json"
    bad_plan.write_text(json.dumps({"drop": [2, 2]}))
    cases = [
        ([*common, "--out", str(tmp_path / "b1"), "--plan", str(bad_plan)], "more than once"),
        ([*common, "--out", str(tmp_path / "run")], "already holds a run"),
        (["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "9"], "continues a run as it was"),
        ([*common, "--out", str(tmp_path / "b2"), "--checkpoints", "often"], "checkpoint steps 'often'"),
        (["train", "--corpus", str(corpus_dir), "--steps", "3", "--out", str(tmp_path / "b3"), "--model", str(tmp_path / "nope")], "model folder not found"),
        (["train", "--corpus", str(tmp_path / "nothing.idx"), "--config", str(config), "--out", str(tmp_path / "b4")], "index file not found"),
        (["train", "--corpus", str(corpus_dir), "--config", str(config)], "--out is required"),
    ]
    for args, message in cases:
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_in_memory_plan_and_config_are_recorded_as_json(corpus_dir, tmp_path):
    """Library callers may pass a plan dict with numpy ids and a GPTNeoXConfig; run.json stores plain JSON
    from which the same run is recognised (and resumed) again."""
    plan = {"drop": np.array([0, 1, 2]), "insert": [{"step": 1, "corpus": str(corpus_dir), "rows": np.array([7])}]}
    first = train(spec(corpus_dir, plan=plan, model_config=config_from_dict(TINY), steps=4, eval_every=4, checkpoints="none"),
                  tmp_path / "run", progress=False)
    from curate.training.spec import stored_spec

    saved = stored_spec(json.loads((tmp_path / "run" / "run.json").read_text()), tmp_path / "run")  # paths relative to the run
    assert saved.plan["drop"] == [0, 1, 2] and isinstance(saved.model_config, dict)
    again = train(saved, tmp_path / "run", progress=False, resume=True)
    assert again.resumed_from == 4 and again.fingerprint == first.fingerprint


def test_cli_default_run_goes_to_the_workspace_and_is_idempotent(monkeypatch, capsys, tmp_path):
    from curate.workspace import default_corpus_dir, reference_run_dir

    ws = tmp_path / "ws"
    write_corpus(default_corpus_dir(ws), copy_rows(400, 5), heldout_start=300)  # stands in for the built corpus
    args = ["train", "--default", "--workspace", str(ws), "--steps", "4", "--eval-every", "2", "--quiet", "--json"]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    run = reference_run_dir(ws)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step0", "step1", "step2", "step4"]
    spec_saved = json.loads((run / "run.json").read_text())["spec"]
    assert spec_saved["batch_size"] == 32 and spec_saved["lr"] == 1e-3 and spec_saved["model_config"] is None
    code, out, err = run_cli(monkeypatch, capsys, *args)  # again: nothing to train, same result
    assert code == 0, err
    assert json.loads(out)["fingerprint"] == first["fingerprint"]


def test_branch_plan_must_keep_the_rows_before_its_start(reference_run, corpus_dir, extra_dir, tmp_path):
    def branch(plan, name):
        return train(spec(corpus_dir, model_config=None, init_from=str(reference_run.out_dir), revision="step10",
                          init_state=True, plan=plan), tmp_path / name, progress=False)

    with pytest.raises(CurateError, match="changes the rows before the start step 10"):
        branch({"drop": [5]}, "early-drop")  # row 5 was trained on at step 0
    seen = []
    ok = train(spec(corpus_dir, model_config=None, init_from=str(reference_run.out_dir), revision="step10", init_state=True,
                    plan={"drop": [10 * BATCH + 1]}), tmp_path / "late-drop", progress=False,
               on_batch=lambda step, src, rows, tok: seen.extend(rows.tolist()))
    assert ok.start_step == 10 and 10 * BATCH + 1 not in seen and seen[0] == 10 * BATCH and seen[1] == 10 * BATCH + 2
    assert ok.fingerprint != reference_run.fingerprint
    # the inherited curve is the reference's up to the branch point, then its own
    assert ok.curves[:2] == reference_run.curves[:2] and ok.curves[2] != reference_run.curves[2]


def test_token_ids_outside_the_vocabulary_are_refused_before_anything_is_written(tmp_path):
    """A corpus row with an id the model cannot embed fails at once, naming the file and row; no run folder is left."""
    rows = copy_rows(200, 1)
    rows[37, 5] = VOCAB + 3  # trained on at step 4 (batch 8)
    corpus = write_corpus(tmp_path / "bad", rows)
    out = tmp_path / "run"
    with pytest.raises(CurateError, match=r"corpus\.(idx|bin): token id 35 at row 37 is outside the model's vocabulary \(size 32\)"):
        train(spec(corpus, steps=8, checkpoints="none"), out, progress=False)
    assert not out.exists()
    train(spec(corpus, steps=4, checkpoints="none", heldout_rows=0), out, progress=False)  # rows 0..31 are fine


def test_recipes_are_one_table_with_trainspec_names():
    """TrainSpec's defaults are the from-checkpoint recipe; the fresh and reference recipes differ only where stated."""
    from dataclasses import fields

    from curate.training.recipes import recipe_fields

    defaults = {f.name: f.default for f in fields(TrainSpec)}
    checkpoint = recipe_fields("from_checkpoint")
    assert checkpoint == {k: defaults[k] for k in checkpoint}
    assert {k: v for k, v in recipe_fields("fresh").items() if v != checkpoint[k]} == {
        "min_lr_ratio": 1.0, "weight_decay": 0.0, "beta2": 0.999}
    assert recipe_fields("reference") == {**recipe_fields("fresh"), "batch_size": 32, "steps": 4000, "eval_every": 100,
                                          "checkpoints": "log,every:100", "seed": 0}


def test_reference_run_is_trained_by_the_library_with_the_reference_recipe(corpus_dir, tmp_path):
    """`training.reference.train_reference_run` (what `curate train --default` calls): the reference recipe under
    the caller's overrides, resumed (idempotent) on a second call; other settings than the run's are refused."""
    from curate.training.recipes import recipe_fields
    from curate.training.reference import train_reference_run
    from curate.workspace import reference_run_dir

    small = {"corpus": str(corpus_dir), "steps": 4, "eval_every": 2, "checkpoints": "none", "heldout_rows": 8,
             "eval_probes": 4, "probe_half_len": 8}
    first = train_reference_run(tmp_path / "ws", progress=False, overrides=small)
    saved = json.loads((first.out_dir / "run.json").read_text())["spec"]
    assert first.out_dir == reference_run_dir(tmp_path / "ws")
    assert not (tmp_path / "ws" / "default" / "corpus").exists()  # a given corpus: the default one is not built
    assert {k: saved[k] for k in recipe_fields("reference") if k not in small} == {
        k: v for k, v in recipe_fields("reference").items() if k not in small}
    again = train_reference_run(tmp_path / "ws", progress=False, overrides=small)
    assert again.resumed_from == 4 and again.fingerprint == first.fingerprint
    with pytest.raises(CurateError, match="the run there has steps = 4, not 5"):
        train_reference_run(tmp_path / "ws", progress=False, overrides={**small, "steps": 5})
