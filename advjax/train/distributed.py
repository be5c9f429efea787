"""Multi-host start: ``jax.distributed.initialize`` when the config or environment asks for it."""

from __future__ import annotations

import os

import jax


def maybe_initialize(cfg) -> bool:
    """Initialises JAX's distributed runtime if ``cfg.initialize`` or ``ADVJAX_DISTRIBUTED=1``.

    Coordinator address, process count and id come from the config, or from JAX's own
    auto-detection (Cloud TPU, SLURM) when left empty. On CPU, collectives go through gloo.
    """
    wanted = bool(cfg.get("initialize", False)) or os.environ.get("ADVJAX_DISTRIBUTED") == "1"
    if not wanted or jax.distributed.is_initialized():
        return False
    if cfg.get("cpu_collectives", True):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if cfg.get("coordinator_address"):
        kwargs = dict(
            coordinator_address=cfg["coordinator_address"],
            num_processes=int(cfg["num_processes"]),
            process_id=int(cfg["process_id"]),
        )
    jax.distributed.initialize(**kwargs)
    return True
