"""Run with 8 fake CPU devices: the sharded train step on 8 devices equals the step on 1 device.

Prints one JSON line with the largest parameter difference after three fast-AT steps.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from advjax import defenses  # noqa: E402
from advjax.data import load_dataset, train_batches  # noqa: E402
from advjax.models import get_model  # noqa: E402
from advjax.train import make_mesh, replicate, shard_batch, sharded_train_step  # noqa: E402
from advjax.train.loop import initial_state  # noqa: E402
from tests.train_configs import tiny_config  # noqa: E402


def run(devices, steps=3):
    config = tiny_config("fast_at")
    # SGD, not Adam: Adam's m / sqrt(v) turns float-rounding noise in near-zero gradients into
    # full-size steps, which would hide the comparison behind the optimiser.
    config.train.update(optimizer="sgd", schedule="constant", learning_rate=0.05)
    ds = load_dataset("synthetic", "train", num_examples=256)
    model = get_model("mnist_cnn4")
    state, tx, schedule = initial_state(config, model, ds.image_shape, steps_per_epoch_=8)
    mesh = make_mesh(devices)
    step = sharded_train_step(model, defenses.get_defense(config.defense), tx, schedule, mesh)
    state = replicate(state, mesh)
    batches = train_batches(ds, 32, seed=0, local_device_count=len(devices))
    for _ in range(steps):
        state, metrics = step(state, shard_batch(next(batches), mesh))
    return jax.device_get(state.params), float(metrics["loss"])


def main():
    assert jax.device_count() == 8, jax.devices()
    params8, loss8 = run(jax.devices())
    params1, loss1 = run(jax.devices()[:1])
    diffs = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1), strict=True)
    ]
    print(json.dumps({"max_param_diff": max(diffs), "loss8": loss8, "loss1": loss1}))


if __name__ == "__main__":
    main()
