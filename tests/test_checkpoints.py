"""A run's checkpoint is an ordinary Hugging Face model folder: `AutoTokenizer` + `AutoModelForCausalLM` load it,
truncation cuts to the model's context, the special-token ids agree, and a left-padded batch generates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from curate.tokenize import EOT_TOKEN
from curate.training.spec import TrainSpec
from curate.training.trainer import train
from tests.score_helpers import build_tiny_corpus

CONTEXT = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    corpus = build_tiny_corpus(root / "corpus", docs=120, seq_len=CONTEXT - 1, batch_size=8)
    spec = TrainSpec(corpus=str(corpus), architecture={"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 128,
                                                       "num_attention_heads": 2, "max_position_embeddings": CONTEXT},
                     steps=4, eval_every=4, checkpoints="none", heldout_rows=0, eval_probes=4, probe_half_len=8)
    return train(spec, root / "run", progress=False).final_checkpoint


def test_the_files_name_the_context_and_the_special_ids(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    vocab = json.loads((checkpoint / "tokenizer.json").read_text())["model"]["vocab"]
    eot = vocab[EOT_TOKEN]
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (eot, eot, eot)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (eot, eot, eot)
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"] == CONTEXT
    assert tokenizer_config["padding_side"] == "left"


def test_auto_classes_load_truncate_pad_and_generate(checkpoint: Path) -> None:
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert ids == (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id)
    assert tok.convert_ids_to_tokens(tok.pad_token_id) == EOT_TOKEN and len(tok) == model.config.vocab_size

    long_text = " ".join(["the cat sat on the mat"] * 30)
    assert len(tok(long_text)["input_ids"]) > CONTEXT
    enc = tok([long_text, "the cat"], padding=True, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (2, CONTEXT)  # truncated to the model's context, the short row padded to it
    assert enc["attention_mask"][1, 0] == 0 and enc["attention_mask"][1, -1] == 1  # padded on the left
    assert torch.isfinite(model(**enc).logits).all()

    texts = ["the cat sat", "a dog sat on the"]
    batch = tok(texts, padding=True, return_tensors="pt")
    new = 6
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new, do_sample=False)
        alone = [model.generate(**tok([t], return_tensors="pt"), max_new_tokens=new, do_sample=False) for t in texts]
    assert out.shape == (2, batch["input_ids"].shape[1] + new)
    for row, single in zip(out, alone):  # each padded row continues exactly as the text does on its own
        assert row[-new:].tolist() == single[0, -new:].tolist()
