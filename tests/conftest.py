"""Shared test setup: offline Hugging Face libraries, fixed seeds, few CPU threads."""

import os

import pytest
import torch

# Set before any test module imports transformers / tokenizers: nothing is downloaded in tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# the machine the suite is sized for has 2 cores: 2 threads, or 1 per pytest-xdist worker
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    """Every test starts from seed 0 and ``THREADS`` compute threads, whatever the previous test set."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
