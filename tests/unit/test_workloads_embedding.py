"""Block sparsity of the vocabulary-parallel embedding AllReduce (workloads/embedding_shards.py)."""

import numpy as np
import pytest

from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.errors import WorkloadError
from nicemu.workloads.embedding_shards import (
    embedding_block_mask,
    embedding_density,
    embedding_input,
    embedding_row_mask,
    row_owner,
    token_ids,
    vocab_shard_size,
)


def test_shards_and_owner():
    assert vocab_shard_size(128256, 8) == 16032
    assert vocab_shard_size(32000, 3) == 10667
    ids = np.array([0, 16031, 16032, 128255])
    assert row_owner(ids, 128256, 8).tolist() == [0, 0, 1, 7]
    with pytest.raises(WorkloadError):
        row_owner(np.array([128256]), 128256, 8)


def test_each_row_has_exactly_one_owner_and_density_is_one_over_tp():
    ids = token_ids(3, 20000, 128256, seed=1)
    rows = embedding_row_mask(ids, 128256, 8)
    assert rows.shape == (8, 20000)
    assert np.all(rows.sum(axis=0) == 1)
    dens = embedding_density(ids, 128256, 8)
    assert dens.sum() == pytest.approx(1.0)
    assert np.allclose(dens, 1 / 8, atol=0.01)


def test_token_ids_seeded_per_iteration():
    assert np.array_equal(token_ids(5, 100, 32000, 0), token_ids(5, 100, 32000, 0))
    assert not np.array_equal(token_ids(5, 100, 32000, 0), token_ids(6, 100, 32000, 0))


def test_block_mask_is_row_mask_when_blocks_tile_rows():
    ids = token_ids(0, 50, 32000)
    rows = embedding_row_mask(ids, 32000, 4)
    blocks = embedding_block_mask(ids, 32000, 4, hidden=4096, block_size=256)
    assert blocks.shape == (4, 50 * 16)
    assert np.array_equal(blocks, np.repeat(rows, 16, axis=1))


@pytest.mark.parametrize("hidden, block_size", [(4096, 256), (100, 64), (64, 100), (5120, 1000), (8, 1 << 12)])
def test_block_mask_describes_the_data_exactly(hidden, block_size):
    """The masks agree with the non-zero blocks the sparse algorithms find in the real inputs."""
    tp, vocab = 4, 50272
    ids = token_ids(2, 37, vocab, seed=9)
    masks = embedding_block_mask(ids, vocab, tp, hidden, block_size)
    total = np.zeros(37 * hidden)
    for rank in range(tp):
        x = embedding_input(rank, ids, vocab, tp, hidden, "float32", seed=9)
        assert x.shape == (37 * hidden,)
        assert np.array_equal(block_mask(x, block_size), masks[rank])
        total += x
    assert np.all(total != 0)            # after the AllReduce every row is present


def test_embedding_input_bad_rank():
    with pytest.raises(WorkloadError):
        embedding_input(4, np.array([1]), 100, 4, 8)
