"""advjax's B&B against foolbox's (``LinfinityBrendelBethgeAttack``, ``L2BrendelBethgeAttack``,
``L1BrendelBethgeAttack``: ``--norm``) on the same weights.

    python benchmarks/bb_parity.py --workdir=workdirs/mnist_fast_at --num_examples=200 \
        --output=results/bb_parity_fast_at
    python benchmarks/bb_parity.py --workdir=workdirs/mnist_fast_at --norm=l2 \
        --output=results/bb_parity_fast_at_l2

The model is ported to PyTorch (``torch_port``); both attacks start from the same points (the
PGD start of advjax's B&B in ``--norm``: PGD-20 with step eps/2 in the whole image box, one draw
per point) and run the same number of steps with the same hyperparameters; each does its own
binary search from there. foolbox scales the trust region by the number of values in the whole
batch; it gets ``lr / batch`` so that its per-example radius equals advjax's ``lr * d``. Prints,
per attack, the median smallest perturbation found (in ``--norm``), robust accuracy at ``--eps``
(default 0.3 Linf, 2.0 L2, 10 L1), the points where one attack's perturbation is more than 1%
smaller than the other's, and the time. Needs ``pip install foolbox numba`` (not a dependency of
advjax).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from advjax.attacks import brendel_bethge  # noqa: E402

PEERS = {
    "linf": "LinfinityBrendelBethgeAttack",
    "l2": "L2BrendelBethgeAttack",
    "l1": "L1BrendelBethgeAttack",
}
ORD = {"linf": np.inf, "l2": 2, "l1": 1}
DEFAULT_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def hardware() -> str:
    """CPU model, core count and JAX's device (for the results file)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, jax device {jax.devices()[0].device_kind}"


def quantiles(values: np.ndarray) -> dict:
    """Min, 5%, median, 95% and max (NaN for no values)."""
    qs = {"min": 0, "p05": 5, "median": 50, "p95": 95, "max": 100}
    if not len(values):
        return {k: float("nan") for k in qs}
    return {k: float(np.percentile(values, q)) for k, q in qs.items()}


def report(result: dict, label: str, table: str) -> str:
    """The results file: what ran, where, and the table."""
    return "\n".join(
        [
            f"# {label} B&B: advjax against foolbox {result['foolbox']} on the same weights",
            "",
            f"`{result['command']}`",
            "",
            f"Model `{result['model']}` ({result['workdir']}, checkpoint {result['checkpoint']}), "
            f"the first {result['num_examples']} test points, {result['steps']} B&B steps on "
            f"both sides from the same PGD starts ({result['points_with_a_start']} points with "
            f"a start). {result['date']}; {result['hardware']}; jax {result['jax']}. The machine "
            "was shared with other jobs: times are indicative only.",
            "",
            table,
            "",
            f"Points compared (clean, both found an adversarial): {result['compared_points']}; "
            f"advjax smaller by more than 1%: {result['advjax_smaller_by_1pct']}; foolbox "
            f"smaller by more than 1%: {result['foolbox_smaller_by_1pct']}. Ratio advjax / "
            "foolbox over those points: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["ratio_advjax_over_foolbox"].items())
            + " (per-point norms in the json).",
            "",
        ]
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--num_examples", type=int, default=200)
    p.add_argument("--norm", choices=("linf", "l2", "l1"), default="linf")
    p.add_argument("--eps", type=float, default=None, help="default: 0.3 / 2.0 / 10 (Linf/L2/L1)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    args = p.parse_args(argv)
    if args.eps is None:
        args.eps = DEFAULT_EPS[args.norm]

    import foolbox
    import torch
    from parity_torchattacks import load_model_and_twin
    from torch_port import nhwc_to_nchw

    if not hasattr(np, "bool"):  # foolbox 3's B&B still uses the alias NumPy 1.24 removed
        np.bool = bool
    config, model_fn, variables, ckpt, twin, test = load_model_and_twin(
        args.workdir, args.checkpoint, args.num_examples, args.data_dir
    )
    x = jnp.asarray(test.images, jnp.float32) / 255.0
    y = jnp.asarray(test.labels, jnp.int32)
    ours = brendel_bethge(steps=args.steps, norm=args.norm)
    start_attack = ours.start_attack(math.prod(x.shape[1:]))
    run = jax.jit(ours.run, static_argnums=0)
    run_start = jax.jit(start_attack.run, static_argnums=0)
    fmodel = foolbox.PyTorchModel(twin.eval(), bounds=(0, 1))

    norms = {"advjax": [], "foolbox": []}
    seconds = {"advjax": 0.0, "foolbox": 0.0}
    clean, started = [], []
    for i in range(0, len(y), args.batch):
        xb, yb = x[i : i + args.batch], y[i : i + args.batch]
        keys = jax.random.fold_in(jax.random.key(args.seed), i)
        clean.append(np.asarray(jnp.argmax(model_fn(variables, xb), -1) == yb))
        t0 = time.time()
        result = jax.block_until_ready(run(model_fn, variables, xb, yb, keys))
        seconds["advjax"] += time.time() - t0
        norms["advjax"].append(np.asarray(-result.loss))
        # foolbox starts from the same PGD points; it needs every start to be adversarial.
        start = np.asarray(run_start(model_fn, variables, xb, yb, keys).x_adv)
        adv = np.asarray(jnp.argmax(model_fn(variables, jnp.asarray(start)), -1) != yb)
        started.append(adv)
        xt, yt = nhwc_to_nchw(np.asarray(xb)), torch.from_numpy(np.asarray(yb)).long()
        st = nhwc_to_nchw(np.where(adv[:, None, None, None], start, np.asarray(xb)))
        theirs = np.full(len(yb), np.inf)
        idx = np.nonzero(adv)[0]
        if len(idx):
            peer = getattr(foolbox.attacks, PEERS[args.norm])(
                steps=args.steps, lr=ours.step_size / len(idx)
            )
            t0 = time.time()
            criterion = foolbox.criteria.Misclassification(yt[idx])
            found = peer.run(fmodel, xt[idx], criterion, starting_points=st[idx])
            seconds["foolbox"] += time.time() - t0
            with torch.no_grad():
                ok = (twin(found).argmax(1) != yt[idx]).numpy()
            dist = np.linalg.norm((found - xt[idx]).flatten(1).numpy(), ord=ORD[args.norm], axis=1)
            theirs[idx] = np.where(ok, dist, np.inf)
        clean_adv = ~clean[-1]
        theirs[clean_adv] = 0.0
        norms["foolbox"].append(theirs)
        print(f"{i + len(yb)} / {len(y)}", {k: round(v, 1) for k, v in seconds.items()}, flush=True)

    clean = np.concatenate(clean)
    started = np.concatenate(started)
    n = {k: np.concatenate(v) for k, v in norms.items()}
    both = np.isfinite(n["advjax"]) & np.isfinite(n["foolbox"]) & clean
    rows = {
        name: {
            f"median_{args.norm}": float(np.median(n[name][both])),
            "robust_accuracy": float(np.mean(clean & ~(n[name] <= args.eps))),
            "seconds": seconds[name],
        }
        for name in n
    }
    result = {
        "workdir": args.workdir,
        "model": config.model.name,
        "checkpoint": ckpt,
        "num_examples": int(len(y)),
        "norm": args.norm,
        "eps": args.eps,
        "steps": args.steps,
        "seed": args.seed,
        "points_with_a_start": int(started.sum()),
        "compared_points": int(both.sum()),
        "advjax_smaller_by_1pct": int(np.sum(both & (n["advjax"] < 0.99 * n["foolbox"]))),
        "foolbox_smaller_by_1pct": int(np.sum(both & (n["foolbox"] < 0.99 * n["advjax"]))),
        "ratio_advjax_over_foolbox": quantiles(n["advjax"][both] / n["foolbox"][both]),
        "rows": rows,
        "per_point": {k: [float(v) if np.isfinite(v) else None for v in n[k]] for k in n},
        "foolbox": foolbox.__version__,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python " + shlex.join(["benchmarks/bb_parity.py", *sys.argv[1:]]),
        "hardware": hardware(),
    }
    label = {"linf": "Linf", "l2": "L2", "l1": "L1"}[args.norm]
    lines = [
        f"| attack | median smallest {label} found | robust acc. at eps {args.eps} | time (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r[f'median_{args.norm}']:.4f} | {100 * r['robust_accuracy']:.2f}% | "
            f"{r['seconds']:.1f} |"
        )
    table = "\n".join(lines)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "per_point")}))
    print(table)
    if args.output:
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))
        Path(f"{args.output}.md").write_text(report(result, label, table))
    return result


if __name__ == "__main__":
    main()
