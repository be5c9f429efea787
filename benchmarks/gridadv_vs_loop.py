"""Times GridAdv (775 rotation-translations) batched in advjax against a per-transform Python loop.

Both sides use the same model, weights, images and grid, in one process:

* ``advjax``: ``attacks.grid_adv()`` jitted once: ``lax.map`` over chunks of transforms with
  ``vmap`` inside a chunk, per-example worst case on device.
* ``loop``: a Python loop over the 775 transforms, each a jitted warp + forward pass of the whole
  batch (compiled once, the transform as an argument), the per-example worst case kept in NumPy
  (the straightforward implementation a user would write around a model).

Both are timed after compilation and a warm-up call (median of ``--repeats``); the script checks
that both pick the same per-example outcome and prints the speed ratio loop / advjax.

    python benchmarks/gridadv_vs_loop.py --workdir=workdirs/mnist_natural --num_examples=1000
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from advjax import attacks, losses  # noqa: E402
from advjax.data import load_dataset  # noqa: E402
from advjax.models import get_model, init_variables, make_model_fn  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="", help="trained workdir (default: random mnist_cnn4)")
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--num_examples", type=int, default=1000)
    p.add_argument("--chunk_size", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def load_model(workdir: str, image_shape):
    if workdir:
        from advjax.eval.workdir import load_config, restore_variables

        config = load_config(workdir)
        model, variables, info = restore_variables(config, workdir, "best", image_shape)
        return (
            model,
            variables,
            f"{config.model.name} from {workdir} ({info['kind']} step {info['step']})",
        )
    model = get_model("mnist_cnn4")
    return model, init_variables(model, jax.random.key(0), image_shape), "mnist_cnn4 (random init)"


def loop_grid_adv(model_fn, variables, x, y, attack):
    """Per-transform Python loop; returns per-example (success, loss) of the chosen transform."""

    @jax.jit
    def evaluate(params):
        x_t = attack.threat.apply(jnp.broadcast_to(params, (x.shape[0], 3)), x)
        logits = model_fn(variables, x_t)
        return losses.cross_entropy(logits, y), jnp.argmax(logits, -1) != y

    best_ok = np.zeros(x.shape[0], bool)
    best_loss = np.full(x.shape[0], -np.inf, np.float32)
    for params in np.asarray(attack.grid()):
        loss, ok = (np.asarray(a) for a in evaluate(jnp.asarray(params)))
        take = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
        best_ok = np.where(take, ok, best_ok)
        best_loss = np.where(take, loss, best_loss)
    return best_ok, best_loss


def timed(fn, repeats: int):
    fn()  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None):
    args = parse_args(argv)
    try:
        ds = load_dataset("mnist", "test", data_dir=args.data_dir, source="local")
        source = f"MNIST test ({args.data_dir})"
    except (FileNotFoundError, ValueError):
        ds = load_dataset("mnist", "test", source="synthetic", num_examples=args.num_examples)
        source = "synthetic"
    n = min(args.num_examples, len(ds))
    x = jnp.asarray(ds.images[:n], jnp.float32) / 255.0
    y = jnp.asarray(ds.labels[:n])
    model, variables, described = load_model(args.workdir, ds.image_shape)
    model_fn = make_model_fn(model)
    attack = attacks.grid_adv(chunk_size=args.chunk_size)
    run = jax.jit(attack.run, static_argnums=0)
    key = jax.random.key(0)

    def advjax_call():
        result = run(model_fn, variables, x, y, key)
        return jax.block_until_ready((result.success, result.loss))

    print(f"GridAdv (±30 deg, ±3 px, {attack.grid().shape[0]} transforms), {n} points of {source}")
    print(f"model: {described}; jax {jax.__version__} ({jax.default_backend()})")
    t_advjax, (ok_a, _) = timed(advjax_call, args.repeats)
    t_loop, (ok_l, _) = timed(
        lambda: loop_grid_adv(model_fn, variables, x, y, attack), args.repeats
    )
    clean = np.asarray(jnp.argmax(model_fn(variables, x), -1) == y)
    acc_a = float(np.mean(clean & ~np.asarray(ok_a)))
    acc_l = float(np.mean(clean & ~ok_l))
    agree = float(np.mean(np.asarray(ok_a) == ok_l))
    print()
    print("| implementation | median s | GridAdv accuracy | speed-up vs loop |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| advjax `grid_adv` (lax.map x vmap) | {t_advjax:.2f} | {100 * acc_a:.2f}% | "
        f"{t_loop / t_advjax:.2f}x |"
    )
    print(f"| per-transform Python loop | {t_loop:.2f} | {100 * acc_l:.2f}% | 1.00x |")
    print(
        f"\nclean accuracy {100 * clean.mean():.2f}%; per-example outcomes agree on "
        f"{100 * agree:.2f}% of points"
    )


if __name__ == "__main__":
    main()
