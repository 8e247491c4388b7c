"""Circuit metrics, probes, localization and `curate circuits` on tiny GPT-NeoX models with known attention."""
from __future__ import annotations

import json

import pytest
import torch
import typer
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from typer.testing import CliRunner

from curate.attribution.circuits import CIRCUITS, Localization, get_circuit
from curate.attribution.heads import HeadRef as H
from curate.attribution.metrics import (
    HeadScores,
    head_scores,
    icl_positions,
    icl_score,
)
from curate.attribution.probes import build_probes, induction_probe, previous_token_probe
from curate.errors import CurateError

torch.set_num_threads(1)

VOCAB = 48
LAYERS = 3
HEADS = 2
HIDDEN = 16
HEAD_DIM = HIDDEN // HEADS


def tiny_config(attn: str = "eager", layers: int = LAYERS) -> GPTNeoXConfig:
    return GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS,
                         intermediate_size=4 * HIDDEN, max_position_embeddings=128, rotary_pct=1.0,
                         tie_word_embeddings=False, attn_implementation=attn)


def tiny_model(attn: str = "eager", seed: int = 0, layers: int = LAYERS) -> GPTNeoXForCausalLM:
    cfg = tiny_config(attn, layers)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(cfg).eval()


def repeat_probes(n: int, half_len: int, seed: int) -> torch.Tensor:
    """The tiny model's probes (GPTNeoXConfig's bos 0 / eos 2 left out)."""
    return build_probes(tiny_config(), n=n, half_len=half_len, seed=seed)


def pattern(kind: str, t: int, half: int) -> torch.Tensor:
    """A (T, T) causal attention matrix: 'prev', 'induction', 'uniform' or 'self'."""
    a = torch.zeros(t, t)
    for i in range(t):
        if kind == "uniform":
            a[i, : i + 1] = 1.0 / (i + 1)
        elif kind == "prev":
            a[i, max(i - 1, 0)] = 1.0
        elif kind == "induction":
            a[i, i - half + 1 if i >= half else i] = 1.0
        elif kind == "self":
            a[i, i] = 1.0
    return a


def set_attention(model: GPTNeoXForCausalLM, layer: int, kinds: list[str]) -> None:
    """Make layer `layer`'s attention module report hand-made weights, one pattern per head."""
    attn = model.gpt_neox.layers[layer].attention
    original = attn.forward

    def forward(hidden_states, *args, **kwargs):
        out, _ = original(hidden_states, *args, **kwargs)
        b, t = hidden_states.shape[:2]
        stacked = torch.stack([pattern(k, t, t // 2) for k in kinds])
        return out, stacked.unsqueeze(0).expand(b, -1, -1, -1)

    attn.forward = forward


# --------------------------------------------------------------------------- head scores


def test_head_scores_exact_for_hand_made_patterns():
    model = tiny_model()
    set_attention(model, 0, ["prev", "uniform"])
    set_attention(model, 1, ["induction", "self"])
    set_attention(model, 2, ["uniform", "prev"])
    half = 16
    probes = repeat_probes(n=4, half_len=half, seed=0)
    s = head_scores(model, probes)
    t = 2 * half
    uniform_induction = sum(1.0 / (i + 1) for i in range(half, t)) / half
    uniform_prev = sum(1.0 / (i + 1) for i in range(1, t)) / (t - 1)
    expected_induction = torch.tensor([[0.0, uniform_induction], [1.0, 0.0], [uniform_induction, 0.0]])
    expected_prev = torch.tensor([[1.0, uniform_prev], [0.0, 0.0], [uniform_prev, 1.0]])
    torch.testing.assert_close(s.induction, expected_induction, rtol=0, atol=1e-6)
    torch.testing.assert_close(s.previous_token, expected_prev, rtol=0, atol=1e-6)
    assert s.best("induction") == (H(1, 0), pytest.approx(1.0))


def test_head_scores_match_output_attentions_on_real_weights():
    model = tiny_model(seed=1)
    half = 12
    probes = repeat_probes(n=6, half_len=half, seed=5)
    s = head_scores(model, probes)
    with torch.no_grad():
        att = model(probes, output_attentions=True).attentions
    idx = torch.arange(half, 2 * half)
    i2 = torch.arange(1, 2 * half)
    for layer in range(LAYERS):
        a = att[layer]
        torch.testing.assert_close(s.induction[layer], a[:, :, idx, idx - half + 1].mean((0, 2)), rtol=0, atol=1e-6)
        torch.testing.assert_close(s.previous_token[layer], a[:, :, i2, i2 - 1].mean((0, 2)), rtol=0, atol=1e-6)


def test_head_scores_switch_sdpa_to_eager_and_restore_mode():
    eager = tiny_model("eager", seed=2)
    sdpa = tiny_model("sdpa", seed=2)
    sdpa.train()
    probes = repeat_probes(n=3, half_len=8, seed=1)
    a, b = head_scores(eager, probes), head_scores(sdpa, probes)
    torch.testing.assert_close(a.induction, b.induction)
    torch.testing.assert_close(a.previous_token, b.previous_token)
    assert sdpa.config._attn_implementation == "sdpa" and sdpa.training


def test_head_scores_reject_bad_probes():
    model = tiny_model()
    with pytest.raises(CurateError, match="halves differ"):
        head_scores(model, torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(CurateError, match="even length"):
        head_scores(model, torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(CurateError, match="vocabulary"):
        r = torch.full((1, 8), VOCAB + 3, dtype=torch.long)
        head_scores(model, torch.cat([r, r], dim=1))


# --------------------------------------------------------------------------- probes


def test_induction_probe_equals_hand_log_probs_and_counts_terms():
    model = tiny_model(seed=3)
    half = 10
    probes = repeat_probes(n=4, half_len=half, seed=2)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(probes).logits.float(), -1)
    expected = 0.0
    for b in range(probes.shape[0]):
        for i in range(half, 2 * half - 1):  # target token i+1 == token i-L+1 must be in range
            expected += float(log_probs[b, i, probes[b, i - half + 1]])
    with torch.no_grad():
        total = induction_probe(model, probes)
        mean = induction_probe(model, probes, reduction="mean")
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert float(mean) == pytest.approx(expected / (4 * (half - 1)), rel=1e-5)
    with pytest.raises(CurateError):
        induction_probe(model, probes, reduction="max")


@pytest.mark.parametrize("training", [False, True])
def test_induction_probe_gradient_reaches_every_qkv(training):
    model = tiny_model(seed=4)
    model.train(training)
    probes = repeat_probes(n=3, half_len=8, seed=0)
    induction_probe(model, probes).backward()
    for layer in model.gpt_neox.layers:
        g = layer.attention.query_key_value.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert model.training == training


@pytest.mark.parametrize("training", [False, True])
def test_previous_token_probe_value_and_gradient_only_in_its_heads_q_and_k(training):
    model = tiny_model(seed=5)
    model.train(training)
    probes = repeat_probes(n=3, half_len=8, seed=0)
    layer, h = 1, 1
    value = previous_token_probe(model, probes, H(layer, h))
    with torch.no_grad():
        att = model(probes, output_attentions=True).attentions[layer][:, h]
    assert float(value.detach()) == pytest.approx(float(torch.diagonal(att, -1, -2, -1).sum()), rel=1e-5)
    value.backward()
    g = model.gpt_neox.layers[layer].attention.query_key_value.weight.grad
    block = slice(h * 3 * HEAD_DIM, (h + 1) * 3 * HEAD_DIM)
    qk = g[block][: 2 * HEAD_DIM]
    assert torch.isfinite(g).all() and qk.abs().sum() > 0
    assert g[block][2 * HEAD_DIM :].abs().sum() == 0  # V does not move attention weights
    assert g[: h * 3 * HEAD_DIM].abs().sum() == 0  # other heads of the layer
    assert model.gpt_neox.layers[0].attention.query_key_value.weight.grad.abs().sum() > 0
    assert model.gpt_neox.layers[2].attention.query_key_value.weight.grad is None  # forward stopped
    assert model.training == training


def test_previous_token_probe_perfect_head_and_bad_head():
    model = tiny_model()
    set_attention(model, 0, ["self", "prev"])
    probes = repeat_probes(n=3, half_len=8, seed=0)
    assert float(previous_token_probe(model, probes, H(0, 1))) == pytest.approx(3 * 15)
    assert float(previous_token_probe(model, probes, H(0, 1), reduction="mean")) == pytest.approx(1.0)
    assert float(previous_token_probe(model, probes, H(0, 0))) == 0.0
    with pytest.raises(CurateError, match="out of range"):
        previous_token_probe(model, probes, H(3, 0))
    with pytest.raises(CurateError, match="out of range"):
        previous_token_probe(model, probes, H(0, 2))


# --------------------------------------------------------------------------- ICL


def test_icl_positions_scale_with_context():
    assert icl_positions(2048) == ((0, 52), (409, 615))
    assert icl_positions(64) == ((0, 2), (12, 20))
    for t in (16, 64, 256, 1024, 2048):
        (e0, e1), (l0, l1) = icl_positions(t)
        assert e0 == 0 and e1 <= l0 < 0.25 * t < l1 <= t
        assert abs(e1 - 0.025 * t) <= 1 and abs(l0 - 0.2 * t) <= 1 and abs(l1 - 0.3 * t) <= 1
    with pytest.raises(CurateError):
        icl_positions(4)


def test_icl_score_equals_hand_computation():
    model = tiny_model(seed=6)
    rows = torch.randint(0, VOCAB, (5, 41), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(rows[:, :-1]).logits.float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="none")  # (5, 40)
    (e0, e1), (l0, l1) = icl_positions(40)
    expected = float(nll[:, l0:l1].mean() - nll[:, e0:e1].mean())
    assert icl_score(model, rows) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert icl_score(model, rows, batch_size=2) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    explicit = float(nll[:, 30:35].mean() - nll[:, 0:3].mean())
    assert icl_score(model, rows, early=(0, 3), late=(30, 35)) == pytest.approx(explicit, rel=1e-5, abs=1e-6)
    with pytest.raises(CurateError, match="late window"):
        icl_score(model, rows, late=(30, 41))
    with pytest.raises(CurateError, match="early window"):
        icl_score(model, rows, early=(3, 3))


# --------------------------------------------------------------------------- registry and localization


def scores_of(induction: list[list[float]], previous: list[list[float]]) -> HeadScores:
    return HeadScores(induction=torch.tensor(induction), previous_token=torch.tensor(previous))


PROBES = repeat_probes(n=2, half_len=4, seed=0)


def test_registry_and_unknown_circuit():
    assert set(CIRCUITS) == {"induction", "previous-token"}
    assert get_circuit("induction").metric == "induction"
    assert get_circuit("previous-token").metric == "previous_token"
    with pytest.raises(CurateError, match="known: induction, previous-token"):
        get_circuit("copy-suppression")


def test_induction_localization_needs_an_earlier_previous_token_head():
    model = tiny_model()
    induction = get_circuit("induction")
    ind = [[0.0, 0.1], [0.5, 0.1], [0.2, 0.6]]
    loc = induction.localize(model, PROBES, scores=scores_of(ind, [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert loc.heads == [H(1, 0), H(2, 1)] and loc.scores == pytest.approx([0.5, 0.6])
    assert loc.supporting == {H(1, 0): [H(0, 0)], H(2, 1): [H(0, 0)]} and not loc.rejected and not loc.notes
    # the only previous-token head sits in layer 1: head 1.0 may be positional, 2.1 is supported
    loc = induction.localize(model, PROBES, scores=scores_of(ind, [[0.0, 0.0], [0.4, 0.0], [0.0, 0.0]]))
    assert loc.heads == [H(2, 1)] and loc.rejected == [H(1, 0)] and loc.supporting == {H(2, 1): [H(1, 0)]}
    assert loc.notes == ["no previous-token head below layer 1: induction score of head 1.0 (0.500) may be positional"]
    # a previous-token head in the SAME layer does not count
    loc = induction.localize(model, PROBES, scores=scores_of(ind, [[0.0, 0.0], [0.0, 0.9], [0.0, 0.0]]))
    assert loc.heads == [H(2, 1)] and loc.rejected == [H(1, 0)]
    # threshold
    loc = induction.localize(model, PROBES, threshold=0.55, scores=scores_of(ind, [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert loc.heads == [H(2, 1)] and loc.threshold == 0.55


def test_localization_with_no_head_explains_and_require_raises():
    model = tiny_model()
    loc = get_circuit("induction").localize(model, PROBES, scores=scores_of([[0.0, 0.1], [0.2, 0.1], [0.0, 0.25]],
                                                                              [[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert loc.heads == [] and loc.notes == ["no head reaches induction 0.3; best is 2.1 at 0.250"]
    with pytest.raises(CurateError, match="best is 2.1"):
        loc.require()


def test_no_head_note_names_the_best_head_the_curves_consider():
    """A layer-0 head cannot do induction: the note names the best head of layer >= 1, as the training curves do."""
    from curate.training.curves import best_head

    model = tiny_model()
    ind = [[0.9, 0.0], [0.0, 0.2], [0.1, 0.0]]
    loc = get_circuit("induction").localize(model, PROBES, threshold=0.95, scores=scores_of(ind, [[0.0] * 2] * 3))
    assert loc.notes == ["no head reaches induction 0.95; best is 1.1 at 0.200"]
    assert best_head({"induction": ind}, "induction") == ("1.1", pytest.approx(0.2))
    # previous-token heads count in every layer
    prev = get_circuit("previous-token").localize(model, PROBES, threshold=0.95, scores=scores_of(ind, ind))
    assert prev.notes == ["no head reaches previous_token 0.95; best is 0.0 at 0.900"]


def test_explicit_heads_are_kept_with_notes():
    model = tiny_model()
    s = scores_of([[0.0, 0.1], [0.5, 0.1], [0.2, 0.6]], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    loc = get_circuit("induction").localize(model, PROBES, heads=" 2.1, 0.1,2.1", scores=s)
    assert loc.mode == "explicit" and loc.heads == [H(2, 1), H(0, 1)] and loc.scores == pytest.approx([0.6, 0.1])
    assert loc.supporting == {H(2, 1): [], H(0, 1): []}
    assert "head 0.1 induction score 0.100 is below the threshold 0.3" in loc.notes
    assert "no previous-token head below layer 0: induction score of head 0.1 (0.100) may be positional" in loc.notes
    assert get_circuit("induction").localize(model, PROBES, heads="auto", scores=s).mode == "auto"


def test_previous_token_localization():
    model = tiny_model()
    s = scores_of([[0.0] * 2] * 3, [[0.1, 0.7], [0.3, 0.0], [0.0, 0.29]])
    loc = get_circuit("previous-token").localize(model, PROBES, scores=s)
    assert loc.heads == [H(0, 1), H(1, 0)] and loc.scores == pytest.approx([0.7, 0.3]) and not loc.notes
    assert json.loads(json.dumps(loc.to_json()))["heads"] == ["0.1", "1.0"]


@pytest.mark.parametrize("spec", ["", "1", "a.b", "1.2.3", "3.0", "0.2", "1.-1", "1.0,", "1,0"])
def test_bad_head_specs(spec):
    with pytest.raises(CurateError, match="LAYER.HEAD|out of range"):
        get_circuit("induction").localize(tiny_model(), PROBES, heads=spec,
                                          scores=scores_of([[0.0] * 2] * 3, [[0.0] * 2] * 3))


def test_localize_scores_the_model_itself():
    model = tiny_model()
    set_attention(model, 0, ["prev", "uniform"])
    set_attention(model, 1, ["uniform", "induction"])
    probes = repeat_probes(n=2, half_len=8, seed=0)
    loc = get_circuit("induction").localize(model, probes)
    assert loc.heads == [H(1, 1)] and loc.supporting == {H(1, 1): [H(0, 0)]} and loc.scores == pytest.approx([1.0])
    positional = tiny_model()
    set_attention(positional, 1, ["uniform", "induction"])  # layer 0 has no previous-token head
    loc = get_circuit("induction").localize(positional, probes)
    assert loc.heads == [] and loc.rejected == [H(1, 1)]
    assert isinstance(loc, Localization)


# --------------------------------------------------------------------------- CLI


def cli_app() -> typer.Typer:
    from curate.commands import circuits

    app = typer.Typer()
    circuits.register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    return app


def test_cli_json_matches_head_scores(tmp_path):
    model = tiny_model("sdpa", seed=7)
    model.save_pretrained(tmp_path / "ckpt")
    result = CliRunner().invoke(cli_app(), ["circuits", str(tmp_path / "ckpt"), "--probes", "5", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    excluded = report["probes"]["excluded_ids"]
    assert excluded == [0, 2]  # GPTNeoXConfig's bos / eos
    probes = build_probes(model.config, n=5, half_len=32, seed=3)
    expected = head_scores(model, probes)
    assert len(report["heads"]) == LAYERS * HEADS
    for row in report["heads"]:
        assert row["induction"] == pytest.approx(float(expected.induction[row["layer"], row["index"]]), abs=1e-6)
        assert row["previous_token"] == pytest.approx(float(expected.previous_token[row["layer"], row["index"]]), abs=1e-6)
    assert set(report["localized"]) == {"induction", "previous-token"}


def test_cli_table_flags_localized_heads(tmp_path, monkeypatch):
    import curate.training.models

    model = tiny_model()
    set_attention(model, 0, ["prev", "uniform"])
    set_attention(model, 1, ["uniform", "induction"])
    set_attention(model, 2, ["induction", "uniform"])
    monkeypatch.setattr(curate.training.models, "load_model", lambda spec, revision=None: model)
    monkeypatch.setattr(curate.training.models, "resolve_checkpoint_dir", lambda spec, revision=None: None)
    runner = CliRunner()
    result = runner.invoke(cli_app(), ["circuits", "fake-ckpt", "--probes", "2", "--json"])
    assert result.exit_code == 0, result.output
    flags = {row["head"]: row["flags"] for row in json.loads(result.output)["heads"]}
    assert flags == {"0.0": ["previous-token"], "0.1": [], "1.0": [], "1.1": ["induction"], "2.0": ["induction"], "2.1": []}
    table = runner.invoke(cli_app(), ["circuits", "fake-ckpt", "--probes", "2"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "induction (threshold 0.3): 1.1, 2.0" in table.output
    assert "previous-token (threshold 0.3): 0.0" in table.output


def test_cli_missing_checkpoint_is_a_curate_error(tmp_path):
    result = CliRunner().invoke(cli_app(), ["circuits", str(tmp_path / "nope")])
    assert isinstance(result.exception, CurateError) and "not found" in str(result.exception)


def test_cli_half_length_defaults_to_the_context_and_a_longer_one_is_refused(tmp_path):
    cfg = tiny_config()
    cfg.max_position_embeddings = 20
    torch.manual_seed(0)
    GPTNeoXForCausalLM(cfg).save_pretrained(tmp_path / "ckpt")
    ok = CliRunner().invoke(cli_app(), ["circuits", str(tmp_path / "ckpt"), "--probes", "2", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["probes"]["half_len"] == 10
    result = CliRunner().invoke(cli_app(), ["circuits", str(tmp_path / "ckpt"), "--half-len", "12"])
    assert isinstance(result.exception, CurateError)
    assert "probe half length 12 does not fit the context of 20 tokens" in str(result.exception)
