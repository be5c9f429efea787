"""Attack speed on the zoo models, on plain-Flax twins of them and in PyTorch (issue 21).

    python benchmarks/any_model_speed.py --models=mnist_small,mnist_cnn4,mnist_fast_at \\
        --output=results/speed_any_model_mnist
    python benchmarks/any_model_speed.py --models=resnet20,preact_resnet18,wide_resnet \\
        --batch=16 --output=results/speed_any_model_cifar

For each zoo model, on the same weights and points, times PGD-20, APGD-CE-100 and AutoAttack
standard (Linf) as:

* ``zoo``: ``make_model_fn(zoo model)``, as the library runs it (on CPU its convolutions are
  rewritten by ``advjax.models.canonicalize.auto_canonicalize``);
* ``zoo-norewrite``: the same under ``canonicalization(False)``: what the zoo ran before the
  rewrite was applied automatically;
* ``twin``: the plain-``flax.linen`` twin of ``benchmarks/twins.py`` (``nn.Conv``, ``nn.BatchNorm``,
  ``nn.max_pool``; what a user writes), as ``twin.apply``: a user's model function;
* ``twin-norewrite``: the twin under ``canonicalization(False)``;
* ``torch``: torchattacks 3.5.1 (``PGD``, ``APGD``, ``AutoAttack`` with the reference's 100
  iterations) on the PyTorch port of ``benchmarks/torch_port.py``, in a fresh process of its own
  that never runs JAX code on the clock (advjax's process never imports PyTorch).

The advjax attacks are jitted (the model function static) and compiled ahead of time; compilation
is reported apart. Each time is the median of ``--repeats`` calls. Weights: the zoo model's
initialisation with ``--seed`` (or ``--workdir``'s best checkpoint for that workdir's model).
Points: MNIST test images where ``../shared/data/mnist`` (``--data_dir``) exists, else uniform
noise; CIFAR models get uniform noise. Labels: the model's own clean prediction, so every point
starts correctly classified and every attack works on the whole batch (AutoAttack's later
components then run on the points APGD-CE leaves, as in a real evaluation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

ATTACKS = ("pgd20", "apgd_ce100", "aa_standard")
LABELS = {"pgd20": "PGD-20", "apgd_ce100": "APGD-CE-100", "aa_standard": "AutoAttack standard"}
VARIANTS = ("zoo", "zoo-norewrite", "twin", "twin-norewrite", "torch")
MNIST = ("mnist_small", "mnist_cnn4", "mnist_fast_at")


def _budget(model: str) -> tuple[float, float]:
    return (0.3, 0.01) if model in MNIST else (8 / 255, 2 / 255)


def _model_kwargs(model: str, args) -> dict:
    if model == "wide_resnet":
        depth, width = (int(v) for v in args.wrn.split("-"))
        return {"depth": depth, "width": width}
    return {}


def _setup(model: str, args):
    """(zoo module, variables, x, y) for ``model``; deterministic, imports no PyTorch."""
    from advjax.models import get_model, init_variables, make_model_fn

    if args.workdir:
        from advjax.experiment import load_config, restore_variables

        config = load_config(args.workdir)
        if config.model.name != model:
            raise ValueError(f"--workdir holds a {config.model.name}, not a {model}")
        shape = (28, 28, 1) if model in MNIST else (32, 32, 3)
        zoo, variables, _ = restore_variables(config, args.workdir, "best", shape)
    else:
        zoo = get_model(model, **_model_kwargs(model, args))
        shape = (28, 28, 1) if model in MNIST else (32, 32, 3)
        init = jax.jit(lambda k: init_variables(zoo, k, shape))
        variables = init(jax.random.key(args.seed))
    rng = np.random.default_rng(args.seed)
    x = None
    if model in MNIST and Path(args.data_dir).exists():
        from advjax.data import load_dataset

        test = load_dataset("mnist", "test", args.data_dir, source="local")
        x = test.images[: args.batch].astype(np.float32) / 255.0
    if x is None:
        x = rng.uniform(size=(args.batch, *shape)).astype(np.float32)
    y = np.asarray(jax.jit(make_model_fn(zoo))(variables, x).argmax(-1)).astype(np.int32)
    return zoo, variables, x, y


def _jax_attack(name: str, model: str):
    from advjax import attacks

    eps, step = _budget(model)
    if name == "pgd20":
        return attacks.pgd(eps, step, 20)
    if name == "apgd_ce100":
        return attacks.apgd(eps, steps=100)
    if name == "aa_standard":
        return attacks.autoattack(eps, version="standard")
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")


def _time_jax(attack, model_fn, variables, x, y, repeats: int, rewrite: bool) -> dict:
    from advjax import validation
    from advjax.models.canonicalize import canonicalization

    def run(v, xx, yy, key):  # a fresh function per variant: no trace is shared between them
        return attack(model_fn, v, xx, yy, key)

    start = time.perf_counter()
    with canonicalization(rewrite), validation.value_checks(False):
        compiled = jax.jit(run).lower(variables, x, y, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    times, x_adv = [], None
    for r in range(repeats):
        start = time.perf_counter()
        x_adv = jax.block_until_ready(compiled(variables, x, y, jax.random.key(r + 1)))
        times.append(time.perf_counter() - start)
    robust = float(np.mean(np.asarray(model_fn(variables, x_adv).argmax(-1)) == y))
    return {"seconds": float(np.median(times)), "compile_s": compile_s, "robust": robust}


def run_jax(args) -> dict:
    import twins

    from advjax.models import make_model_fn

    out = {}
    for model in args.models:
        zoo, variables, x, y = _setup(model, args)
        twin_fn = twins.twin_model_fn(model, **_model_kwargs(model, args))
        fns = {"zoo": make_model_fn(zoo), "twin": twin_fn}
        for attack_name in args.attacks:
            attack = _jax_attack(attack_name, model)
            for variant in args.variants:
                if variant == "torch":
                    continue
                base, _, off = variant.partition("-")
                row = _time_jax(attack, fns[base], variables, x, y, args.repeats, not off)
                out[f"{model}|{attack_name}|{variant}"] = row
                print(
                    f"{model:16s} {LABELS[attack_name]:20s} {variant:18s} "
                    f"{row['seconds']:8.2f} s (compile {row['compile_s']:5.1f} s) "
                    f"robust {row['robust']:.3f}",
                    flush=True,
                )
    return out


def run_torch(args) -> dict:
    import torch
    import torch_port
    import torchattacks

    torch.set_num_threads(args.torch_threads)
    out = {}
    for model in args.models:
        zoo, variables, x, y = _setup(model, args)
        net = torch_port.port(model, jax.device_get(variables), flax_model=zoo)
        xt, yt = torch_port.nhwc_to_nchw(x), torch.from_numpy(y).long()
        eps, step = _budget(model)
        for attack_name in args.attacks:
            if attack_name == "pgd20":
                attack = torchattacks.PGD(net, eps=eps, alpha=step, steps=20, random_start=True)
            elif attack_name == "apgd_ce100":
                attack = torchattacks.APGD(net, eps=eps, steps=100, n_restarts=1, loss="ce")
            else:
                attack = torchattacks.AutoAttack(net, eps=eps, version="standard", n_classes=10)
                for part in attack._autoattack.attacks:
                    if isinstance(part, torchattacks.APGD | torchattacks.APGDT | torchattacks.FAB):
                        part.steps = 100  # the reference's n_iter (torchattacks issue #196)
            times, adv = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                adv = attack(xt, yt)
                times.append(time.perf_counter() - start)
            with torch.no_grad():
                robust = float((net(adv).argmax(1) == yt).float().mean())
            row = {"seconds": float(np.median(times)), "robust": robust}
            out[f"{model}|{attack_name}|torch"] = row
            print(
                f"{model:16s} {LABELS[attack_name]:20s} {'torch':18s} "
                f"{row['seconds']:8.2f} s robust {robust:.3f}",
                flush=True,
            )
    return out


def _ratio(rows: dict, key: str, num: str, den: str) -> str:
    a, b = rows.get(f"{key}|{num}"), rows.get(f"{key}|{den}")
    return f"{a['seconds'] / b['seconds']:.2f}x" if a and b else ""


def report(args, rows: dict, versions: dict) -> str:
    head = "| model | attack | " + " | ".join(f"{v} s" for v in VARIANTS)
    head += " | twin / zoo | zoo / zoo-norewrite | zoo / torch | twin / torch |"
    lines = [
        "# Attack speed: zoo models, plain-Flax twins and PyTorch (issue 21)",
        "",
        f"Command: `python benchmarks/any_model_speed.py {' '.join(sys.argv[1:])}`",
        f"Hardware: {host.cpu_model()}, {versions['cores']} cores, {jax.default_backend()}; "
        f"jax {versions['jax']}, torch {versions.get('torch', '-')} "
        f"({args.torch_threads} threads), torchattacks {versions.get('torchattacks', '-')}. "
        f"Date: {versions['date']}. Batch {args.batch}, median of {args.repeats}; "
        f"WideResNet {args.wrn}.",
        "",
        head,
        "|---|---|" + "---:|" * (len(VARIANTS) + 4),
    ]
    for model in args.models:
        for attack in args.attacks:
            key = f"{model}|{attack}"
            cells = []
            for v in VARIANTS:
                row = rows.get(f"{key}|{v}")
                cells.append(f"{row['seconds']:.2f}" if row else "")
            ratios = [
                _ratio(rows, key, "twin", "zoo"),
                _ratio(rows, key, "zoo", "zoo-norewrite"),
                _ratio(rows, key, "zoo", "torch"),
                _ratio(rows, key, "twin", "torch"),
            ]
            lines.append(f"| {model} | {LABELS[attack]} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "Robust accuracy (fraction of the batch) per variant:", ""]
    for model in args.models:
        for attack in args.attacks:
            parts = [
                f"{v} {rows[f'{model}|{attack}|{v}']['robust']:.3f}"
                for v in VARIANTS
                if f"{model}|{attack}|{v}" in rows
            ]
            lines.append(f"- {model}, {LABELS[attack]}: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mnist_small,mnist_cnn4,mnist_fast_at")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--wrn", default="16-4", help="WideResNet depth-width (CPU default 16-4)")
    p.add_argument("--workdir", default=None, help="take the weights of this workdir's model")
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch_threads", type=int, default=2)
    p.add_argument("--output", default=None, help="write <output>.json and <output>.md")
    p.add_argument("--side", choices=("all", "jax", "torch"), default="all", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.attacks = [a for a in args.attacks.split(",") if a]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.side != "all":
        rows = run_jax(args) if args.side == "jax" else run_torch(args)
        print("ROWS " + json.dumps(rows))
        return
    rows = {}
    sides = ["jax"] if args.variants != ["torch"] else []
    sides += ["torch"] if "torch" in args.variants else []
    argv = list(sys.argv[1:] if argv is None else argv)
    for side in sides:
        cmd = [sys.executable, __file__, *argv, f"--side={side}"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:  # streamed: the rows print as they are measured
                if line.startswith("ROWS "):
                    rows.update(json.loads(line[5:]))
                else:
                    print(line, end="", flush=True)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    versions = {"jax": jax.__version__, "date": datetime.date.today().isoformat()}
    versions["cores"] = len(os.sched_getaffinity(0))
    if "torch" in sides:
        from importlib.metadata import version

        versions.update(torch=version("torch"), torchattacks=version("torchattacks"))
    text = report(args, rows, versions)
    print(text)
    if args.output:
        Path(f"{args.output}.md").write_text(text)
        payload = {"args": {k: v for k, v in vars(args).items()}, "versions": versions}
        payload["rows"] = rows
        Path(f"{args.output}.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
