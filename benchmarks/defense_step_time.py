"""Time per training batch of each MNIST objective, measured in one process (ratios comparable).

    python benchmarks/defense_step_time.py --variants=adv,atlas,trades,jac --steps=20

For each ``configs/mnist.py`` variant: the jitted data-parallel train step (``sharded_train_step``)
on the variant's network (``mnist_fast_at`` for the Table 1 objectives; ``--model`` overrides it)
with batch 128 of MNIST-shaped images, timed after compilation (median of
``--steps`` steps, ``block_until_ready``), with the epsilon warm-up finished (full budget and
weights). The ATLAS document's Table 1 reports time per batch (one-step ATLAS 0.018 s vs one-step
ADV 0.009 s on a GPU, 2x); the ratio column compares with the first variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from advjax import defenses  # noqa: E402
from advjax.experiment import build_model, initial_state  # noqa: E402
from advjax.sharding import make_mesh, replicate, shard_batch  # noqa: E402
from advjax.train.step import sharded_train_step  # noqa: E402
from configs import mnist  # noqa: E402


def time_variant(variant: str, steps: int, batch_size: int, model_name: str | None = None) -> float:
    config = mnist.get_config(variant)
    if "eps_warmup_epochs" in config.defense:  # full budget from the first step
        del config.defense["eps_warmup_epochs"]
    if model_name:
        config.model.name = model_name
    model = build_model(config)
    defense = defenses.for_model(defenses.build(config.defense, 100), model)
    state, tx, schedule = initial_state(config, model, (28, 28, 1), 100, defense.init_state())
    mesh = make_mesh()
    step = sharded_train_step(model, defense, tx, schedule, mesh)
    rng = np.random.default_rng(0)
    devices = jax.local_device_count()
    batch = {  # [local_devices, per_device, ...] as advjax.data yields batches
        "image": rng.uniform(size=(devices, batch_size // devices, 28, 28, 1)).astype(np.float32),
        "label": rng.integers(0, 10, (devices, batch_size // devices)).astype(np.int32),
    }
    device_state = replicate(state, mesh)
    sharded = shard_batch(batch, mesh)
    device_state, _ = step(device_state, sharded)  # compile
    jax.block_until_ready(device_state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        device_state, metrics = step(device_state, sharded)
        jax.block_until_ready((device_state, metrics))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="adv,atlas,trades,jac")
    p.add_argument("--model", default=None, help="network for every variant (default: config)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=128)
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = {v: time_variant(v, args.steps, args.batch_size, args.model) for v in variants}
    base = results[variants[0]]
    models = sorted({args.model or mnist.get_config(v).model.name for v in variants})
    backend = f"jax {jax.__version__} ({jax.default_backend()})"
    print(f"{', '.join(models)}, batch {args.batch_size}, {backend}")
    print("| objective | median s / batch | ratio |")
    print("| --- | ---: | ---: |")
    for v, t in results.items():
        print(f"| {v} | {t:.4f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
