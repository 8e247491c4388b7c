"""`curate score --dry-run` on a workspace without its defaults: what a real run would build before scoring (the
default corpus, the reference run) and how long that takes, measured on a sample; nothing is built or written.

- The corpus: a sample of `CORPUS_SAMPLE_DOCS` documents is generated, a tokenizer trained on it and the documents
  fitted to rows, timed stage by stage and scaled to the build's counts (generation and fitting per document, the
  tokenizer by its training documents). Writing the files is not included.
- The reference run: the default model at the reference recipe trains a few steps (one warm-up step, then until
  `TRAIN_MIN_STEPS` and `TRAIN_MIN_SECONDS`) on random rows of the corpus's shape, with the trainer's one thread;
  seconds per step x the recipe's steps. Evaluations and checkpoints are not included.
- The scoring itself is not estimated: its window ends where the head forms in the reference run, known once the
  run is trained (a dry run then estimates it, as for any model).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from curate.corpus import METADATA_FILE, open_corpus
from curate.default_corpus import DefaultCorpusSpec, fit_documents, train_tokenizer
from curate.minipile import generate_documents
from curate.pipelines.score_request import ScoreRequest, check_request
from curate.training.curves import SUMMARY_JSON
from curate.training.default_model import default_model_config
from curate.training.models import build_model
from curate.training.recipes import recipe_fields
from curate.workspace import default_corpus_dir, reference_run_dir, resolve_workspace

CORPUS_SAMPLE_DOCS = 500
TRAIN_MIN_STEPS = 3
TRAIN_MIN_SECONDS = 1.0
TRAIN_MAX_STEPS = 50
TRAIN_THREADS = 1
"""The reference run trains with one torch thread (`TrainSpec.threads`' default): timed with as many."""


def _reference_complete(run_dir: Path) -> bool:
    path = run_dir / SUMMARY_JSON
    try:
        return path.is_file() and json.loads(path.read_text()).get("complete") is True
    except (OSError, json.JSONDecodeError):
        return False


def estimate_corpus_build(folder: Path, spec: DefaultCorpusSpec = DefaultCorpusSpec(), seed: int = 0) -> dict:
    """The default corpus build, timed on a sample of documents and scaled to the build's counts."""
    t0 = time.perf_counter()
    sample = list(generate_documents(CORPUS_SAMPLE_DOCS, seed, spec.mixture))
    t1 = time.perf_counter()
    texts = [d.text for d in sample]
    tok = train_tokenizer(texts, spec.vocab_size)
    t2 = time.perf_counter()
    fit_documents(texts, tok, spec.seq_len)
    t3 = time.perf_counter()
    n_docs = spec.train_rows + spec.heldout_rows  # one document per row
    per_doc_generate, per_doc_fit = (t1 - t0) / CORPUS_SAMPLE_DOCS, (t3 - t2) / CORPUS_SAMPLE_DOCS
    seconds_tokenizer = (t2 - t1) * spec.tokenizer_docs / CORPUS_SAMPLE_DOCS
    seconds = per_doc_generate * (spec.tokenizer_docs + n_docs) + seconds_tokenizer + per_doc_fit * n_docs
    return {"build": "default corpus", "folder": str(folder), "rows": n_docs, "row_len": spec.seq_len + 1,
            "vocab_size": spec.vocab_size, "sample_docs": CORPUS_SAMPLE_DOCS, "seconds": seconds,
            "excludes": "writing the files"}


def estimate_reference_run(run_dir: Path, vocab_size: int, row_len: int) -> dict:
    """The reference run, timed over a few training steps of the default model on random rows."""
    fields = recipe_fields("reference")
    batch, steps = int(fields["batch_size"]), int(fields["steps"])
    model = build_model(default_model_config(vocab_size), seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=fields["lr"], betas=(fields["beta1"], fields["beta2"]), eps=fields["eps"])
    rows = torch.randint(vocab_size, (batch, row_len), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        logits = model(rows[:, :-1]).logits
        F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        step()  # warm-up, not timed
        timed, seconds = 0, 0.0
        while timed < TRAIN_MAX_STEPS and (timed < TRAIN_MIN_STEPS or seconds < TRAIN_MIN_SECONDS):
            t0 = time.perf_counter()
            step()
            seconds += time.perf_counter() - t0
            timed += 1
    finally:
        torch.set_num_threads(old_threads)
    per_step = seconds / timed
    return {"build": "reference run", "folder": str(run_dir), "steps": steps, "batch_size": batch,
            "parameters": sum(p.numel() for p in model.parameters()), "steps_timed": timed, "seconds_per_step": per_step,
            "threads": TRAIN_THREADS, "seconds": per_step * steps, "excludes": "evaluations and checkpoints"}


def default_build_plan(req: ScoreRequest) -> dict | None:
    """What `curate score` on the defaults (no --model) would build first, with estimates; None when the workspace
    already holds the default corpus and a finished reference run (the ordinary dry run applies)."""
    check_request(req)
    if req.model is not None:
        return None
    ws = resolve_workspace(req.workspace)
    corpus_dir, run_dir = default_corpus_dir(ws), reference_run_dir(ws)
    corpus_missing = not (corpus_dir / METADATA_FILE).is_file()
    if not corpus_missing and _reference_complete(run_dir):
        return None
    spec = DefaultCorpusSpec()
    builds = []
    if corpus_missing:
        builds.append(estimate_corpus_build(corpus_dir, spec))
        vocab_size, row_len = spec.vocab_size, spec.seq_len + 1
    else:
        corpus = open_corpus(corpus_dir)
        vocab_size = int(corpus.meta.vocab_size) if corpus.meta is not None and corpus.meta.vocab_size else spec.vocab_size
        row_len = corpus.row_len
    builds.append(estimate_reference_run(run_dir, vocab_size, row_len))
    return {
        "dry_run": True,
        "circuit": req.circuit,
        "method": req.method,
        "workspace": str(ws),
        "builds": builds,
        "estimate": {"seconds": sum(b["seconds"] for b in builds), "excludes": "the scoring (its window is known once the reference run is trained)"},
    }
