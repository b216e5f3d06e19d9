"""Distributed helpers (senslora.utils.distributed) in one process: defaults without a process group,
round-robin sharding, per-process seeds, and the arguments they refuse."""

from __future__ import annotations

import pytest

from senslora.utils.distributed import (
    PROBE_SEED_STRIDE,
    broadcast_object,
    is_distributed,
    is_main_process,
    main_process_first,
    process_seed,
    rank,
    shard_batches,
    world_size,
)


def test_single_process_defaults() -> None:
    assert not is_distributed()
    assert rank() == 0
    assert world_size() == 1
    assert is_main_process()
    assert broadcast_object({"a": [1, 2]}) == {"a": [1, 2]}
    entered = []
    with main_process_first():
        entered.append(True)
    assert entered == [True]


def test_shard_batches_round_robin() -> None:
    items = list(range(11))
    shards = [list(shard_batches(items, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(item for shard in shards for item in shard) == items
    assert list(shard_batches(items)) == items  # no process group: one process takes everything
    assert list(shard_batches(items[:1], rank=1, world_size=2)) == []


def test_shard_batches_is_lazy() -> None:
    pulled: list[int] = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    shard = shard_batches(source(), rank=1, world_size=4)
    assert pulled == []
    assert next(shard) == 1
    assert next(shard) == 5
    assert pulled == list(range(6))


@pytest.mark.parametrize(("rank_value", "size"), [(0, 0), (2, 2), (-1, 2), (0, 1.5)])
def test_shard_batches_rejects_bad_layout(rank_value: int, size: int) -> None:
    with pytest.raises(ValueError, match="rank|world_size"):
        shard_batches([1, 2, 3], rank=rank_value, world_size=size)


def test_process_seed() -> None:
    assert process_seed(7) == 7
    assert process_seed(7, 0) == 7
    assert process_seed(7, 3) == 7 + 3 * PROBE_SEED_STRIDE
    with pytest.raises(ValueError, match="rank"):
        process_seed(7, -1)


def test_broadcast_object_rejects_bad_source() -> None:
    with pytest.raises(ValueError, match="source"):
        broadcast_object(1, source=1)
