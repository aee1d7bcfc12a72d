"""Distribution over MPI ranks: partitioned samples, replicated weights, rebalanced survivors.

Public API (re-exports; :mod:`.mpi` and :mod:`.balance` hold the details)::

    from spdnn.distributed import world, run_distributed
    w = world()                                   # World(comm, rank, size, local_rank, local_size)
    result = run_distributed(network, features)   # under `mpiexec -n P`, on every rank

Nothing here imports mpi4py unless the process was started by an MPI launcher.
"""
from __future__ import annotations

from .balance import (LAYOUTS, BalancePolicy, Decision, Transfer, apply_plan, balanced_targets, imbalance, owners,
                      partition, rank_ranges, segment_ends, transfer_plan)
from .mpi import (RELOAD_COST_GUESS, CsrSource, FeatureSource, HeadSource, NpzSource, World, as_source,
                  bind_resources, run_distributed, save_npz_source, world, world_of)

__all__ = ["world", "world_of", "World", "run_distributed", "bind_resources", "RELOAD_COST_GUESS",
           "FeatureSource", "CsrSource", "NpzSource", "HeadSource", "save_npz_source", "as_source",
           "BalancePolicy", "Decision", "Transfer", "imbalance", "balanced_targets", "transfer_plan", "apply_plan",
           "partition", "rank_ranges", "owners", "LAYOUTS", "segment_ends"]
