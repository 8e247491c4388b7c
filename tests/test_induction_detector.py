"""bench/induction_detector.py: the detection pattern of TransformerLens's induction detector, cell by cell."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SPEC = importlib.util.spec_from_file_location("induction_detector", Path(__file__).resolve().parents[1] / "bench" / "induction_detector.py")
detector = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(detector)


def test_the_pattern_marks_what_followed_each_earlier_occurrence_of_the_current_token() -> None:
    # tokens:   a  b  c  a  b  a
    tokens = torch.tensor([[1, 2, 3, 1, 2, 1]])
    got = detector.induction_pattern(tokens)[0]
    marked = {(i, j) for i, j in zip(*torch.nonzero(got, as_tuple=True)) for i, j in [(int(i), int(j))]}
    # i=3 (a): a at 0 -> attend 1; i=4 (b): b at 1 -> 2; i=5 (a): a at 0 -> 1 and a at 3 -> 4
    assert marked == {(3, 1), (4, 2), (5, 1), (5, 4)}


def test_a_head_attending_only_to_the_marked_cells_scores_its_share_of_marked_rows() -> None:
    tokens = torch.tensor([[5, 6, 7, 5, 6, 7]])  # [r, r] with r of length 3: rows 3, 4, 5 have one mark each
    pattern = detector.induction_pattern(tokens)
    attn = torch.eye(6)[None, None].clone()  # attends to itself everywhere ...
    for i, j in [(3, 1), (4, 2), (5, 3)]:
        attn[0, 0, i] = torch.nn.functional.one_hot(torch.tensor(j), 6).float()  # ... except the induction cells

    class Model(torch.nn.Module):
        def forward(self, tokens, output_attentions=True):
            return type("Out", (), {"attentions": (attn,)})

    assert pattern[0, 5, 3] == 1
    assert detector.detector_scores(Model(), tokens)[0, 0] == 0.5  # 3 of the 6 rows' attention on marked cells
