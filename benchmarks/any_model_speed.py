"""Attack speed on a user's own model with and without ``advjax.models.canonicalize`` (issue 21).

    python benchmarks/any_model_speed.py [--batch=128] [--steps=20] [--repeats=3]

Times jitted APGD-CE (``--steps`` iterations) and PGD-20 on: the zoo's ``mnist_cnn4`` (its layers
are already canonical), a plain-``flax.linen`` twin (``nn.Conv``, ``nn.max_pool``), the twin
through ``canonicalize``, and the same for the strided fast-AT net. Compilation is excluded;
the median of ``--repeats`` runs is printed with the ratio to the zoo model.
"""

from __future__ import annotations

import argparse
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax import attacks
from advjax.models import canonicalize, get_model, init_variables, make_model_fn


class PlainCNN4(nn.Module):
    """``mnist_cnn4`` as a user would write it: nn.Conv and nn.max_pool."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x))
        x = nn.relu(nn.Conv(32, (3, 3), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x))
        x = nn.relu(nn.Conv(64, (3, 3), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(200)(x))
        x = nn.relu(nn.Dense(200)(x))
        return nn.Dense(10)(x)


class PlainFastAT(nn.Module):
    """The fast-AT MNIST net (two strided 4x4 convs) in plain Flax."""

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1))
        x = nn.relu(nn.Conv(16, (4, 4), strides=2, padding=pad)(x))
        x = nn.relu(nn.Conv(32, (4, 4), strides=2, padding=pad)(x)).reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(100)(x)))


def _time(attack, model_fn, variables, x, y, repeats):
    fn = jax.jit(attack, static_argnums=0)
    jax.block_until_ready(fn(model_fn, variables, x, y, jax.random.key(0)))  # compile
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(model_fn, variables, x, y, jax.random.key(r + 1)))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x = jax.random.uniform(jax.random.key(1), (args.batch, 28, 28, 1))
    y = jnp.arange(args.batch) % 10
    plain_cnn4, plain_fast = PlainCNN4(), PlainFastAT()
    models = {
        "zoo mnist_cnn4": (make_model_fn(get_model("mnist_cnn4")), "mnist_cnn4"),
        "plain cnn4": (plain_cnn4.apply, plain_cnn4),
        "plain cnn4 + canonicalize": (canonicalize(plain_cnn4.apply), plain_cnn4),
        "plain fast-AT net": (plain_fast.apply, plain_fast),
        "plain fast-AT net + canonicalize": (canonicalize(plain_fast.apply), plain_fast),
    }
    suite = {
        f"APGD-CE-{args.steps}": attacks.apgd(0.3, steps=args.steps),
        "PGD-20": attacks.pgd(0.3, 0.01, 20),
    }
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"{jax.default_backend()}, batch {args.batch}")  # fmt: skip
    for attack_name, attack in suite.items():
        base = None
        for name, (model_fn, model) in models.items():
            if isinstance(model, str):
                variables = init_variables(get_model(model), jax.random.key(0), (28, 28, 1))
            else:
                variables = model.init(jax.random.key(0), x[:1])
            seconds = _time(attack, model_fn, variables, x, y, args.repeats)
            base = base or seconds
            print(f"{attack_name:12s} {name:34s} {seconds:7.3f} s  {seconds / base:5.2f}x zoo")


if __name__ == "__main__":
    main()
