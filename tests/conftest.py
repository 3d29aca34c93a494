"""Shared test setup: offline Hugging Face libraries, fixed seeds, few CPU threads."""

import os

import pytest
import torch

# Set before any test module imports transformers / tokenizers: nothing is downloaded in tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
