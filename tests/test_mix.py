"""build-mix: exact row multisets, the written order, the training plan, seeded controls, errors, verify."""
from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.augment.features import repetition_features
from curate.amounts import parse_amount
from curate.augment.mix import MixSpec, build_mix
from corpus_helpers import run_cli
from curate.corpus import open_corpus
from curate.errors import CurateError
from mix_helpers import BATCH, START_STEP, make_setup
from curate.training.plan import load_plan, resolve_stream

WINDOW = 768  # (50 - 2) steps x 16 rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("mix"))


@pytest.fixture(scope="module")
def mixes(setup, tmp_path_factory):
    """The mixes several tests read (built once)."""
    root = tmp_path_factory.mktemp("mixes")
    specs = {
        "top": MixSpec(remove="10%", augment="5%", source="top", seed=0),
        "at_step": MixSpec(remove="40", augment="0.02", source="top", at_step=20, seed=0),
        "neighbors": MixSpec(augment="5%", source="neighbors", top=20, seed=0),
        "synthetic": MixSpec(remove="5%", augment="3%", source="synthetic", top=20, seed=4),
        "control": MixSpec(remove="10%", augment="5%", source="top", control="random", seed=5),
    }
    return {name: build_mix(setup.scores, root / name, spec).out for name, spec in specs.items()}


def _rows(folder: Path) -> np.ndarray:
    c = open_corpus(folder)
    return np.asarray(c.rows(0, c.num_rows)).astype(np.int64)


def _prov(folder: Path) -> dict:
    return pq.read_table(folder / "provenance.parquet").to_pydict()


def _top(setup, k: int) -> np.ndarray:
    """The k best window rows by the true scores (absolute row ids), computed here independently."""
    return np.argsort(-setup.window_scores, kind="stable")[:k] + setup.first_row


def _multiset(rows: np.ndarray) -> Counter:
    return Counter(r.tobytes() for r in np.asarray(rows, dtype=np.int64))


# -- amounts ------------------------------------------------------------------------------------------

def test_parse_amount_forms() -> None:
    assert parse_amount("2%", 1000) == 20
    assert parse_amount("0.02", 1000) == 20
    assert parse_amount("20", 1000) == 20
    assert parse_amount("1", 1000) == 1  # an integer is a row count, not 100%
    assert parse_amount("1.0", 1000) == 1000
    assert parse_amount("100%", 768) == 768
    assert parse_amount("10%", 768) == 77  # 76.8 rounds up
    assert parse_amount(" 2.5% ", 200) == 5
    assert parse_amount("0.0001", 1000) == 1  # a share is at least one row


@pytest.mark.parametrize("text", ["-3%", "150%", "abc", "0%", "0", "0.0", "1.5", "nan%", "inf", "", "5000", "2%%"])
def test_parse_amount_rejects_nonsense(text: str) -> None:
    with pytest.raises(CurateError) as e:
        parse_amount(text, 1000, "remove")
    assert "\n" not in str(e.value) and str(e.value).startswith(f"remove {text!r}")


# -- what a mix holds ---------------------------------------------------------------------------------

def test_mix_rows_are_window_minus_removed_plus_added_exactly(setup, mixes) -> None:
    rows = _rows(mixes["top"])
    removed, added = _top(setup, 77), _top(setup, 39)  # 10% and 5% of 768, rounded up
    window_ids = np.arange(setup.first_row, setup.stop_row)
    expected = _multiset(setup.rows[np.setdiff1d(window_ids, removed)]) + _multiset(setup.rows[added])
    assert len(rows) == WINDOW - 77 + 39
    assert _multiset(rows) == expected
    prov = _prov(mixes["top"])
    assert Counter(prov["reason"]) == {"kept": WINDOW - 77, "duplicate": 39}
    assert sorted(r for r, why in zip(prov["source_row_id"], prov["reason"]) if why == "duplicate") == sorted(added.tolist())
    plan = json.loads((mixes["top"] / "plan.json").read_text())
    assert plan["drop"] == sorted(removed.tolist())
    manifest = json.loads((mixes["top"] / "manifest.json").read_text())
    assert manifest["counts"]["removed"] == 77 and manifest["counts"]["added"] == 39 and manifest["seed"] == 0


def test_mix_bin_reads_back_in_the_planned_order(setup, mixes) -> None:
    rows, prov = _rows(mixes["top"]), _prov(mixes["top"])
    src = np.array(prov["source_row_id"])
    assert np.array_equal(rows, setup.rows[src])  # every position holds the row its provenance names
    assert prov["row_id"] == list(range(len(rows)))
    assert prov["step"] == [START_STEP + i // BATCH for i in range(len(rows))]
    kept = np.array([why == "kept" for why in prov["reason"]])
    assert np.all(np.diff(src[kept]) > 0)  # kept rows keep the window order
    # spread evenly over the kept rows' 43 whole steps: one added row every 43*16/39 = 17.6 kept rows
    added_pos = np.flatnonzero(~kept)
    assert len(added_pos) == 39 and added_pos[0] == 0
    assert set(np.diff(added_pos).tolist()) <= {18, 19}  # 17 or 18 kept rows between consecutive added rows
    assert np.bincount(added_pos // BATCH).max() == 1
    scores = np.array(prov["score"])
    assert np.allclose(scores, setup.window_scores[src - setup.first_row])
    # --at-step 20 puts all 16 added rows (2% of 768, rounded up) in one block at the start of step 20
    prov_at = _prov(mixes["at_step"])
    added_pos = [i for i, why in enumerate(prov_at["reason"]) if why != "kept"]
    first = (20 - START_STEP) * BATCH
    assert added_pos == list(range(first, first + 16))


@pytest.mark.parametrize("name", ["top", "at_step", "neighbors", "synthetic", "control"])
def test_plan_resolves_to_the_mix_order(setup, mixes, name) -> None:
    mix = mixes[name]
    plan = load_plan(mix / "plan.json")
    base = open_corpus(plan.corpus, batch_size=BATCH)
    rows = _rows(mix)
    steps = math.ceil((setup.first_row + len(rows)) / BATCH)
    stream = resolve_stream(plan, base, BATCH, steps, start_step=START_STEP)
    seg = slice(setup.first_row, setup.first_row + len(rows))
    got = np.empty_like(rows)
    src, ids = stream.source[seg], stream.row[seg]
    for s in np.unique(src):
        got[src == s] = stream.sources[int(s)].take(ids[src == s])
    assert np.array_equal(got, rows)
    assert np.array_equal(stream.row[: setup.first_row], np.arange(setup.first_row))  # steps before the window untouched
    # the mix folder itself is a plan too: its rows in order
    own = resolve_stream(load_plan(mix), open_corpus(mix), BATCH, len(rows) // BATCH)
    assert np.array_equal(own.row, np.arange(len(rows) // BATCH * BATCH))


def test_random_control_is_reproducible_by_seed_and_not_the_top_rows(setup, mixes, tmp_path) -> None:
    again = build_mix(setup.scores, tmp_path / "again", MixSpec(remove="10%", augment="5%", control="random", seed=5)).out
    for name in ("mix.bin", "mix.idx", "provenance.parquet", "plan.json"):
        assert (again / name).read_bytes() == (mixes["control"] / name).read_bytes(), name
    other = build_mix(setup.scores, tmp_path / "other", MixSpec(remove="10%", augment="5%", control="random", seed=6)).out
    drop5 = set(json.loads((mixes["control"] / "plan.json").read_text())["drop"])
    drop6 = set(json.loads((other / "plan.json").read_text())["drop"])
    assert len(drop5) == len(drop6) == 77 and drop5 != drop6
    top = set(_top(setup, 77).tolist())
    assert len(drop5 & top) < 25  # random removal: ~7.7 expected overlap with the top 77; the attribution arm has 77
    prov = _prov(mixes["control"])
    assert Counter(prov["reason"]) == {"kept": WINDOW - 77, "random": 39}
    assert all(setup.first_row <= r < setup.stop_row for r in prov["source_row_id"])
    assert _multiset(_rows(mixes["control"])) == (
        _multiset(setup.rows[np.setdiff1d(np.arange(setup.first_row, setup.stop_row), sorted(drop5))])
        + _multiset(setup.rows[[r for r, w in zip(prov["source_row_id"], prov["reason"]) if w == "random"]])
    )


def test_neighbors_come_from_outside_the_window_and_share_structure(setup, mixes) -> None:
    prov = _prov(mixes["neighbors"])
    ids = np.array([r for r, w in zip(prov["source_row_id"], prov["reason"]) if w == "neighbor"])
    assert len(ids) == 39 and len(set(ids.tolist())) == 39
    assert ((ids < setup.first_row) | (ids >= setup.stop_row)).all()
    assert all(np.isnan(s) for s, w in zip(prov["score"], prov["reason"]) if w == "neighbor")
    longest = repetition_features(setup.rows).longest
    outside = np.r_[0 : setup.first_row, setup.stop_row : len(setup.rows)]
    # neighbours of top rows repeat more than the pool at large (measured 1.66x on this generator)
    assert longest[ids].mean() > 1.4 * longest[outside].mean()


def test_synthetic_mix_holds_the_generated_rows(setup, mixes) -> None:
    mix = mixes["synthetic"]
    synth = open_corpus(mix / "synthetic")
    assert synth.num_rows == 24 and synth.row_len == 129  # 3% of 768, rounded up
    rows, prov = _rows(mix), _prov(mix)
    pos = [i for i, w in enumerate(prov["reason"]) if w == "synthetic"]
    assert np.array_equal(rows[pos], np.asarray(synth.rows(0, 24)))
    assert {c for c, w in zip(prov["source_corpus"], prov["reason"]) if w == "synthetic"} == {"synthetic"}
    plan = json.loads((mix / "plan.json").read_text())
    assert plan["insert"][0]["corpus"] == "synthetic" and plan["insert"][0]["rows"] == list(range(24))
    window = {r.tobytes() for r in setup.rows[setup.first_row : setup.stop_row]}
    assert not any(r.tobytes() in window for r in rows[pos])  # new rows, not copies


# -- the command: outputs, errors, verify ------------------------------------------------------------

def test_build_mix_command_default_folder(setup, tmp_path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["build-mix", setup.scores, "--remove", "10%", "--workspace", tmp_path / "ws"], monkeypatch, capsys)
    assert code == 0, err
    folder = tmp_path / "ws" / "mixes" / "induction-remove10pct-seed0"
    assert str(folder) in out
    corpus = open_corpus(folder)
    assert (corpus.num_rows, corpus.batch_size, corpus.row_len) == (WINDOW - 77, BATCH, 129)
    assert corpus.tokenizer_spec() == str(folder / "tokenizer.json")


@pytest.mark.parametrize("args, message", [
    (["--remove", "-3%"], "remove '-3%': expected a percentage"),
    (["--remove", "150%"], "remove '150%': expected a percentage"),
    (["--augment", "abc"], "augment 'abc': expected a percentage"),
    (["--remove", "0"], "remove '0': must be at least 1 row"),
    (["--remove", "100000"], "remove '100000': more rows than the 768 there are"),
    ([], "nothing to do: give rows to remove and/or rows to add"),
    (["--augment", "2%", "--source", "bogus"], "source 'bogus': expected one of top, neighbors, synthetic"),
    (["--augment", "2%", "--at-step", "60"], "at step 60: outside the window (steps 2 to 49)"),
    (["--remove", "2%", "--at-step", "5"], "at_step places added rows: it needs rows to add"),
    (["--augment", "2%", "--source", "neighbors", "--pool", "/nonexistent/pool"], "pool /nonexistent/pool: no such file or folder"),
    (["--remove", "2%", "--control", "sometimes"], "control 'sometimes': expected one of random"),
])
def test_bad_options_are_one_line_and_leave_no_folder(setup, tmp_path, monkeypatch, capsys, args, message) -> None:
    out = tmp_path / "deep" / "mix"
    code, _, err = run_cli(["build-mix", setup.scores, "--out", out, *args], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), err
    assert not out.exists() and not (tmp_path / "deep").exists()


def test_missing_scores_folder_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["build-mix", tmp_path / "nope", "--remove", "1%", "--out", tmp_path / "m"], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {tmp_path / 'nope'}: scores folder not found"]
    assert not (tmp_path / "m").exists()


def test_out_folder_that_is_not_a_mix_is_refused(setup, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["build-mix", setup.scores, "--remove", "1%", "--out", out], monkeypatch, capsys)
    assert code == 2 and "is not a curate mix" in err
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_verify_passes_then_catches_a_flipped_byte_an_extra_file_and_a_changed_input(setup, mixes, tmp_path, monkeypatch, capsys) -> None:
    mix = tmp_path / "copy"
    shutil.copytree(mixes["synthetic"], mix)
    code, out, err = run_cli(["verify", mix], monkeypatch, capsys)
    assert code == 0 and out.startswith("ok:"), err
    data = bytearray((mix / "mix.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (mix / "mix.bin").write_bytes(bytes(data))
    code, _, err = run_cli(["verify", mix], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip().splitlines()[0]]
    assert "mix.bin: checksum mismatch" in err
    (mix / "synthetic" / "notes.txt").write_text("x")
    code, _, err = run_cli(["verify", mix, "--outputs-only"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "notes.txt: file not listed in the manifest" in err

    # an input changed under the mix: one line naming it
    scores = tmp_path / "scores"
    shutil.copytree(setup.scores, scores)
    clean = tmp_path / "clean"
    build_mix(scores, clean, MixSpec(remove="1%", seed=0))
    assert run_cli(["verify", clean], monkeypatch, capsys)[0] == 0
    shard = sorted((scores / "shards").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes() + b"\0")
    code, _, err = run_cli(["verify", clean], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: input scores_shard:{shard.name} {shard.resolve()}: checksum mismatch " + err.split("checksum mismatch ", 1)[1].strip()]
    assert run_cli(["verify", clean, "--outputs-only"], monkeypatch, capsys)[0] == 0


def test_verify_of_a_folder_without_manifest_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["verify", tmp_path], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {tmp_path}: no manifest.json (not written by `curate build-mix` or `curate synth`)"]


def test_scores_naming_the_data_file_still_find_the_corpus_folder(setup, tmp_path) -> None:
    """The scoring job may record `corpus/corpus.idx`: the mix then still carries the folder's tokenizer and batch size."""
    scores = tmp_path / "scores"
    shutil.copytree(setup.scores, scores)
    summary = json.loads((scores / "summary.json").read_text())
    summary["corpus"] = str(setup.corpus / "corpus.idx")
    (scores / "summary.json").write_text(json.dumps(summary))
    mix = build_mix(scores, tmp_path / "mix", MixSpec(augment="8", source="synthetic", top=4, seed=0)).out
    plan = json.loads((mix / "plan.json").read_text())
    assert (mix / plan["corpus"]).resolve() == setup.corpus.resolve()  # relative to the mix folder
    assert open_corpus(mix).tokenizer_spec() == str(mix / "tokenizer.json")
    assert open_corpus(mix / "synthetic").num_rows == 8


def test_build_mix_saves_its_config_and_a_replay_gives_the_same_bytes(setup, tmp_path, monkeypatch, capsys) -> None:
    from curate.commands.options import CONFIG_FILE

    out = tmp_path / "mix"
    code, _, err = run_cli(["build-mix", setup.scores, "--remove", "10%", "--augment", "3%", "--seed", "2", "--out", out],
                           monkeypatch, capsys)
    assert code == 0, err
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["command"] == "build-mix"
    options, spec = saved["options"], saved["options"]["mix"]  # the composed MixSpec; paths relative to the folder
    assert (out / options["scores"]).resolve() == Path(setup.scores).resolve() and options["out"] == "."
    assert spec == {**spec, "remove": "10%", "augment": "3%", "seed": 2, "source": "top", "top": 2000}
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    code, _, err = run_cli(["replay", out], monkeypatch, capsys)
    assert code == 0, err
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


# -- label columns in the provenance ------------------------------------------------------------------

def _with_sidecar(src: Path, dst: Path, columns: dict) -> Path:
    """A copy of a corpus folder with a row sidecar holding `columns` (row_id and step added)."""
    from curate.parquet_io import write_table_parquet

    shutil.copytree(src, dst)
    n = open_corpus(dst).num_rows
    ids = np.arange(n, dtype=np.int64)
    write_table_parquet(dst / "rows.parquet", {"row_id": ids, "step": ids // BATCH, "doc_id": ids, **columns})
    meta = json.loads((dst / "corpus.json").read_text())
    (dst / "corpus.json").write_text(json.dumps({**meta, "sidecar": "rows.parquet"}))
    return dst


def test_provenance_carries_the_source_rows_labels(setup, tmp_path: Path) -> None:
    from mix_helpers import write_scores

    labels = json.loads((setup.corpus / "labels.json").read_text())
    n = len(labels)
    base = _with_sidecar(setup.corpus, tmp_path / "base", {"domain": labels, "source": [f"file{i % 5}" for i in range(n)],
                                                           "weight": np.linspace(0, 1, n)})
    pool = _with_sidecar(setup.corpus, tmp_path / "pool", {"source": list(range(n)), "lang": ["en"] * n})
    scores = write_scores(tmp_path / "scores", base, setup.window_scores, np.arange(setup.first_row, setup.stop_row),
                          batch_size=BATCH, shard_rows=150)
    # rows from the scored corpus only: every label of the source row, in every position
    top = _prov(build_mix(scores, tmp_path / "top", MixSpec(remove="10%", augment="5%", source="top")).out)
    assert list(top) == ["row_id", "step", "source_corpus", "source_row_id", "reason", "score", "domain", "source"]
    assert top["domain"] == [labels[r] for r in top["source_row_id"]]
    assert top["source"] == [f"file{r % 5}" for r in top["source_row_id"]]
    # rows from a second corpus: its own labels; a column one source lacks is null there; `source` is text in one
    # sidecar and integers in the other, so it becomes text
    mixed = _prov(build_mix(scores, tmp_path / "pooled", MixSpec(remove="5%", augment="3%", source="synthetic", pool=str(pool))).out)
    assert list(mixed)[6:] == ["domain", "source", "lang"]
    from_pool = [i for i, why in enumerate(mixed["reason"]) if why == "synthetic"]
    assert len(from_pool) == math.ceil(0.03 * WINDOW)
    for i, (why, r) in enumerate(zip(mixed["reason"], mixed["source_row_id"])):
        if why == "synthetic":
            assert (mixed["domain"][i], mixed["source"][i], mixed["lang"][i]) == (None, str(r), "en")
        else:
            assert (mixed["domain"][i], mixed["source"][i], mixed["lang"][i]) == (labels[r], f"file{r % 5}", None)
    # the mix's own sidecar is its provenance: explain --by works on a mix
    from curate.labels import label_columns

    assert {"reason", "domain", "source", "lang"} <= set(label_columns(open_corpus(tmp_path / "pooled")))
