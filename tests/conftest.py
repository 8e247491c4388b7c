"""Fixtures shared by the test modules, and the order in which the two test processes take the files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The longest files first (their measured wall time in CI, longest first), so the two xdist processes start them at
# once and the many short files fill in around them; pyproject's `--no-loadscope-reorder` keeps this order (xdist's
# default puts the files with the most tests first, which left the longest single tests for last).
LONGEST_FIRST = (
    "test_experiment.py", "test_pythia_standins.py", "test_journeys_quick_start.py", "test_multinode.py",
    "test_default_formation.py", "test_journeys.py", "test_scales.py", "test_pythia_journey.py", "test_raw_text.py",
    "test_bad_input.py", "test_scores_folder.py", "test_portable.py", "test_trajectory.py", "test_evaluate.py",
    "test_experiment_reference.py", "test_methods.py", "test_mix_handoffs.py", "test_score_cli.py",
)


def pytest_collection_modifyitems(session, config, items) -> None:
    """Files in LONGEST_FIRST order, then the rest as collected; the order within a file is kept."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray of 2 CPUs for the module's scoring jobs to join (its GCS address)."""
    import ray

    from curate.pipelines.ray_pool import ray_session

    torch.set_num_threads(1)
    with ray_session(None, num_cpus=2):
        yield ray.get_runtime_context().gcs_address
