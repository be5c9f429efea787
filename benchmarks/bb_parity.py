"""advjax's Linf B&B against foolbox's ``LinfinityBrendelBethgeAttack`` on the same weights.

    python benchmarks/bb_parity.py --workdir=workdirs/mnist_fast_at --num_examples=200 \
        --output=results/bb_parity_fast_at

The model is ported to PyTorch (``torch_port``); both attacks start from the same points (the
PGD start of advjax's B&B: PGD-20 with step 0.5 in the whole image box, one draw per point) and
run the same number of steps with the same hyperparameters. foolbox scales the trust region by
the number of values in the whole batch; it gets ``lr / batch`` so that its per-example radius
equals advjax's ``lr * d``. Prints, per attack, the median smallest Linf perturbation found,
robust accuracy at ``--eps``, the points where one attack's perturbation is more than 1% smaller
than the other's, and the time. Needs ``pip install foolbox numba`` (not a dependency of advjax).
"""

from __future__ import annotations

import argparse
import json
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

from advjax.attacks import brendel_bethge, pgd  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--num_examples", type=int, default=200)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    args = p.parse_args(argv)

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
    ours = brendel_bethge(steps=args.steps)
    start_attack = pgd(ours.init_eps, ours.init_eps / 2, ours.init_steps, unroll=False)
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
            peer = foolbox.attacks.LinfinityBrendelBethgeAttack(
                steps=args.steps, lr=ours.lr / len(idx)
            )
            t0 = time.time()
            criterion = foolbox.criteria.Misclassification(yt[idx])
            found = peer.run(fmodel, xt[idx], criterion, starting_points=st[idx])
            seconds["foolbox"] += time.time() - t0
            with torch.no_grad():
                ok = (twin(found).argmax(1) != yt[idx]).numpy()
            dist = (found - xt[idx]).abs().flatten(1).max(1).values.numpy()
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
            "median_linf": float(np.median(n[name][both])),
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
        "eps": args.eps,
        "steps": args.steps,
        "seed": args.seed,
        "points_with_a_start": int(started.sum()),
        "compared_points": int(both.sum()),
        "advjax_smaller_by_1pct": int(np.sum(both & (n["advjax"] < 0.99 * n["foolbox"]))),
        "foolbox_smaller_by_1pct": int(np.sum(both & (n["foolbox"] < 0.99 * n["advjax"]))),
        "rows": rows,
        "foolbox": foolbox.__version__,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    lines = [
        f"| attack | median smallest Linf found | robust acc. at eps {args.eps} | time (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['median_linf']:.4f} | {100 * r['robust_accuracy']:.2f}% | "
            f"{r['seconds']:.1f} |"
        )
    table = "\n".join(lines)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    print(table)
    if args.output:
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))
        Path(f"{args.output}.md").write_text(table + "\n")
    return result


if __name__ == "__main__":
    main()
