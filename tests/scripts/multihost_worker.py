"""One process of the two-process multi-host smoke test (2 fake CPU devices each, gloo).

Usage: multihost_worker.py PROCESS_ID PORT OUT_DIR. Trains a few fast-AT steps on a global mesh of
4 devices, each process feeding its half of every global batch, and writes a parameter
fingerprint to OUT_DIR/params_<id>.npy.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from advjax.train import distributed  # noqa: E402


def main():
    process_id, port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    distributed.maybe_initialize(
        dict(
            initialize=True,
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=process_id,
        )
    )
    from advjax import defenses
    from advjax.data import load_dataset, train_batches
    from advjax.experiment import initial_state
    from advjax.models import get_model
    from advjax.train import make_mesh, replicate, shard_batch, sharded_train_step
    from advjax.train.checkpoint import to_host
    from tests.train_configs import tiny_config

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    config = tiny_config("fast_at")
    ds = load_dataset("synthetic", "train", num_examples=256)
    model = get_model("mnist_cnn4")
    state, tx, schedule = initial_state(config, model, ds.image_shape, steps_per_epoch=8)
    mesh = make_mesh()
    step = sharded_train_step(model, defenses.build(config.defense), tx, schedule, mesh)
    state = replicate(state, mesh)
    batches = train_batches(ds, 32, seed=0)  # this process's half of each global batch
    for _ in range(3):
        state, metrics = step(state, shard_batch(next(batches), mesh))
    params = to_host(state.params)
    flat = np.concatenate([np.ravel(p) for p in jax.tree.leaves(params)])
    np.save(os.path.join(out_dir, f"params_{process_id}.npy"), flat)
    print(f"process {process_id}: step {int(to_host(state.step))}, loss {float(metrics['loss'])}")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
