"""APGD-T, advjax against the reference (fra31/auto-attack), over several seeds on the same points.

AutoAttack's robust accuracy is a random variable: APGD-T's random starts decide a few
borderline points. This script separates a systematic difference between two implementations
from that spread. It fixes one set of points (those still robust after the reference's APGD-CE,
seed 0, on the first ``--num_examples`` test points), runs the standard APGD-T (Linf, 100
iterations, 9 targets, 1 restart) of both libraries on it with each seed, re-evaluates every
returned point on the model (as AutoAttack does) and prints the broken counts, their mean and
standard deviation per library, and how many points each library breaks that the other never
does over all seeds.

advjax runs the model as raw-``lax`` code (``twins.lax_fast_at``), the reference its PyTorch port
(``torch_port``), on the same weights. Times are not measured here (both run in one process)::

    python benchmarks/apgd_t_seeds.py --workdir=workdirs/mnist_fast_at --seeds=0,1,2 \
        --data_dir=../shared/data/mnist --output=results/apgd_t_seeds
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from parity_torchattacks import load_model_and_twin  # noqa: E402

from advjax.attacks import apgd_t  # noqa: E402


def reference_points(twin, x, y, eps, batch):
    """Indices of the points correct and still robust after the reference's APGD-CE (seed 0)."""
    import torch
    from autoattack import AutoAttack
    from torch_port import nhwc_to_nchw

    xt, yt = nhwc_to_nchw(x), torch.from_numpy(y).long()
    with torch.no_grad():
        robust = torch.cat([twin(xt[i : i + batch]).argmax(1) for i in range(0, len(y), batch)])
    robust = robust == yt
    idx = torch.nonzero(robust).flatten()
    adversary = AutoAttack(twin, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
    adversary.verbose = False
    adversary.attacks_to_run = ["apgd-ce"]
    adv = adversary.run_standard_evaluation(xt[idx], yt[idx], bs=batch)
    with torch.no_grad():
        robust[idx] = twin(adv).argmax(1) == yt[idx]
    return np.flatnonzero(robust.numpy())


def reference_apgd_t(twin, x, y, eps, batch, seed) -> np.ndarray:
    """The reference's standard APGD-T on all points (its batching); True where broken."""
    import torch
    from autoattack.autopgd_base import APGDAttack_targeted
    from torch_port import nhwc_to_nchw

    attack = APGDAttack_targeted(
        twin, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=seed, device="cpu"
    )
    attack.n_target_classes = 9
    broken = []
    for i in range(0, len(y), batch):
        xb, yb = nhwc_to_nchw(x[i : i + batch]), torch.from_numpy(y[i : i + batch]).long()
        adv = attack.perturb(xb, yb)
        assert float((adv - xb).abs().max()) <= eps + 1e-6
        with torch.no_grad():
            broken.append((twin(adv).argmax(1) != yb).numpy())
    return np.concatenate(broken)


def advjax_apgd_t(model_fn, variables, x, y, eps, batch, seed) -> np.ndarray:
    """advjax's standard APGD-T on all points, fixed batch shape (padded); True where broken."""
    attack = apgd_t(eps)
    run = jax.jit(lambda v, xb, yb, k: attack(model_fn, v, xb, yb, k))
    keys = jax.random.split(jax.random.key(seed), -(-len(y) // batch))
    broken = []
    for n, i in enumerate(range(0, len(y), batch)):
        xb, yb = x[i : i + batch], y[i : i + batch]
        pad = batch - len(yb)
        xp = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)]) if pad else xb
        yp = np.concatenate([yb, np.repeat(yb[-1:], pad, 0)]) if pad else yb
        adv = run(variables, jnp.asarray(xp), jnp.asarray(yp, jnp.int32), keys[n])
        adv = np.asarray(adv)[: len(yb)]
        assert float(np.abs(adv - xb).max()) <= eps + 1e-6
        pred = np.asarray(jnp.argmax(model_fn(variables, jnp.asarray(adv)), -1))
        broken.append(pred != yb)
    return np.concatenate(broken)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--num_examples", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch", type=int, default=500, help="the reference's batch (AutoAttack bs)")
    p.add_argument("--advjax_batch", type=int, default=128)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)

    import twins

    config, _, variables, ckpt, twin, test = load_model_and_twin(
        args.workdir, args.checkpoint, args.num_examples, args.data_dir
    )
    model_fn, lax_vars = twins.lax_fast_at, twins.lax_fast_at_params(variables)
    x = test.images.astype(np.float32) / 255.0
    y = test.labels.astype(np.int64)
    idx = reference_points(twin, x, y, args.eps, args.batch)
    xs, ys = x[idx], y[idx]
    print(f"{len(idx)} points robust after the reference's APGD-CE", flush=True)

    seeds = [int(s) for s in args.seeds.split(",")]
    broken = {"advjax": {}, "reference": {}}
    for seed in seeds:
        broken["advjax"][seed] = advjax_apgd_t(
            model_fn, lax_vars, xs, ys.astype(np.int32), args.eps, args.advjax_batch, seed
        )
        print("advjax", seed, int(broken["advjax"][seed].sum()), flush=True)
        broken["reference"][seed] = reference_apgd_t(twin, xs, ys, args.eps, args.batch, seed)
        print("reference", seed, int(broken["reference"][seed].sum()), flush=True)

    counts = {lib: [int(b.sum()) for b in runs.values()] for lib, runs in broken.items()}
    ever = {lib: np.any(np.stack(list(runs.values())), 0) for lib, runs in broken.items()}
    out = {
        "command": " ".join(["python", "benchmarks/apgd_t_seeds.py", *(argv or sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "hardware": f"{platform.processor() or platform.machine()}, CPU only",
        "model": config.model.name,
        "checkpoint": ckpt,
        "points": len(idx),
        "seeds": seeds,
        "broken": counts,
        "mean": {lib: float(np.mean(c)) for lib, c in counts.items()},
        "std": {lib: float(np.std(c, ddof=1)) if len(c) > 1 else 0.0 for lib, c in counts.items()},
        "broken_by_only_advjax_over_all_seeds": int((ever["advjax"] & ~ever["reference"]).sum()),
        "broken_by_only_reference_over_all_seeds": int((ever["reference"] & ~ever["advjax"]).sum()),
        "broken_by_some_run": int((ever["advjax"] | ever["reference"]).sum()),
        "broken_by_every_run": int(
            np.all(np.stack([*broken["advjax"].values(), *broken["reference"].values()]), 0).sum()
        ),
    }
    print(json.dumps(out, indent=1))
    if args.output:
        Path(args.output).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
