"""The data-parallel train step (``jit`` + ``shard_map`` over every device of every host).

Gradients, BatchNorm statistics and metrics are averaged with ``lax.pmean`` over the ``batch``
axis. Randomness is drawn per example from ``fold_in(fold_in(rng, step), global_index)``, so a step
on 8 devices equals the same step on 1 device with the same global batch (up to float summation
order), and a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from advjax import validation
from advjax.data import pad_crop_flip
from advjax.defenses import Defense
from advjax.sharding import AXIS, example_keys
from advjax.train.state import TrainState


@validation.value_checks(False)  # the Dataset checked its images and labels
def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    defense: Defense,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    augment: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step of ``defense`` on this device's shard of the global batch.

    The defense's statistics are averaged over every device (and host) before its state update,
    so the new ``defense_state`` is the same everywhere.
    """
    step_key = jax.random.fold_in(state.key, state.step)
    keys = example_keys(step_key, batch["label"].shape[0])
    if augment:
        aug_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
        images = jax.vmap(lambda k, x: pad_crop_flip(k, x[None])[0])(aug_keys, batch["image"])
        batch = {**batch, "image": images}
    defense_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)

    def loss_fn(params):
        variables = {**state.variables, "params": params}
        return defense(
            model, variables, batch, defense_keys, step=state.step, state=state.defense_state
        )

    # Differentiate per-device copies of the parameters: under shard_map, the gradient of a
    # replicated (device-invariant) input would come back already summed over devices.
    local_params = jax.lax.pcast(state.params, AXIS, to="varying")
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    learning_rate = schedule(state.step)
    if state.schedule_state:  # the validation-guided schedule's factor (ATLAS App. B)
        lr_scale = state.schedule_state.lr_scale
        updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        learning_rate = learning_rate * lr_scale
    statistics = jax.lax.pmean(aux["statistics"], AXIS)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        batch_stats=jax.lax.pmean(aux["batch_stats"], AXIS) if aux["batch_stats"] else {},
        defense_state=defense.update_state(state.defense_state, statistics),
    )
    metrics = {**aux["metrics"], "loss": loss, "learning_rate": learning_rate}
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, jax.lax.pmean(metrics, AXIS)


def sharded_train_step(model, defense, tx, schedule, mesh: Mesh, augment: bool = False):
    """``jit(shard_map(train_step))``: state replicated, batch split over the mesh's devices.

    This is the modern form of ``jax.pmap`` (which JAX now implements on ``shard_map``); the same
    code runs on one CPU, 8 fake CPU devices, a GPU box or a multi-host TPU slice.
    """
    fn = functools.partial(
        train_step, model=model, defense=defense, tx=tx, schedule=schedule, augment=augment
    )
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
    return jax.jit(mapped, donate_argnums=(0,))
