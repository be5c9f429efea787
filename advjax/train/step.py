"""Data-parallel train and evaluation steps (``jax.pmap`` over all local devices).

Gradients, BatchNorm statistics and metrics are averaged with ``lax.pmean`` over the ``batch``
axis. Randomness is drawn per example from ``fold_in(fold_in(rng, step), global_index)``, so a step
on 8 devices equals the same step on 1 device with the same global batch (up to float summation
order), and a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from advjax.attacks import Attack
from advjax.data import pad_crop_flip
from advjax.models import make_model_fn
from advjax.train.state import TrainState

AXIS = "batch"


def example_keys(key: jax.Array, per_device: int) -> jax.Array:
    """One key per example of this device's shard, indexed by the example's global position."""
    index = jax.lax.axis_index(AXIS) * per_device + jnp.arange(per_device)
    return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    defense: Any,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    augment: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step of ``defense`` on this device's shard of the global batch."""
    step_key = jax.random.fold_in(state.key, state.step)
    keys = example_keys(step_key, batch["label"].shape[0])
    if augment:
        aug_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
        images = jax.vmap(lambda k, x: pad_crop_flip(k, x[None])[0])(aug_keys, batch["image"])
        batch = {**batch, "image": images}
    defense_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)
    defense = defense.at_step(state.step)

    def loss_fn(params):
        variables = {**state.variables, "params": params}
        return defense(model, variables, batch, defense_keys)

    # Differentiate per-device copies of the parameters: under shard_map, the gradient of a
    # replicated (device-invariant) input would come back already summed over devices.
    local_params = jax.lax.pcast(state.params, AXIS, to="varying")
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        batch_stats=jax.lax.pmean(aux["batch_stats"], AXIS) if aux["batch_stats"] else {},
    )
    metrics = {**aux["metrics"], "loss": loss, "learning_rate": schedule(state.step)}
    metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, jax.lax.pmean(metrics, AXIS)


def eval_step(
    variables: Any,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    model: nn.Module,
    attack: Attack | None,
) -> dict[str, jax.Array]:
    """Summed clean and adversarial correctness over the (masked) global batch."""
    model_fn = make_model_fn(model)
    x, y, mask = batch["image"], batch["label"], batch["mask"]
    clean = jnp.argmax(model_fn(variables, x), -1) == y
    out = {"count": jnp.sum(mask), "clean_correct": jnp.sum(mask * clean)}
    if attack is not None:
        keys = example_keys(key, y.shape[0])
        x_adv = attack(model_fn, variables, x, y, keys)
        robust = (jnp.argmax(model_fn(variables, x_adv), -1) == y) & clean
        out["robust_correct"] = jnp.sum(mask * robust)
    return jax.lax.psum(out, AXIS)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process), axis ``batch``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


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


@functools.cache
def sharded_eval_step(model, attack, mesh: Mesh):
    """``jit(shard_map(eval_step))`` returning global sums of clean/robust correctness.

    Cached on its (hashable) arguments, so validation after every epoch reuses one compilation.
    """
    fn = functools.partial(eval_step, model=model, attack=attack)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P())
    return jax.jit(mapped)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device of ``mesh`` (replicated)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's part of a global batch, laid out ``[local_devices, per_device, ...]``
    as ``advjax.data`` yields it, into global arrays split over the mesh's batch axis."""
    sharding = NamedSharding(mesh, P(AXIS))

    def to_global(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(sharding, a.reshape((-1,) + a.shape[2:]))

    return {k: to_global(v) for k, v in batch.items()}
