"""The EK-FAC damping rule's constants (torch-free, so the command line can name the default without loading torch).

The damped inverse divides by max(Lambda + damping * mean(Lambda), floor) per eigenvalue (`../shared/MDA-SPEC.md`:
the floor clamps the whole denominator, as the paper's code and kronfluence do)."""
from __future__ import annotations

DEFAULT_DAMPING = 0.1
"""The damping factor: the share of the block's mean eigenvalue added to every eigenvalue (`curate score --damping`)."""
DEFAULT_DAMPING_FLOOR = 1e-5
"""The least denominator (the clamp of Lambda + damping * mean(Lambda))."""
DAMPING_RULE = "max(lambda + damping * mean(lambda), floor)"
"""The rule, as a job's fingerprint records it: scores preconditioned by the earlier rule (lambda + max(damping *
mean(lambda), floor), which differs where eigenvalues are tiny) are another job's, never resumed or reused as this one's."""
