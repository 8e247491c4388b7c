"""TransformerLens's induction-head detector, on a curate checkpoint: does a head that passes curate's probe also
attend the induction way on natural text?

The detector's definition (TransformerLens `head_detector`, "induction_head", error measure "mul"): for a token
sequence, the detection pattern marks (i, j) when j < i and the token before j equals token i (attend to what
followed the last time the current token occurred); a head's score is the attention it puts on the marked cells
over all the attention it pays, averaged over sequences. Run on two inputs:
- repeated random tokens `[r, r]` (what curate's probe scores, here with half-length = context / 2; the first half
  has no marked cell, so a perfect induction head scores about 0.5 here, half of curate's prefix-matching score), and
- held-out rows of a corpus (natural text: only positions whose token occurred before carry marks, so a perfect
  induction head scores the share of attention at such positions, well under 1; compare heads, not to 1).

    PYTHONPATH=. python bench/induction_detector.py RUN --revision stepK --corpus CORPUS [--rows 64] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from curate.corpus import open_corpus
from curate.training.models import load_model


def induction_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """(n, T) tokens -> (n, T, T) 0/1: cell (i, j) when j < i and tokens[j - 1] == tokens[i]."""
    n, t = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # (i, j): tokens[i] == tokens[j]
    shifted = torch.zeros_like(same)
    shifted[:, :, 1:] = same[:, :, :-1]  # (i, j): tokens[i] == tokens[j - 1]
    strictly_before = torch.ones(t, t, dtype=torch.bool).tril(-1)
    return (shifted & strictly_before).float()


@torch.no_grad()
def detector_scores(model: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """(layers, heads) mean over sequences of sum(attention x pattern) / sum(attention)."""
    attentions = model(tokens, output_attentions=True).attentions  # per layer (n, heads, T, T)
    pattern = induction_pattern(tokens)[:, None]
    out = [((a * pattern).sum(dim=(2, 3)) / a.sum(dim=(2, 3))).mean(dim=0) for a in attentions]
    return torch.stack(out).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder or checkpoint")
    ap.add_argument("--revision", default=None, help="checkpoint of the run (stepK)")
    ap.add_argument("--corpus", required=True, help="corpus whose last --rows rows (held out) are the natural text")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.run, revision=args.revision).eval()
    corpus = open_corpus(args.corpus)
    natural = torch.from_numpy(corpus.rows(corpus.num_rows - args.rows, corpus.num_rows)[:, :-1].astype(np.int64))
    context = natural.shape[1]
    gen = torch.Generator().manual_seed(args.seed)
    half = torch.randint(1, int(model.config.vocab_size), (args.rows, context // 2), generator=gen)
    repeated = torch.cat([half, half], dim=1)
    rand, nat = detector_scores(model, repeated), detector_scores(model, natural)
    print(f"{'head':>5s} {'repeated random':>16s} {'natural text':>13s}")
    for layer in range(rand.shape[0]):
        for head in range(rand.shape[1]):
            print(f"{layer}.{head:<3d} {rand[layer, head]:16.3f} {nat[layer, head]:13.3f}")
    marked = induction_pattern(natural).amax(dim=2).mean().item()
    print(f"natural rows: {args.rows} x {context} tokens; {marked:.1%} of positions have a marked cell (a token seen before)")


if __name__ == "__main__":
    main()
