"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray of 2 CPUs for the module's scoring jobs to join (its GCS address)."""
    import ray

    from curate.pipelines.ray_pool import ray_session

    torch.set_num_threads(1)
    with ray_session(None, num_cpus=2):
        yield ray.get_runtime_context().gcs_address
