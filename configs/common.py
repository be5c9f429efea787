"""Config blocks shared by every experiment family."""

from __future__ import annotations

import copy


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


def merge(base: dict, *overrides: dict) -> dict:
    """``base`` updated by each override in turn, recursively.

    A nested dict with a ``name`` key is a spec (a model, a defense, an attack): it replaces the
    value wholesale, so that no hyperparameter of one attack leaks into another. Other dicts merge
    key by key.
    """
    out = copy.deepcopy(dict(base))
    for override in overrides:
        for key, value in override.items():
            old = out.get(key)
            if isinstance(value, dict) and isinstance(old, dict) and "name" not in value:
                out[key] = merge(old, value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def fgsm_rs(eps: float, step_size: float | None = None) -> dict:
    """FGSM from a uniform random start, step ``1.25 eps`` by default (Wong et al. 2020)."""
    return dict(name="fgsm_rs", eps=eps, step_size=1.25 * eps if step_size is None else step_size)


def pgd(eps: float, step_size: float, steps: int, **kwargs) -> dict:
    """A training adversary: PGD from a random start, last iterate (``keep_best=False``)."""
    return dict(name="pgd", eps=eps, step_size=step_size, steps=steps, keep_best=False, **kwargs)
