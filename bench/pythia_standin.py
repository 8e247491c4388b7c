"""A Pythia stand-in on disk: a `training.presets` architecture with random weights (an HF folder) and a corpus of
`--steps` steps of 1,024 rows of 2,049 tokens (Pythia's batch and row) whose token file is sparse (every token 0:
timing does not depend on the tokens; a 1,000-step corpus takes 4.2 GB of address but almost no disk).

    PYTHONPATH=. python bench/pythia_standin.py OUT [--preset pythia-70m] [--steps 1000] [--batch 1024] [--context 2048]

Writes OUT/pile (corpus.json, document.bin/.idx) and OUT/<preset>-random.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_standin(out: Path, preset: str = "pythia-70m", steps: int = 1000, batch: int = 1024, context: int | None = None,
                 random_rows: int = 0) -> tuple[Path, Path]:
    """(corpus folder, checkpoint folder); the first `random_rows` rows hold random tokens, the rest token 0."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from curate.atomic import write_json
    from curate.corpus import CorpusMeta
    from curate.megatron import idx_bytes
    from curate.training.presets import preset_for

    fields = preset_for(preset).architecture.config_fields()
    row_len = int(context or fields["max_position_embeddings"]) + 1
    corpus = out / "pile"
    corpus.mkdir(parents=True, exist_ok=True)
    rows = steps * batch
    (corpus / "document.idx").write_bytes(idx_bytes(np.dtype(np.uint16), np.full(rows, row_len, dtype="<i4")))
    with open(corpus / "document.bin", "wb") as f:
        f.truncate(rows * row_len * 2)
        if random_rows:
            data = np.random.default_rng(0).integers(0, 50277, (min(random_rows, rows), row_len)).astype("<u2")
            f.write(data.tobytes())
    write_json(corpus / "corpus.json", CorpusMeta(data="document.idx", batch_size=batch, vocab_size=50277).to_json())
    ckpt = out / f"{preset}-random"
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(**fields)).save_pretrained(ckpt)
    return corpus, ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", default="pythia-70m")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--random-rows", type=int, default=0, help="rows of random tokens at the start (the rest are token 0)")
    args = ap.parse_args()
    corpus, ckpt = make_standin(args.out, args.preset, args.steps, args.batch, args.context, args.random_rows)
    print(f"corpus {corpus}\ncheckpoint {ckpt}")


if __name__ == "__main__":
    main()
