"""Head subspaces: parsing, and that a head's slices are exactly that head's parameters in HF GPT-NeoX."""
from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from curate.attribution.heads import (
    HeadGeometry,
    HeadRef,
    add_to_head,
    check_mode,
    read_head,
    write_head,
    zero_head,
)
from curate.errors import CurateError

torch.set_num_threads(1)

VOCAB, HIDDEN, HEADS, LAYERS, T = 40, 24, 3, 2, 10
HD = HIDDEN // HEADS


def model_without_biases(seed: int = 0) -> GPTNeoXForCausalLM:
    """Tiny model; attention biases zeroed so a zeroed weight block means a zero output."""
    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=2 * HIDDEN, max_position_embeddings=32, tie_word_embeddings=False,
                        attn_implementation="eager", initializer_range=0.2)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg).double().eval()
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            layer.attention.query_key_value.bias.zero_()
            layer.attention.dense.bias.zero_()
    return model


def run_layer(model: GPTNeoXForCausalLM, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention weights (B, H, T, T), dense input (B, T, hidden)) of one layer."""
    seen = {}
    attn = model.gpt_neox.layers[layer].attention
    h1 = attn.register_forward_hook(lambda m, i, o: seen.__setitem__("w", o[1]))
    h2 = attn.dense.register_forward_hook(lambda m, i, o: seen.__setitem__("a", i[0]))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        h1.remove()
        h2.remove()
    return seen["w"], seen["a"]


def contributions(model: GPTNeoXForCausalLM, a: torch.Tensor, layer: int) -> torch.Tensor:
    """Each head's share of the dense output, (H, B, T, hidden), from HF's own reshape (not attribution.heads)."""
    w = model.gpt_neox.layers[layer].attention.dense.weight  # (hidden, hidden) = (out, H * hd)
    a_heads = a.view(*a.shape[:-1], HEADS, HD)
    w_heads = w.view(HIDDEN, HEADS, HD)
    return torch.stack([a_heads[..., j, :] @ w_heads[:, j, :].T for j in range(HEADS)])


TOKENS = torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("text", ["1.3", "1:3", "1,3", "1_3", " 1.3 ", "1 . 3", "01.3"])
def test_head_ref_parses_every_accepted_form(text: str) -> None:
    assert HeadRef.parse(text) == HeadRef(1, 3)


@pytest.mark.parametrize("text", ["1", "a.b", "1.2.3", "", "1.-1", "-1.0", "1.x", "L1_H3", "head_1_3", "1..3"])
def test_head_ref_rejects_other_forms(text: str) -> None:
    with pytest.raises(CurateError, match="is not LAYER.HEAD"):
        HeadRef.parse(text)


@pytest.mark.parametrize("text", ["1.0,1.3,2.1", "1.0, 1.3 2.1", "1.0 1.3 2.1", "1.0;1.3; 2.1", " 1.0,1.3,1.0 2.1,1.3 "])
def test_head_ref_lists(text: str) -> None:
    assert HeadRef.parse_list(text) == [HeadRef(1, 0), HeadRef(1, 3), HeadRef(2, 1)]  # duplicates dropped, order kept


@pytest.mark.parametrize("text", ["", "  ", "1.0,", ",1.0", "1.0,,1.3", "1,0", "1.0,x"])
def test_head_ref_bad_lists(text: str) -> None:
    with pytest.raises(CurateError, match="LAYER.HEAD"):
        HeadRef.parse_list(text)


def test_head_ref_names_and_order() -> None:
    assert str(HeadRef(4, 7)) == "4.7" and HeadRef(4, 7).column == "head_4_7" and HeadRef(4, 7).key == "L4_H7"
    assert HeadRef.parse(str(HeadRef(12, 5))) == HeadRef(12, 5)
    assert HeadRef.from_column("head_12_5") == HeadRef(12, 5) and HeadRef.from_column(HeadRef(3, 1).column) == HeadRef(3, 1)
    assert HeadRef.from_column("score") is None and HeadRef.from_column("head_1") is None
    assert sorted([HeadRef(2, 0), HeadRef(1, 5), HeadRef(1, 2)]) == [HeadRef(1, 2), HeadRef(1, 5), HeadRef(2, 0)]
    with pytest.raises(CurateError, match="unknown head subspace mode 'qkv' \\(expected one of: qk, qkvo\\)") as info:
        check_mode("qkv")
    assert "--" not in str(info.value)


def test_geometry_checks_heads_and_block_shapes() -> None:
    geo = HeadGeometry.of(model_without_biases())
    assert (geo.num_layers, geo.num_heads, geo.hidden, geo.head_dim) == (LAYERS, HEADS, HIDDEN, HD)
    assert geo.block_shape("qk") == (2 * HD, HIDDEN) and geo.block_shape("v") == (HD, HIDDEN) and geo.block_shape("o") == (HIDDEN, HD)
    assert geo.qkv_rows(2, "qk") == slice(6 * HD, 8 * HD) and geo.qkv_rows(2, "v") == slice(8 * HD, 9 * HD)
    assert geo.dense_cols(1) == slice(HD, 2 * HD)
    assert geo.check([HeadRef(1, 2), HeadRef(0, 0), HeadRef(1, 2)]) == [HeadRef(0, 0), HeadRef(1, 2)]
    with pytest.raises(CurateError, match=f"head {LAYERS}.0 is out of range"):
        geo.check([HeadRef(LAYERS, 0)])
    with pytest.raises(CurateError, match=f"head 0.{HEADS} is out of range"):
        geo.check([HeadRef(0, HEADS)])
    with pytest.raises(CurateError, match="no target head"):
        geo.check([])
    assert geo.rows_in_head("qk") == slice(0, 2 * HD) and geo.rows_in_head("v") == slice(2 * HD, 3 * HD)
    assert geo.rows_in_head("qkv") == slice(0, 3 * HD)
    t = torch.arange(2 * 3 * HIDDEN).view(2, 3 * HIDDEN)
    for h in range(HEADS):  # the per-head views agree with the weight slices
        assert torch.equal(geo.qkv_by_head(t)[:, h, geo.rows_in_head("qk")], t[:, geo.qkv_rows(h, "qk")])
        assert torch.equal(geo.qkv_by_head(t)[:, h, geo.rows_in_head("v")], t[:, geo.qkv_rows(h, "v")])
        a = t[:, :HIDDEN]
        assert torch.equal(geo.dense_by_head(a)[:, h], a[:, geo.dense_cols(h)])


@pytest.mark.parametrize("target", [0, 1, 2])
def test_zeroing_qkvo_removes_exactly_that_heads_output(target: int) -> None:
    model = model_without_biases()
    layer = 1
    w0, a0 = run_layer(model, TOKENS, layer)
    c0 = contributions(model, a0, layer)
    zero_head(model, HeadRef(layer, target), "qkvo")
    w1, a1 = run_layer(model, TOKENS, layer)
    c1 = contributions(model, a1, layer)
    assert torch.count_nonzero(c1[target]) == 0  # the head's contribution to the layer output is gone
    assert c0[target].abs().max() > 1e-3  # ... and it was not zero before
    assert torch.count_nonzero(a1.view(*a1.shape[:-1], HEADS, HD)[..., target, :]) == 0  # V zeroed: no attention output
    for j in range(HEADS):
        if j != target:  # every other head of the layer: same pattern, same output, bit for bit
            assert torch.equal(w1[:, j], w0[:, j])
            assert torch.equal(c1[j], c0[j])
    # the layer below is untouched
    wl0, al0 = run_layer(model_without_biases(), TOKENS, 0)
    wl1, al1 = run_layer(model, TOKENS, 0)
    assert torch.equal(wl0, wl1) and torch.equal(al0, al1)


def test_zeroing_qk_makes_that_head_attend_uniformly_and_nothing_else_changes() -> None:
    model = model_without_biases()
    layer, target = 1, 2
    w0, a0 = run_layer(model, TOKENS, layer)
    zero_head(model, HeadRef(layer, target), "qk")
    w1, a1 = run_layer(model, TOKENS, layer)
    causal_uniform = torch.tril(torch.ones(T, T, dtype=torch.float64)) / torch.arange(1, T + 1, dtype=torch.float64)[:, None]
    assert torch.allclose(w1[:, target], causal_uniform.expand_as(w1[:, target]), atol=1e-12)
    assert not torch.allclose(w0[:, target], w1[:, target], atol=1e-3)
    for j in range(HEADS):
        if j != target:
            assert torch.equal(w1[:, j], w0[:, j])
            assert torch.equal(a1.view(3, T, HEADS, HD)[..., j, :], a0.view(3, T, HEADS, HD)[..., j, :])


def test_read_write_add_touch_only_the_heads_slices() -> None:
    model = model_without_biases()
    head = HeadRef(0, 1)
    attn = model.gpt_neox.layers[0].attention
    qkv_before, dense_before = attn.query_key_value.weight.clone(), attn.dense.weight.clone()
    gen = torch.Generator().manual_seed(1)
    new = {b: torch.randn(HeadGeometry.of(model).block_shape(b), generator=gen, dtype=torch.float64) for b in ("qk", "v", "o")}
    write_head(model, head, new)
    back = read_head(model, head, "qkvo")
    assert all(torch.equal(back[b], new[b]) for b in new)
    changed_rows = torch.nonzero((attn.query_key_value.weight != qkv_before).any(dim=1)).flatten()
    assert changed_rows.tolist() == list(range(3 * HD, 6 * HD))  # head 1's Q, K, V rows and nothing else
    changed_cols = torch.nonzero((attn.dense.weight != dense_before).any(dim=0)).flatten()
    assert changed_cols.tolist() == list(range(HD, 2 * HD))
    # Q rows first, then K, then V inside the head's block of rows
    assert torch.equal(attn.query_key_value.weight[3 * HD : 4 * HD], new["qk"][:HD])
    assert torch.equal(attn.query_key_value.weight[4 * HD : 5 * HD], new["qk"][HD:])
    assert torch.equal(attn.query_key_value.weight[5 * HD : 6 * HD], new["v"])
    add_to_head(model, head, {"o": torch.ones(HIDDEN, HD, dtype=torch.float64)}, scale=0.5)
    assert torch.equal(read_head(model, head, "qkvo")["o"], new["o"] + 0.5)
    with pytest.raises(ValueError):
        write_head(model, head, {"qk": torch.zeros(3, 3)})
