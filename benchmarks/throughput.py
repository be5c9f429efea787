"""Throughput on whatever JAX runs on (CPU, GPU, TPU): PGD-10 attacks and a PGD-AT training epoch.

    python benchmarks/throughput.py --output=results/throughput_<hardware>
    python benchmarks/throughput.py --smoke --output=/tmp/throughput_smoke   # ~1 min on 2 CPUs

Two measurements, on synthetic data of CIFAR-10 shape (32x32x3, 10 classes), WideResNet-28-10 by
default (``--model`` names any zoo model, ``--depth``/``--width`` set the WideResNet):

* **Attack**: ``advjax.attacks.pgd(eps=8/255, step_size=2/255, steps=10)`` on the inference-mode
  model function ``advjax.models.make_model_fn(model)``, called as ``attack(model_fn, variables,
  x, y, key)`` under ``jax.jit(attack, static_argnums=0)`` on one device, per batch size
  (``--batches``) and dtype (``--dtypes``). Compiled once per (batch, dtype) ahead of time
  (``lower().compile()``, timed apart), then ``--warmup`` untimed calls and ``--repeats`` timed
  calls (``block_until_ready``); the median call gives ``images x steps / s = batch * 10 / s``.
  ``bfloat16`` runs the whole network in bf16 (parameters, BatchNorm statistics and the input cast
  inside the model function, logits cast back to float32); the attack's iterate, projection and
  loss stay float32. float32 runs at JAX's default matmul precision (recorded in the report; on
  recent NVIDIA GPUs XLA may use TF32 for it, on TPU bf16 passes). ``--dtypes=auto`` (the
  default) is float32 on CPU and float32,bfloat16 on GPU/TPU; name bfloat16 in ``--dtypes`` to
  force it on CPU. The attack's host-side value checks are off
  (``advjax.validation.value_checks(False)``, as in the library's evaluation loop) unless
  ``--value_checks``.
* **Train epoch**: one PGD-AT epoch of ``--epoch_examples`` (50,000) random uint8 images and labels
  at batch ``--train_batch`` (128), built exactly as ``advjax.experiment.train_and_evaluate``
  builds it from ``configs/cifar10.py:pgd_at`` (PGD-10, eps 8/255, step 2/255, SGD, pad-crop-flip
  augmentation) with the model replaced: ``build_model``, ``build_defense``, ``initial_state``,
  ``advjax.train.step.sharded_train_step`` over ``advjax.sharding.make_mesh()`` (every device),
  batches from ``advjax.data.train_batches`` placed with ``shard_batch``. The step is compiled
  ahead of time (timed apart), one untimed warm-up step runs, then the timed loop runs the
  epoch's steps back to back (host batching included, as in the training loop; blocked once at
  the end). ``--steps_per_epoch_limit=N`` times only N steps and extrapolates to the epoch
  (marked "extrapolated" in the report).

``--output=PATH`` writes ``PATH.json`` and ``PATH.md`` (command, hardware, date, versions,
numbers). ``--smoke``: WideResNet-10-1, batch 8, 2 repeats, 2 timed train steps (extrapolated).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from advjax import attacks, validation  # noqa: E402
from advjax.data import Dataset, steps_per_epoch, train_batches  # noqa: E402
from advjax.experiment import build_defense, build_model, initial_state  # noqa: E402
from advjax.models import get_model, init_variables, make_model_fn, param_count  # noqa: E402
from advjax.sharding import make_mesh, replicate, shard_batch  # noqa: E402
from advjax.train.step import sharded_train_step  # noqa: E402
from configs import cifar10  # noqa: E402

EPS, STEP_SIZE, PGD_STEPS = 8 / 255, 2 / 255, 10
NUM_CLASSES = 10
SMOKE = dict(depth=10, width=1, batches="8", repeats=2, train_batch=8, steps_per_epoch_limit=2)


# ----------------------------------------------------------------------------------------------
# Model


@dataclasses.dataclass(frozen=True)
class CastModelFn:
    """``model_fn(variables, x)`` computed in ``dtype``: floating variables and ``x`` are cast
    to it inside, the logits cast back to float32 (hashable, a static ``jit`` argument)."""

    inner: Any
    dtype: str = "bfloat16"

    def __call__(self, variables, x):
        dtype = jnp.dtype(self.dtype)
        return self.inner(cast_floats(variables, dtype), x.astype(dtype)).astype(jnp.float32)


def cast_floats(tree: Any, dtype) -> Any:
    """``tree`` with its floating leaves cast to ``dtype`` (other leaves unchanged)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def model_kwargs(args) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": NUM_CLASSES}
    if args.model == "wide_resnet":
        kwargs.update(depth=args.depth, width=args.width)
    return kwargs


def model_label(args) -> str:
    if args.model == "wide_resnet":
        return f"WRN-{args.depth}-{args.width}"
    return args.model


def image_shape(args) -> tuple[int, int, int]:
    if args.image_shape:
        return tuple(int(v) for v in args.image_shape.split(","))  # type: ignore[return-value]
    return (28, 28, 1) if args.model.startswith("mnist") else (32, 32, 3)


# ----------------------------------------------------------------------------------------------
# (a) PGD-10 attack throughput


def time_attack(args, model, variables, batch: int, dtype: str) -> dict[str, Any]:
    """Compile, warm up and time PGD-10 on one device at ``batch`` images in ``dtype``."""
    shape = image_shape(args)
    attack_key = jax.random.key(args.seed + 1)
    model_fn = make_model_fn(model)
    if dtype != "float32":
        variables = cast_floats(variables, jnp.dtype(dtype))  # cast once, not in every call
        model_fn = CastModelFn(model_fn, dtype)
    rng = np.random.default_rng([args.seed, batch])
    x = rng.uniform(size=(batch, *shape)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32)
    variables, x, y = jax.device_put((variables, x, y))
    attack = attacks.pgd(eps=EPS, step_size=STEP_SIZE, steps=PGD_STEPS)
    jitted = jax.jit(attack, static_argnums=0)

    start = time.perf_counter()
    with validation.value_checks(args.value_checks):
        lowered = jitted.lower(model_fn, variables, x, y, attack_key)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    for _ in range(args.warmup):
        jax.block_until_ready(compiled(variables, x, y, attack_key))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(variables, x, y, attack_key))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "batch": batch,
        "dtype": dtype,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "images_x_steps_per_s": batch * PGD_STEPS / median,
        "images_per_s": batch / median,
    }


# ----------------------------------------------------------------------------------------------
# (b) PGD-AT training epoch


def train_config(args):
    """``configs/cifar10.py:pgd_at`` with the benchmark's model and batch."""
    config = cifar10.get_config("pgd_at")
    config.model = {"name": args.model, **model_kwargs(args)}
    config.train.batch_size = args.train_batch
    config.seed = args.seed
    return config


def synthetic_dataset(num: int, shape: tuple[int, ...], seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(num, *shape), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=num).astype(np.int32)
    return Dataset(images=images, labels=labels, num_classes=NUM_CLASSES, name="synthetic")


def time_epoch(args) -> dict[str, Any]:
    """Time (a part of) one PGD-AT epoch with the training loop's own builders and step."""
    config = train_config(args)
    shape = image_shape(args)
    batch = config.train.batch_size
    spe = steps_per_epoch(args.epoch_examples, batch)
    if spe == 0:
        raise ValueError(f"--epoch_examples={args.epoch_examples} is less than one batch {batch}")
    timed_steps = min(spe, args.steps_per_epoch_limit) if args.steps_per_epoch_limit else spe

    start = time.perf_counter()
    ds = synthetic_dataset(args.epoch_examples, shape, args.seed)
    data_s = time.perf_counter() - start
    # As advjax.experiment.train_and_evaluate builds its step:
    model = build_model(config)
    defense = build_defense(config, model, spe, ds)
    state, tx, lr_schedule = initial_state(config, model, shape, spe, defense.init_state())
    mesh = make_mesh()
    step_fn = sharded_train_step(
        model, defense, tx, lr_schedule, mesh, augment=config.data.get("augment", False)
    )
    batches = train_batches(ds, batch, config.seed)
    device_state = replicate(state, mesh)
    num_params = param_count(state.params)
    del state

    first = shard_batch(next(batches), mesh)
    start = time.perf_counter()
    lowered = step_fn.lower(device_state, first)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    start = time.perf_counter()  # warm-up step (not part of the epoch)
    device_state, metrics = compiled(device_state, first)
    jax.block_until_ready((device_state, metrics))
    warmup_s = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(timed_steps):
        device_state, metrics = compiled(device_state, shard_batch(next(batches), mesh))
    jax.block_until_ready((device_state, metrics))
    elapsed = time.perf_counter() - start
    per_step = elapsed / timed_steps
    loss = float(jax.device_get(metrics["loss"]))
    return {
        "model": model_label(args),
        "params": num_params,
        "defense": config.defense.to_dict(),
        "augment": bool(config.data.get("augment", False)),
        "batch": batch,
        "devices": jax.device_count(),
        "epoch_examples": args.epoch_examples,
        "steps_per_epoch": spe,
        "timed_steps": timed_steps,
        "extrapolated": timed_steps < spe,
        "data_gen_s": data_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "warmup_step_s": warmup_s,
        "timed_s": elapsed,
        "step_s": per_step,
        "examples_per_s": batch / per_step,
        "epoch_s": per_step * spe,
        "last_loss": loss,
    }


# ----------------------------------------------------------------------------------------------
# Report


def hardware() -> dict[str, Any]:
    devices = jax.devices()
    first = devices[0]
    try:
        platform_version = first.client.platform_version
    except AttributeError:
        platform_version = ""
    return {
        "backend": jax.default_backend(),
        "device_kind": first.device_kind,
        "device_count": jax.device_count(),
        "devices": [str(d) for d in devices],
        "platform_version": platform_version,
        "cpu": host.cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }


def versions() -> dict[str, str]:
    import flax
    import jaxlib
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
    }


def markdown(result: dict[str, Any]) -> str:
    hw, settings = result["hardware"], result["settings"]
    lines = [
        f"# advjax throughput: {settings['model']}, PGD-{PGD_STEPS} (eps 8/255, step 2/255)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- hardware: {hw['device_count']} x {hw['device_kind']} ({hw['backend']}"
        + (f", {pv}" if (pv := hw["platform_version"]) and pv != hw["backend"] else "")
        + f"); CPU {hw['cpu']} ({hw['cpu_count']} cores)",
        f"- devices: {', '.join(hw['devices'])}",
        "- versions: "
        + ", ".join(f"{name} {version}" for name, version in result["versions"].items()),
        f"- XLA_FLAGS: `{result['xla_flags']}`" if result["xla_flags"] else "- XLA_FLAGS: (none)",
    ]
    if result.get("attack"):
        lines += [
            "",
            f"## PGD-{PGD_STEPS} attack throughput (one device, inference-mode model, "
            f"median of {settings['repeats']} calls after {settings['warmup']} warm-up)",
            "",
            "| batch | dtype | compile s (lower + XLA) | median s / call | min s | "
            "images x steps / s | images / s |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in result["attack"]:
            lines.append(
                f"| {r['batch']} | {r['dtype']} | {r['lower_s'] + r['compile_s']:.1f} "
                f"({r['lower_s']:.1f} + {r['compile_s']:.1f}) | {r['median_s']:.4f} | "
                f"{r['min_s']:.4f} | {r['images_x_steps_per_s']:,.0f} | {r['images_per_s']:,.1f} |"
            )
    if result.get("train"):
        t = result["train"]
        how = (
            f"extrapolated from {t['timed_steps']} of {t['steps_per_epoch']} steps"
            if t["extrapolated"]
            else f"all {t['steps_per_epoch']} steps timed"
        )
        lines += [
            "",
            f"## PGD-AT epoch ({t['epoch_examples']:,} synthetic examples, "
            f"configs/cifar10.py:pgd_at step, float32, {t['devices']} device(s))",
            "",
            "| model | params | batch | steps / epoch | compile s (lower + XLA) | s / step | "
            "examples / s | epoch s | timed |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| {t['model']} | {t['params']:,} | {t['batch']} | {t['steps_per_epoch']} | "
            f"{t['lower_s'] + t['compile_s']:.1f} ({t['lower_s']:.1f} + {t['compile_s']:.1f}) | "
            f"{t['step_s']:.4f} | {t['examples_per_s']:,.1f} | {t['epoch_s']:,.1f} | {how} |",
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wide_resnet", help="advjax.models zoo name")
    p.add_argument("--depth", type=int, default=28, help="WideResNet depth")
    p.add_argument("--width", type=int, default=10, help="WideResNet width")
    p.add_argument("--image_shape", default="", help="H,W,C (default: 32,32,3; MNIST 28,28,1)")
    p.add_argument("--batches", default="256,1024", help="attack batch sizes, comma-separated")
    p.add_argument(
        "--dtypes",
        default="auto",
        help="attack dtypes, comma-separated (float32, bfloat16); auto: float32 on CPU, "
        "float32,bfloat16 on GPU/TPU; naming bfloat16 forces it on CPU",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed attack calls (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed attack calls after compiling")
    p.add_argument("--value_checks", action="store_true", help="keep the attack's value checks")
    p.add_argument("--train_batch", type=int, default=128)
    p.add_argument("--epoch_examples", type=int, default=50_000)
    p.add_argument(
        "--steps_per_epoch_limit",
        type=int,
        default=0,
        help="time only this many train steps and extrapolate to the epoch (0: whole epoch)",
    )
    p.add_argument("--parts", default="attack,train", help="attack, train or both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny settings: " + json.dumps(SMOKE))
    p.add_argument("--output", default=None, help="write <output>.json and <output>.md")
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    return args


def resolve_dtypes(spec: str) -> list[str]:
    if spec == "auto":
        return ["float32"] if jax.default_backend() == "cpu" else ["float32", "bfloat16"]
    dtypes = [d.strip() for d in spec.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {d!r}; valid: float32, bfloat16, float16")
    return dtypes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"attack", "train"}
    if unknown:
        raise ValueError(f"unknown --parts {sorted(unknown)}; valid: attack, train")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    dtypes = resolve_dtypes(args.dtypes)
    command = shlex.join(["python", "benchmarks/throughput.py", *argv])
    hw = hardware()
    print(f"# {command}")
    print(
        f"# {hw['device_count']} x {hw['device_kind']} ({hw['backend']}), CPU {hw['cpu']}, "
        f"jax {jax.__version__}",
        flush=True,
    )
    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hw,
        "versions": versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "settings": {
            "model": model_label(args),
            "model_kwargs": model_kwargs(args),
            "image_shape": list(image_shape(args)),
            "attack": {"name": "pgd", "eps": EPS, "step_size": STEP_SIZE, "steps": PGD_STEPS},
            "batches": batches,
            "dtypes": dtypes,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "value_checks": args.value_checks,
            "train_batch": args.train_batch,
            "epoch_examples": args.epoch_examples,
            "steps_per_epoch_limit": args.steps_per_epoch_limit,
            "smoke": args.smoke,
            "default_matmul_precision": jax.config.jax_default_matmul_precision,
        },
        "attack": [],
        "train": None,
    }
    if "attack" in parts:
        model = get_model(args.model, **model_kwargs(args))
        variables = init_variables(model, jax.random.key(args.seed), image_shape(args))
        for batch in batches:
            for dtype in dtypes:
                r = time_attack(args, model, variables, batch, dtype)
                result["attack"].append(r)
                print(
                    f"attack batch {batch} {dtype}: compile {r['lower_s'] + r['compile_s']:.1f} s, "
                    f"median {r['median_s']:.4f} s / call, "
                    f"{r['images_x_steps_per_s']:,.0f} images x steps / s",
                    flush=True,
                )
    if "train" in parts:
        t = time_epoch(args)
        result["train"] = t
        note = (
            f" (extrapolated from {t['timed_steps']} of {t['steps_per_epoch']} steps)"
            if t["extrapolated"]
            else ""
        )
        print(
            f"train {t['model']} batch {t['batch']}: "
            f"compile {t['lower_s'] + t['compile_s']:.1f} s, "
            f"{t['step_s']:.4f} s / step, epoch {t['epoch_s']:,.1f} s{note}",
            flush=True,
        )
    result["total_s"] = time.perf_counter() - started
    table = markdown(result)
    print()
    print(table, end="")
    print(f"\n(total {result['total_s']:.1f} s)")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n")
        Path(f"{args.output}.md").write_text(table)
    return result


if __name__ == "__main__":
    main()
