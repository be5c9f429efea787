"""Config blocks shared by every experiment family."""

from __future__ import annotations


def distributed() -> dict:
    """Multi-host start (``jax.distributed.initialize``); off unless asked for.

    Empty ``coordinator_address`` lets JAX auto-detect the cluster (Cloud TPU, SLURM) when
    ``initialize=True`` or ``ADVJAX_DISTRIBUTED=1``.
    """
    return dict(
        initialize=False,
        coordinator_address="",
        num_processes=1,
        process_id=0,
        cpu_collectives=True,
    )
