"""Multi-process scoring through ``jax.distributed`` (the JAX multi-controller runtime).

Each process scores a contiguous shard of the input rows (``shard_range``) on its local devices
into its own ScoreStore (``shard_path``), and ``glmjax merge-scores`` concatenates the shards.
Scoring rows is embarrassingly parallel, so processes do not run collectives and never wait for
each other; ``jax.distributed`` provides the process index and count (and, on TPU pods or SLURM,
discovers them from the environment).

CPU runs (tests, laptops) use the Gloo collectives implementation, which JAX selects by default
for CPU in multi-process mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from glmjax.errors import ConfigError

_initialized = False


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: list[int] | None = None) -> tuple[int, int]:
    """Join a multi-process run; returns ``(process_index, process_count)``.

    With no arguments, JAX detects the cluster from the environment (TPU pods, SLURM, or the
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` variables).
    Calling it again is a no-op.
    """
    global _initialized
    if not _initialized:
        if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
            num_processes = int(os.environ["JAX_NUM_PROCESSES"])
        if process_id is None and os.environ.get("JAX_PROCESS_ID"):
            process_id = int(os.environ["JAX_PROCESS_ID"])
        if (num_processes is None) != (process_id is None):
            raise ConfigError("give both --num-processes and --process-id (or neither, to detect them)")
        if num_processes is not None and not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id} is outside 0..{num_processes - 1}")
        try:
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id, local_device_ids=local_device_ids)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"could not join the multi-process run: {e}") from None
        _initialized = True
    return jax.process_index(), jax.process_count()


def env_requests_distributed() -> bool:
    """True when the standard JAX environment variables describe a multi-process run."""
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of process ``index`` out of ``count`` for ``n`` rows (contiguous, balanced)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} outside 0..{count - 1}")
    return n * index // count, n * (index + 1) // count


def shard_path(out: str | os.PathLike, index: int, count: int) -> Path:
    """Output file of shard ``index`` of ``count``: ``scores.h5`` -> ``scores.shard00001-of-00004.h5``.

    With one process the path is unchanged.
    """
    p = Path(out)
    if count <= 1:
        return p
    return p.with_name(f"{p.stem}.shard{index:05d}-of-{count:05d}{p.suffix}")
