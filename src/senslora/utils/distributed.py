"""Running the sensitivity pass on several processes with `torch.distributed` (e.g. under torchrun).

Each process takes every world_size-th calibration batch (round-robin: batch i goes to process
i % world_size) and runs the same estimator. The estimators sum their accumulators over processes
(all_reduce of the per-entry sums and of the counts) before they divide, so every process ends with
the same Hessian diagonal, equal to a single-process run over all batches up to float rounding order:

    h = (sum over processes p of S_p) / (sum over processes p of N_p)

with S_p, N_p the sums and counts of process p (rows for `activation`, batches or examples for
`fisher`, batches times probes for `hutchinson`). A process whose shard is empty still takes part in
the reduction. `hutchinson` draws its probes on process p from the seed `seed + p * PROBE_SEED_STRIDE`,
so processes use independent probes; on one process (p = 0) the seed is used as given.

    batches = shard_batches(all_batches)                     # this process's share, lazily
    sensitivities = senslora.estimate_sensitivity(model, batches, estimator="fisher")
    allocation = senslora.allocate_ranks(sensitivities, avg_rank=8)   # identical on every process
    if is_main_process():
        write the results

Every process must call the estimator (the reductions are collective) with the same model, target
layers and options. Without an initialised process group every helper acts as for a single process.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

Item = TypeVar("Item")

# Offset between the Hutchinson probe seeds of consecutive processes (a prime, so seeds of different
# runs do not line up with the ranks of another run for small seeds).
PROBE_SEED_STRIDE = 1_000_003


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised with more than one process."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def world_size() -> int:
    """Number of processes in the default process group (1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def is_main_process() -> bool:
    """True on rank 0 (and on a single process)."""
    return rank() == 0


def process_seed(seed: int, process_rank: int | None = None) -> int:
    """The seed a process uses for its random draws: `seed + rank * PROBE_SEED_STRIDE` (`seed` on rank 0).

    Args:
        seed: the run's seed.
        process_rank: the rank to derive the seed for; default this process's rank.

    Raises:
        ValueError: a negative rank.
    """
    process_rank = rank() if process_rank is None else process_rank
    if process_rank < 0:
        raise ValueError(f"rank must be >= 0, got {process_rank}")
    return int(seed) + int(process_rank) * PROBE_SEED_STRIDE


def shard_batches(batches: Iterable[Item], rank: int | None = None, world_size: int | None = None) -> Iterator[Item]:
    """This process's share of `batches`: items rank, rank + world_size, rank + 2 * world_size, ...

    Lazy: the iterable is consumed as the result is iterated, so a generator or data loader works. Every
    process still walks the whole iterable (and skips the others' items), so an expensive loader should
    be sharded at its source instead (e.g. a DistributedSampler).

    Args:
        batches: any iterable of calibration batches.
        rank: the process to take the share of; default this process's rank.
        world_size: the number of processes; default the process group's size.

    Returns:
        An iterator over this process's batches, in their original order.

    Raises:
        ValueError: world_size < 1, or rank outside [0, world_size).
    """
    size = _world_size() if world_size is None else world_size
    index = _rank() if rank is None else rank
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {size!r}")
    if not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"rank must be an integer in [0, {size}), got {index!r}")
    return itertools.islice(batches, index, None, size)


def broadcast_object(obj: Any, source: int = 0) -> Any:
    """The value of `obj` on process `source` (default the main process), returned on every process.

    The object must be picklable. Without a process group, `obj` is returned unchanged.

    Raises:
        ValueError: source outside [0, world_size).
    """
    size = _world_size()
    if not 0 <= source < size:
        raise ValueError(f"source must be a rank in [0, {size}), got {source}")
    if not is_distributed():
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=source)
    return holder[0]


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others (e.g. to create a directory or a cache).

    The other processes wait at a barrier until the main process has left the block (also when it raised).
    """
    distributed = is_distributed()
    if distributed and not is_main_process():
        torch.distributed.barrier()
    try:
        yield
    finally:
        if distributed and is_main_process():
            torch.distributed.barrier()


def barrier() -> None:
    """Wait until every process gets here (nothing without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def all_processes_agree(flag: bool) -> bool:
    """True when `flag` is true on every process (a MIN all-reduce; `flag` itself on one process)."""
    if not is_distributed():
        return flag
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every process, in rank order, on every process (`[obj]` without a process group)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def local_device() -> torch.device:
    """The device of this process under torchrun: cuda:LOCAL_RANK when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def launched_distributed() -> bool:
    """True when a launcher (torchrun, accelerate launch) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group() -> Iterator[bool]:
    """Join the launcher's process group for the block (NCCL with CUDA, else gloo); yields whether distributed.

    Without a launcher (WORLD_SIZE unset or 1), or with a group already initialised by the caller, it does
    nothing. A group it created is left at the end of the block (after a barrier on a clean exit).
    """
    if not launched_distributed() or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield is_distributed()
        return
    if not torch.distributed.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run on one process")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    torch.distributed.init_process_group(backend)
    clean = False
    try:
        yield True
        clean = True
    finally:
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# Aliases so that the `rank` / `world_size` parameters of shard_batches do not shadow the functions.
_rank = rank
_world_size = world_size
