"""Times GridAdv (775 rotation-translations) batched in advjax against a per-transform Python loop.

Both sides use the same model, weights, images and grid, in one process:

* ``advjax``: ``attacks.grid_adv()`` jitted once: a scan over chunks of transforms with ``vmap``
  inside a chunk, per-example worst case on device, and early stopping: each chunk runs only on
  the points no earlier chunk broke, gathered into a static bucket (``compaction.on_active``).
  ``--full_grid`` also times ``early_stop=False`` (every transform on every point).
* ``loop``: a Python loop over the 775 transforms, each a jitted warp + forward pass of the whole
  batch (compiled once, the transform as an argument), the per-example worst case kept in NumPy
  (the straightforward implementation a user would write around a model).

Both are timed after compilation (advjax: one full warm-up call; loop: one transform), median of
``--repeats``; the script checks that both find the same broken points and prints the speed ratio
loop / advjax. The loop evaluates every transform on every point; the speed-up of early stopping
comes from skipping points already decided, which an eager loop that shrinks its batch could
also do.

    python benchmarks/gridadv_vs_loop.py --workdir=workdirs/mnist_natural --num_examples=1000
"""

from __future__ import annotations

import argparse
import dataclasses
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
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--full_grid", action="store_true", help="also time early_stop=False")
    return p.parse_args(argv)


def load_model(workdir: str, image_shape):
    if workdir:
        from advjax.experiment import load_config, restore_variables

        config = load_config(workdir)
        model, variables, info = restore_variables(config, workdir, "best", image_shape)
        return (
            model,
            variables,
            f"{config.model.name} from {workdir} ({info['kind']} step {info['step']})",
        )
    model = get_model("mnist_cnn4")
    return model, init_variables(model, jax.random.key(0), image_shape), "mnist_cnn4 (random init)"


def loop_grid_adv(model_fn, variables, x, y, attack, warm_up: bool = False):
    """Per-transform Python loop; returns per-example (success, loss) of the chosen transform.
    ``warm_up``: compile and run the first transform only."""

    @jax.jit
    def evaluate(params):
        x_t = attack.threat.apply(jnp.broadcast_to(params, (x.shape[0], 3)), x)
        logits = model_fn(variables, x_t)
        return losses.cross_entropy(logits, y), jnp.argmax(logits, -1) != y

    if warm_up:
        return jax.block_until_ready(evaluate(attack.grid()[0]))
    best_ok = np.zeros(x.shape[0], bool)
    best_loss = np.full(x.shape[0], -np.inf, np.float32)
    for params in np.asarray(attack.grid()):
        loss, ok = (np.asarray(a) for a in evaluate(jnp.asarray(params)))
        take = (ok & ~best_ok) | ((ok == best_ok) & (loss > best_loss))
        best_ok = np.where(take, ok, best_ok)
        best_loss = np.where(take, loss, best_loss)
    return best_ok, best_loss


def timed(fn, repeats: int, warm_up=None):
    (warm_up or fn)()  # compile + warm up
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
    key = jax.random.key(0)

    def advjax_call(attack):
        run = jax.jit(attack.run, static_argnums=0)
        return lambda: jax.block_until_ready(run(model_fn, variables, x, y, key).success)

    print(f"GridAdv (±30 deg, ±3 px, {attack.grid().shape[0]} transforms), {n} points of {source}")
    print(f"model: {described}; jax {jax.__version__} ({jax.default_backend()})")
    variants = [("advjax `grid_adv` (early stop, compaction)", attack)]
    if args.full_grid:
        variants.append(
            (
                "advjax `grid_adv(early_stop=False)`",
                dataclasses.replace(attack, early_stop=False),
            )
        )
    timings = [(label, *timed(advjax_call(a), args.repeats)) for label, a in variants]
    t_loop, (ok_l, _) = timed(
        lambda: loop_grid_adv(model_fn, variables, x, y, attack),
        args.repeats,
        warm_up=lambda: loop_grid_adv(model_fn, variables, x, y, attack, warm_up=True),
    )
    clean = np.asarray(jnp.argmax(model_fn(variables, x), -1) == y)
    print()
    print("| implementation | median s | GridAdv accuracy | speed-up vs loop |")
    print("| --- | ---: | ---: | ---: |")
    agreement = []
    for label, t, ok in timings:
        ok = np.asarray(ok)
        agreement.append(float(np.mean(ok == ok_l)))
        acc = float(np.mean(clean & ~ok))
        print(f"| {label} | {t:.2f} | {100 * acc:.2f}% | {t_loop / t:.2f}x |")
    acc_l = float(np.mean(clean & ~ok_l))
    print(f"| per-transform Python loop | {t_loop:.2f} | {100 * acc_l:.2f}% | 1.00x |")
    print(
        f"\nclean accuracy {100 * clean.mean():.2f}%; per-example outcomes agree with the loop on "
        + ", ".join(f"{100 * a:.2f}%" for a in agreement)
        + " of points"
    )


if __name__ == "__main__":
    main()
