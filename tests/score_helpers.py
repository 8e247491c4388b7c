"""Test fixtures for the scoring pipeline: a tiny corpus folder (with a `domain` sidecar) and a tiny
GPT-NeoX model folder that matches its vocabulary, both built in the test (no download)."""
from __future__ import annotations

import random
from pathlib import Path

from tests.corpus_helpers import WORDS, train_tiny_tokenizer

DOMAINS = ("prose", "code", "repeat")


def tiny_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Documents of three kinds (some with exact long-range repeats) and their domain labels."""
    rng = random.Random(seed)
    texts, domains = [], []
    for i in range(n):
        kind = DOMAINS[i % 3]
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 50))]
        if kind == "repeat":
            span = words[: rng.randint(5, 12)]
            words = span + words[len(span) :] + span
        elif kind == "code":
            words = ["def", "foo", "(", "x", ")", "return"] + words
        texts.append(" ".join(words))
        domains.append(kind)
    return texts, domains


def build_tiny_corpus(folder: Path, docs: int = 240, seq_len: int = 31, batch_size: int = 8, seed: int = 0,
                      vocab_size: int = 300) -> Path:
    """A corpus folder (Megatron rows of seq_len + 1 tokens, rows.parquet with `domain`, tokenizer.json)."""
    from curate.ingest import ingest_documents

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tok = train_tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer.json", vocab_size=vocab_size, seed=seed)
    texts, domains = tiny_texts(docs, seed)
    ingest_documents(texts, {"domain": domains}, tok, seq_len, folder, seed=seed, batch_size=batch_size)
    return folder


def build_tiny_model(folder: Path, vocab_size: int = 300, context: int = 32, seed: int = 0, hidden: int = 32,
                     layers: int = 2, heads: int = 4) -> Path:
    """A randomly initialised GPT-NeoX saved as an HF folder (eager attention, full rotary)."""
    from transformers import GPTNeoXConfig

    from curate.training.models import build_model

    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        tie_word_embeddings=False, use_parallel_residual=True,
    )
    model = build_model(config, seed)
    model.save_pretrained(folder)
    return Path(folder)



def kill_score_after_first_shard(args: list[str], out: Path, delay_s: float, timeout_s: float = 120) -> int:
    """Start `python -m curate.cli score ARGS` with a per-shard delay, kill -9 it once the manifest records a
    shard, and return how many shards it had recorded."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "CURATE_FAULT_SHARD_DELAY_S": str(delay_s)}
    proc = subprocess.Popen([sys.executable, "-m", "curate.cli", "score", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    manifest = out / "manifest.json"

    def recorded() -> int:
        try:
            return len(json.loads(manifest.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None and not recorded():
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return recorded()
