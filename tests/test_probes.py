"""The one repeat-probe builder: vocabulary, excluded ids, half length, the context refusal, and the same
tokens as the four builders it replaced."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import pytest
import torch
from transformers import GPTNeoXConfig

from curate.attribution.probes import build_probes, corpus_probes, probe_spec, special_token_ids
from curate.corpus import CorpusMeta
from curate.errors import CurateError
from curate.training.default_model import default_model_config


def old_make_repeat_probes(vocab_size: int, n: int, half_len: int, seed: int, exclude_ids: Sequence[int] = ()) -> torch.Tensor:
    """The draw of the former `metrics.make_repeat_probes`, verbatim."""
    excluded = {int(i) for i in exclude_ids if 0 <= int(i) < vocab_size}
    allowed = torch.tensor([t for t in range(vocab_size) if t not in excluded], dtype=torch.long)
    gen = torch.Generator().manual_seed(int(seed))
    first = allowed[torch.randint(0, allowed.numel(), (n, half_len), generator=gen)]
    return torch.cat([first, first], dim=1)


def old_trainer_probes(config, corpus, n: int = 32, half_len: int | None = None, seed: int = 0) -> torch.Tensor:
    """The former training-run evaluation probes (the trainer's former evaluator and its caller)."""
    vocab_size = int(config.vocab_size)
    exclude = sorted(set(special_token_ids(config)) | ({int(corpus.meta.eot_id)} if corpus.meta.eot_id is not None else set()))
    vocab = min(vocab_size, int(corpus.meta.vocab_size)) if corpus.meta.vocab_size else vocab_size
    context = corpus.row_len - 1
    half = half_len or min(32, context // 2)
    return old_make_repeat_probes(vocab, n, half, seed, exclude)


def old_job_probes(config, corpus, seed: int) -> torch.Tensor:
    """The former `score_job.job_probes` (also the attribution window's)."""
    vocab = int(config.vocab_size)
    if corpus.meta.vocab_size:
        vocab = min(vocab, int(corpus.meta.vocab_size))
    exclude = set(special_token_ids(config))
    if corpus.meta.eot_id is not None:
        exclude.add(int(corpus.meta.eot_id))
    context = min(int(config.max_position_embeddings), corpus.row_len - 1)
    half = max(2, min(32, context // 2))
    return old_make_repeat_probes(vocab, 32, half, seed, sorted(exclude))


def fake_corpus(vocab_size: int | None, eot_id: int | None, row_len: int) -> SimpleNamespace:
    return SimpleNamespace(meta=CorpusMeta(data="corpus.idx", vocab_size=vocab_size, eot_id=eot_id), row_len=row_len)


def test_default_setup_draws_the_same_tokens_as_before() -> None:
    """The reference run (default model config, context 64, corpus vocabulary, end-of-text 0): the training
    evaluation, the score job and the in-process scorer draw exactly the former probes."""
    config = default_model_config(300)
    corpus = fake_corpus(300, 0, 65)
    new = corpus_probes(config, corpus, n=32, seed=0)
    assert new.shape == (32, 64)
    assert torch.equal(new, old_trainer_probes(config, corpus, n=32, seed=0))
    assert torch.equal(new, old_job_probes(config, corpus, seed=0))
    assert torch.equal(corpus_probes(config, corpus, n=8, half_len=8, seed=3), old_trainer_probes(config, corpus, 8, 8, 3))
    assert torch.equal(corpus_probes(config, corpus, seed=7), old_job_probes(config, corpus, seed=7))
    # a padded embedding table (Pythia) with a smaller tokenizer, rows shorter than the model's context
    padded, short = default_model_config(320), fake_corpus(300, 0, 33)
    assert torch.equal(corpus_probes(padded, short, seed=1), old_job_probes(padded, short, seed=1))
    assert torch.equal(corpus_probes(padded, short, seed=1), old_trainer_probes(padded, short, seed=1))
    assert int(corpus_probes(padded, short, n=200, seed=1).max()) < 300
    # bench/score.py: the default config of 512 ids, no special ids
    assert torch.equal(build_probes(default_model_config(512), n=16, seed=0), old_make_repeat_probes(512, 16, 32, 0))


def test_circuits_cli_setup_draws_the_same_tokens_as_before() -> None:
    """`curate circuits` on an HF config (bos 0, eos 2) with and without a tokenizer next to the checkpoint."""
    config = GPTNeoXConfig(vocab_size=48, max_position_embeddings=128)
    assert torch.equal(build_probes(config, n=5, seed=3), old_make_repeat_probes(48, 5, 32, 3, [0, 2]))
    assert torch.equal(build_probes(config, vocab_size=40, eot_id=7, n=5, seed=3),
                       old_make_repeat_probes(40, 5, 32, 3, [0, 2, 7]))


def test_special_ids_and_end_of_text_are_excluded() -> None:
    config = GPTNeoXConfig(vocab_size=6, max_position_embeddings=64)  # bos 0, eos 2
    assert set(build_probes(config, n=200, half_len=16).unique().tolist()) == {1, 3, 4, 5}
    assert set(build_probes(config, eot_id=4, n=200, half_len=16).unique().tolist()) == {1, 3, 5}
    assert set(build_probes(config, vocab_size=5, eot_id=4, n=200, half_len=16).unique().tolist()) == {1, 3}
    corpus = fake_corpus(6, 5, 33)
    assert set(corpus_probes(config, corpus, n=200).unique().tolist()) == {1, 3, 4}
    spec = probe_spec(config, vocab_size=5, eot_id=4, n=3, seed=2)
    assert spec.to_json() == {"n": 3, "half_len": 32, "seed": 2, "vocab_size": 5, "excluded_ids": [0, 2, 4]}
    assert torch.equal(spec.draw(), build_probes(config, vocab_size=5, eot_id=4, n=3, seed=2))
    with pytest.raises(CurateError, match="fewer than 2 tokens"):
        build_probes(config, vocab_size=4, eot_id=3, n=2)


def test_half_length_defaults_to_the_context() -> None:
    def half(max_pos: int, **kw) -> int:
        return build_probes(GPTNeoXConfig(vocab_size=50, max_position_embeddings=max_pos), n=2, **kw).shape[1] // 2

    assert half(2048) == 32 and half(64) == 32 and half(40) == 20 and half(16) == 8
    assert half(2048, context=16) == 8 and half(16, context=2048) == 8  # the smaller of the model's and the rows'
    assert half(64, half_len=32) == 32 and half(64, half_len=5) == 5


@pytest.mark.parametrize("max_pos, context, half_len", [(64, None, 40), (64, None, 33), (2048, 32, 17), (16, 64, 9)])
def test_a_half_length_beyond_the_context_is_refused(max_pos: int, context: int | None, half_len: int) -> None:
    config = GPTNeoXConfig(vocab_size=50, max_position_embeddings=max_pos)
    ctx = min(max_pos, context or max_pos)
    with pytest.raises(CurateError, match=f"probe half length {half_len} does not fit the context of {ctx} tokens") as info:
        build_probes(config, context=context, half_len=half_len)
    assert "--" not in str(info.value)


def test_bad_counts_name_no_flag() -> None:
    config = GPTNeoXConfig(vocab_size=50, max_position_embeddings=64)
    with pytest.raises(CurateError, match="the number of probes must be at least 1") as info:
        build_probes(config, n=0)
    assert "--" not in str(info.value)
    with pytest.raises(CurateError, match="half length must be at least 2"):
        build_probes(config, half_len=1)
    with pytest.raises(CurateError, match="half length must be at least 2"):
        build_probes(GPTNeoXConfig(vocab_size=50, max_position_embeddings=3), n=2)


def test_seed_decides_the_draw() -> None:
    config = GPTNeoXConfig(vocab_size=50, max_position_embeddings=64)
    p = build_probes(config, n=5, half_len=7, seed=3)
    assert p.shape == (5, 14) and p.dtype == torch.long and torch.equal(p[:, :7], p[:, 7:])
    assert torch.equal(p, build_probes(config, n=5, half_len=7, seed=3))
    assert not torch.equal(p, build_probes(config, n=5, half_len=7, seed=4))
