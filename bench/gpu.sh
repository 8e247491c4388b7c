#!/usr/bin/env bash
# The Pythia-size comparisons on one CUDA GPU (about 8 minutes on one H200), printed as they run:
#   1. scoring vs the floor, every head vs one head, vs the per-row loop (bench/pythia_scoring.py), Pythia-70m stand-in;
#   2. curate vs kronfluence / bergson (bench/pythia_peers.py), when they import (a peer that does not is skipped);
#   3. Pythia-160m: bf16 and fp32 scoring tokens/s, and `curate train --precision bf16 --micro-batch` tokens/s
#      (bench/gpu_bench.py);
#   4. `curate score --dry-run --device cuda` on a 1,000-step Pythia-70m stand-in: the GPU estimate of the README.
# Usage (from the repository root):  bash bench/gpu.sh            # CUDA
#                                    bash bench/gpu.sh --device cpu --tiny   # a smoke run of every part on CPU
# PYTHON picks the interpreter (e.g. PYTHON=/path/to/benchenv/bin/python for the peers).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_ADDRESS="${RAY_ADDRESS:-local}"
PY="${PYTHON:-python3}"
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "usage: bash bench/gpu.sh [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done
if [ "$TINY" = 1 ]; then
  SMALL=(--preset pythia-14m --context 32); ROWS=(--rows 4 --batch-rows 2 --repeats 1); STEPS=2; TINYFLAG=(--tiny)
else
  SMALL=(--preset pythia-70m); ROWS=(--rows 16 --batch-rows 8 --repeats 3); STEPS=1000; TINYFLAG=()
fi
# time limits sized for the H200 (about 8 minutes in all); none for the CPU smoke run, which only checks the parts run
limit() { if [ "$TINY" = 1 ]; then "${@:2}"; else timeout "$1" "${@:2}"; fi; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; fi

echo "== 1. scoring vs floor / all heads / per-row loop ($DEVICE)"
limit 240 "$PY" bench/pythia_scoring.py --device "$DEVICE" "${SMALL[@]}" "${ROWS[@]}" || echo "(part 1 stopped: $?)"

echo "== 2. peers ($DEVICE)"
limit 150 "$PY" bench/pythia_peers.py --device "$DEVICE" "${SMALL[@]}" "${ROWS[@]}" || echo "(part 2 stopped: $?)"

echo "== 3. Pythia-160m bf16 scoring and training ($DEVICE)"
limit 120 "$PY" bench/gpu_bench.py --device "$DEVICE" "${TINYFLAG[@]}" || echo "(part 3 stopped: $?)"

echo "== 4. curate score --dry-run on a ${STEPS}-step stand-in ($DEVICE)"
if [ "$TINY" = 1 ]; then
  "$PY" bench/pythia_standin.py "$WORK/p" --preset pythia-14m --steps "$STEPS" --batch 4 --context 32 >/dev/null
  CKPT="$WORK/p/pythia-14m-random"
else
  "$PY" bench/pythia_standin.py "$WORK/p" --steps "$STEPS" >/dev/null
  CKPT="$WORK/p/pythia-70m-random"
fi
limit 90 "$PY" -m curate.cli score --model "$CKPT" --corpus "$WORK/p/pile" --window "0:$STEPS" --heads 1.0,3.5 \
  --device "$DEVICE" --out "$WORK/scores" --dry-run --quiet || echo "(part 4 stopped: $?)"
