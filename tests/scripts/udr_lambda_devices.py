"""Run with 8 fake CPU devices: UDR-PGD's learned ``lambda`` (Eq. 19) over 20 train steps on 8
devices and on 1, against the NumPy recursion over the logged global-batch statistics.

The global batch (32 examples of 6x6x1, 4 a device) is built so that the devices' shards give
very different statistics: shard ``d`` has a fraction ``d / 8`` of its pixels at 0 or 1, where
the [0, 1] clip halves the mean ``|x' - x|`` of a PGD-like adversary. A step that combined
anything but the global mean (a device's own mean, a sum) would put a different ``lambda`` on
each device and off the recursion by far more than float noise. Besides the run itself, each
8-device step recomputes the eight per-shard statistics outside the step (the library's defense
on each shard, with the keys the step draws), so the test can see the spread the ``pmean`` must
remove.

Prints one JSON line (see ``main``).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from advjax import defenses  # noqa: E402
from advjax.models import init_variables  # noqa: E402
from advjax.train import (  # noqa: E402
    create_train_state,
    make_mesh,
    replicate,
    shard_batch,
    sharded_train_step,
)

DEVICES, PER_DEVICE, SHAPE, CLASSES = 8, 4, (6, 6, 1), 3
STEPS = 20
EPS, PERIOD, LAMBDA_LR, LAMBDA_0 = 0.3, 2, 1.0, 1.0
SPEC = dict(
    name="udr_pgd",
    attack=dict(name="udr", eps=EPS, step_size=0.1, steps=3),
    lambda_period=PERIOD,
    lambda_learning_rate=LAMBDA_LR,
)
KEYS = ("lam", "sum", "count", "last")


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


def batches():
    """20 global batches laid out ``[devices, per_device, ...]``: shard ``d`` has a fraction
    ``d / 8`` of its pixels saturated at 0 or 1, the rest in [0.35, 0.65] (inside the box with
    room for ``eps`` either side)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        x = rng.uniform(0.35, 0.65, (DEVICES, PER_DEVICE, *SHAPE))
        for d in range(DEVICES):
            saturated = rng.random(x[d].shape) < d / DEVICES
            x[d][saturated] = rng.integers(0, 2, int(saturated.sum()))
        y = rng.integers(0, CLASSES, (DEVICES, PER_DEVICE))
        out.append({"image": x.astype(np.float32), "label": y.astype(np.int32)})
    return out


def per_shard_statistics_fn(model, defense):
    """The eight shards' own batch-mean statistics at a step, computed outside the train step:
    the defense on each shard, with the per-example keys ``train_step`` draws
    (``fold_in(fold_in(fold_in(rng, step), global_index), 2)``)."""

    @jax.jit
    def fn(variables, rng, step, defense_state, images, labels):
        step_key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)

        def shard(d, x, y):
            index = d * PER_DEVICE + jnp.arange(PER_DEVICE)
            keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, index)
            keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)
            batch = {"image": x, "label": y}
            _, aux = defense(model, variables, batch, keys, step=step, state=defense_state)
            return aux["statistics"]

        return jax.vmap(shard)(jnp.arange(DEVICES), images, labels)

    return fn


def run(devices, data, per_shard=False):
    defense = defenses.build(SPEC)
    model = Tiny()
    variables = init_variables(model, jax.random.key(0), SHAPE)
    tx = optax.sgd(0.05)
    state = create_train_state(variables, tx, jax.random.key(3), defense.init_state())
    mesh = make_mesh(devices)
    step = sharded_train_step(model, defense, tx, optax.constant_schedule(0.05), mesh)
    state = replicate(state, mesh)
    shard_stats = per_shard_statistics_fn(model, defense) if per_shard else None
    log = {"udr_lambda": [], "udr_statistic": [], "per_shard": []}
    states = {k: [] for k in KEYS}
    replicas_differing = 0
    for batch in data:
        if per_shard:  # before the step: its buffers are donated to it
            host = jax.device_get(state)
            log["per_shard"].append(
                np.asarray(
                    shard_stats(
                        host.variables,
                        host.rng,
                        host.step,
                        host.defense_state,
                        batch["image"],
                        batch["label"],
                    )
                ).tolist()
            )
        state, metrics = step(state, shard_batch(batch, mesh))
        log["udr_lambda"].append(float(metrics["udr_lambda"]))
        log["udr_statistic"].append(float(metrics["udr_statistic"]))
        for k in KEYS:
            replicas = [np.asarray(s.data) for s in state.defense_state[k].addressable_shards]
            assert len(replicas) == len(devices), (k, len(replicas))
            replicas_differing += sum(not np.array_equal(r, replicas[0]) for r in replicas)
            states[k].append(replicas[0].item())
    return log, states, replicas_differing


def main():
    assert jax.device_count() == DEVICES, jax.devices()
    data = batches()
    log8, states8, differing8 = run(jax.devices(), data, per_shard=True)
    log1, states1, differing1 = run(jax.devices()[:1], data)
    print(
        json.dumps(
            {
                "eps": EPS,
                "period": PERIOD,
                "lambda_lr": LAMBDA_LR,
                "lambda_0": LAMBDA_0,
                "log8": log8,
                "log1": log1,
                "states8": states8,
                "states1": states1,
                "replicas_differing8": differing8,
                "replicas_differing1": differing1,
            }
        )
    )


if __name__ == "__main__":
    main()
