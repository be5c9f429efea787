"""Run with 8 fake CPU devices: the sharded train step on 8 devices equals the step on 1 device,
a stateful defense's state follows the same recursion on 8 devices as on 1, and the evaluation
suite gives the same per-example outcomes on 8 devices as on 1.

Prints one JSON line with the largest parameter difference after three fast-AT steps and the
number of per-example suite outcomes that differ.
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
from advjax.eval import ThreatSettings, evaluate_suite  # noqa: E402
from advjax.experiment import initial_state  # noqa: E402
from advjax.models import get_model, init_variables, make_model_fn  # noqa: E402
from advjax.train import make_mesh, replicate, shard_batch, sharded_train_step  # noqa: E402
from tests.train_configs import tiny_config  # noqa: E402


def run(devices, steps=3):
    config = tiny_config("fast_at")
    # SGD, not Adam: Adam's m / sqrt(v) turns float-rounding noise in near-zero gradients into
    # full-size steps, which would hide the comparison behind the optimiser.
    config.train.update(optimizer="sgd", schedule="constant", learning_rate=0.05)
    ds = load_dataset("synthetic", "train", num_examples=256)
    model = get_model("mnist_cnn4")
    state, tx, schedule = initial_state(config, model, ds.image_shape, steps_per_epoch=8)
    mesh = make_mesh(devices)
    step = sharded_train_step(model, defenses.build(config.defense), tx, schedule, mesh)
    state = replicate(state, mesh)
    batches = train_batches(ds, 32, seed=0, local_device_count=len(devices))
    for _ in range(steps):
        state, metrics = step(state, shard_batch(next(batches), mesh))
    return jax.device_get(state.params), float(metrics["loss"])


def stateful_run(devices, steps=20):
    """20 steps of the toy stateful defense (tests/stateful_config.py): the moving average of the
    adversarial CE, updated from statistics averaged over devices."""
    from advjax import attacks
    from tests.stateful_config import ema_weighted_at

    config = tiny_config("fast_at")
    config.train.update(optimizer="sgd", schedule="constant", learning_rate=0.05)
    ds = load_dataset("synthetic", "train", num_examples=256)
    model = get_model("mnist_cnn4")
    defense = ema_weighted_at(attacks.fgsm_rs(0.3), decay=0.8)
    state, tx, schedule = initial_state(config, model, ds.image_shape, 8, defense.init_state())
    mesh = make_mesh(devices)
    step = sharded_train_step(model, defense, tx, schedule, mesh)
    state = replicate(state, mesh)
    batches = train_batches(ds, 32, seed=0, local_device_count=len(devices))
    adv_losses, states = [], []
    for _ in range(steps):
        state, metrics = step(state, shard_batch(next(batches), mesh))
        adv_losses.append(float(metrics["adv_loss"]))
        states.append(float(state.defense_state["adv"]))
    return adv_losses, states


def _recursion_error(losses, states, decay=0.8):
    """Largest gap between the states and NumPy's moving average of the per-step losses."""
    m, recursion = 0.0, []
    for loss in losses:
        m = decay * m + (1 - decay) * loss
        recursion.append(m)
    return float(np.max(np.abs(np.subtract(states, recursion))))


def suite_outcomes(devices):
    ds = load_dataset("synthetic", "test", num_examples=100)  # 4 batches of 32, the last padded
    model = get_model("mnist_cnn4")
    variables = init_variables(model, jax.random.key(0), ds.image_shape)
    result = evaluate_suite(
        make_model_fn(model),
        variables,
        ds,
        ["pgd3", "fgsm"],
        settings=ThreatSettings(eps=0.1, eps_text="0.1", step_size=0.05),
        batch_size=32,
        key=jax.random.key(1),
        mesh=make_mesh(devices),
        progress=False,
    )
    return np.stack([result.correct[e.name] for e in result.entries])


def main():
    assert jax.device_count() == 8, jax.devices()
    params8, loss8 = run(jax.devices())
    params1, loss1 = run(jax.devices()[:1])
    diffs = [
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1), strict=True)
    ]
    suite8, suite1 = suite_outcomes(jax.devices()), suite_outcomes(jax.devices()[:1])
    losses8, states8 = stateful_run(jax.devices())
    losses1, states1 = stateful_run(jax.devices()[:1])
    print(
        json.dumps(
            {
                "max_param_diff": max(diffs),
                "loss8": loss8,
                "loss1": loss1,
                "suite_outcomes_differing": int(np.sum(suite8 != suite1)),
                "suite_outcomes": int(suite8.size),
                "state_rel_diff_8_vs_1": float(np.max(np.abs(np.subtract(states8, states1))))
                / states1[-1],
                "state_diff_8_vs_numpy": _recursion_error(losses8, states8),
                "state_diff_1_vs_numpy": _recursion_error(losses1, states1),
                "final_state": states8[-1],
            }
        )
    )


if __name__ == "__main__":
    main()
