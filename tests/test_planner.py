"""The batch planner: the chosen batch fits the GPU, one more clip does not."""

import pytest

from side4video.planner import ALLOCATOR_FRACTION, CONTEXT_BYTES, largest_batch, parse_bytes, usable_bytes
from side4video.profiler import predict_memory


def test_parse_bytes_and_the_stated_margin():
    assert parse_bytes("24 GiB") == parse_bytes("24576MiB") == 24 * 2**30
    assert parse_bytes("24GB") == 24 * 10**9  # one unit everywhere: GB = 10^9 bytes
    assert parse_bytes("512MB") == 512 * 10**6
    assert usable_bytes(80 * 2**30) == int(80 * 2**30 * (1 - ALLOCATOR_FRACTION) - CONTEXT_BYTES)
    with pytest.raises(ValueError, match="24 gigs"):
        parse_bytes("24 gigs")


def test_largest_batch_fits_and_one_more_does_not():
    budget = 60 * 2**20
    fit = largest_batch("side4video-tiny", budget, frames=2, precision="bf16-mixed", checkpointing=False)
    assert fit.batch_size > 1

    def memory(batch):
        return predict_memory("side4video-tiny", batch, frames=2, precision="bf16-mixed", hold_grads=True).peak

    assert fit.train_memory_bytes == memory(fit.batch_size) <= budget < memory(fit.batch_size + 1)
