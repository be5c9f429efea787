"""advjax's SPSA and HopSkipJump against cleverhans' SPSA and foolbox's HopSkipJump on the same
weights and test points.

    python benchmarks/spsa_hsj_parity.py --workdir=workdirs/mnist_fast_at --parts=spsa \\
        --output=results/spsa_hsj_parity
    python benchmarks/spsa_hsj_parity.py --workdir=workdirs/mnist_fast_at --parts=hsj_l2 \\
        --output=results/spsa_hsj_parity
    python benchmarks/spsa_hsj_parity.py --workdir=workdirs/mnist_fast_at --parts=hsj_linf \\
        --output=results/spsa_hsj_parity

The model is ported to PyTorch (``torch_port``, same logits to float precision). Each part is a
separate run (3 to 9 minutes each on 2 shared CPU cores); a run adds its rows to
``<output>.json`` and rewrites ``<output>.md`` from all the rows there (``--eps`` and ``--seed``
name the SPSA rows, so other budgets and seeds add rows).

* ``spsa``: Linf SPSA at ``--eps`` with the same hyperparameters (``--spsa_steps`` Adam steps,
  learning rate 0.01, ``delta = 0.01``, 128 Rademacher directions, each at ``±delta``, margin
  loss, uniform random start): advjax ``spsa``; cleverhans 4.0.0's ``cleverhans.torch.attacks.
  spsa.spsa`` as released (it estimates the gradient at ``2x + delta v`` rather than at the
  iterate: cleverhans issue #1249); ``spsa_fixed_torch`` below, cleverhans' loop with that one
  line fixed, returning the last iterate (cleverhans) or the first misclassified one (advjax).
  Robust accuracy at ``eps`` (clean correct and not broken).
* ``hsj_l2`` / ``hsj_linf``: HopSkipJump, ``--hsj_steps`` iterations (default 40, the authors'
  ``hsja.py``; foolbox's is 64), 100 to 10,000 decisions per estimate, ``gamma = 1``, geometric
  step-size search. Both libraries start from the same points (the first of up to 100 uniform
  noise images, NumPy-seeded, that the model misclassifies; points with none are left out and
  counted) and do their own binary search from there; advjax also runs from its own noise search
  (``advjax (own start)``), and foolbox also with per-point norms in its gradient estimate
  (``PerExampleHopSkipJump`` below). Median smallest L2 / Linf found over the points all
  attacked, robust accuracy at ``--eps`` (Linf) or ``--l2_eps`` (L2), the points where one is
  more than 1% smaller, and the model evaluations per point (advjax: its per-example query
  count; foolbox: images sent to the model, counted by a forward hook, over the points).

Needs ``pip install cleverhans --no-deps`` (4.0.0, for its PyTorch SPSA) and ``foolbox`` (3.3.4;
``pip install foolbox numba``); neither is a dependency of advjax.
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

from advjax.attacks import hop_skip_jump, spsa  # noqa: E402

PARTS = ("spsa", "hsj_l2", "hsj_linf")


def spsa_fixed_torch(
    model, x, y, eps, steps, lr=0.01, delta=0.01, samples=128, generator=None, first_adv=False
):
    """cleverhans' PyTorch SPSA loop (margin loss, uniform start, Adam, Linf and box projection,
    last iterate) with the estimate taken at the iterate ``x + perturbation``, batched over
    examples (Adam is element-wise, so this equals cleverhans' one-example-at-a-time loop).
    ``first_adv``: return a point's first misclassified iterate, as advjax does, instead of the
    last one (one more query per step)."""
    import torch

    def margin_loss(logits, labels):  # z_y - max_{k != y} z_k, minimised
        own = logits.gather(1, labels[:, None])[:, 0]
        other = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
        return own - other

    def project(p):
        p = p.clamp(-eps, eps)
        return (x + p).clamp(0.0, 1.0) - x

    batch, shape = x.shape[0], x.shape[1:]
    pert = project((torch.rand(x.shape, generator=generator) * 2 - 1) * eps).requires_grad_()
    opt = torch.optim.Adam([pert], lr=lr)
    kept, found = x.clone(), torch.zeros(batch, dtype=torch.bool)
    for _ in range(steps):
        with torch.no_grad():
            v = delta * torch.sign(torch.rand((samples, *x.shape), generator=generator) - 0.5)
            v = torch.cat([v, -v])  # [2n, B, ...]
            points = (x + pert)[None] + v  # the fix: cleverhans evaluates x + (x + v)
            loss = margin_loss(model(points.reshape(-1, *shape)), y.repeat(2 * samples))
            loss = loss.reshape(2 * samples, batch, *([1] * len(shape)))
            grad = torch.mean(loss * torch.sign(v), dim=0) / delta
        pert.grad = grad
        opt.step()
        with torch.no_grad():
            pert.copy_(project(pert))
            if first_adv:
                now = (model(x + pert).argmax(1) != y) & ~found
                kept[now] = (x + pert)[now]
                found |= now
    last = (x + pert).detach().clamp(0.0, 1.0)
    return torch.where(found[:, None, None, None], kept, last) if first_adv else last


def run_spsa(args, model_fn, variables, twin, x, y) -> dict:
    import torch
    from cleverhans.torch.attacks.spsa import spsa as cleverhans_spsa
    from torch_port import nhwc_to_nchw

    ours = spsa(args.eps, steps=args.spsa_steps)
    run = jax.jit(ours.run_with_queries, static_argnums=0)
    clean = np.asarray(jnp.argmax(model_fn(variables, x), -1) == y)
    rows, broken = {}, {}
    # advjax: compile once (timed apart), then the batches.
    t0 = time.time()
    xb, yb = x[: args.batch], y[: args.batch]
    keys = jax.random.split(jax.random.key(args.seed), xb.shape[0])
    run.lower(model_fn, variables, xb, yb, keys).compile()
    compile_s = time.time() - t0
    ok, queries, seconds = [], [], 0.0
    for i in range(0, len(y), args.batch):
        xb, yb = x[i : i + args.batch], y[i : i + args.batch]
        keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), i), xb.shape[0])
        t0 = time.time()
        result, q = jax.block_until_ready(run(model_fn, variables, xb, yb, keys))
        seconds += time.time() - t0
        ok.append(np.asarray(result.success))
        queries.append(np.asarray(q))
        print("advjax spsa", i + len(yb), round(seconds, 1), flush=True)
    broken["advjax"] = np.concatenate(ok)
    prefix = f"SPSA eps {args.eps}" + (f" seed {args.seed}" if args.seed else "")
    rows[f"{prefix} advjax"] = {
        "seconds": seconds,
        "compile_seconds": compile_s,
        "queries_per_point": float(np.mean(np.concatenate(queries))),
    }

    xt, yt = nhwc_to_nchw(np.asarray(x)), torch.from_numpy(np.array(y)).long()
    torch.manual_seed(args.seed)
    loop = "cleverhans loop, estimate at the iterate"
    for name in ("cleverhans (as released)", loop, loop + ", first adversarial iterate"):
        adv, seconds = [], 0.0
        generator = torch.Generator().manual_seed(args.seed)
        for i in range(0, len(y), args.batch):
            xb, yb = xt[i : i + args.batch], yt[i : i + args.batch]
            t0 = time.time()
            if name.startswith("cleverhans (as"):
                out = cleverhans_spsa(
                    twin, xb, args.eps, args.spsa_steps, clip_min=0.0, clip_max=1.0, y=yb
                )
            else:
                out = spsa_fixed_torch(
                    twin,
                    xb,
                    yb,
                    args.eps,
                    args.spsa_steps,
                    generator=generator,
                    first_adv=name.endswith("first adversarial iterate"),
                )
            seconds += time.time() - t0
            if float((out - xb).abs().max()) > args.eps + 1e-5:
                raise RuntimeError(f"{name} left the eps ball")
            with torch.no_grad():
                adv.append((twin(out).argmax(1) != yb).numpy())
            print(name, i + len(yb), round(seconds, 1), flush=True)
        broken[name] = np.concatenate(adv)
        rows[f"{prefix} {name}"] = {"seconds": seconds, "queries_per_point": None}

    names = list(broken)
    for row, name in zip(rows.values(), names, strict=True):
        row["eps"] = args.eps
        row["robust_accuracy"] = float(np.mean(clean & ~broken[name]))
        row["clean_accuracy"] = float(np.mean(clean))
        row["broken_only_by_this"] = {
            other: int(np.sum(clean & broken[name] & ~broken[other]))
            for other in names
            if other != name
        }
    return rows


def noise_starts(model_fn, variables, x, y, seed, trials=100):
    """The first of up to ``trials`` uniform-noise images per point that the model misclassifies
    (``x`` itself where it is already misclassified); ``found`` marks the points with one."""
    rng = np.random.default_rng(seed)
    starts = np.asarray(x).copy()
    found = np.array(jnp.argmax(model_fn(variables, x), -1) != y)
    for _ in range(trials):
        if found.all():
            break
        noise = rng.uniform(0.0, 1.0, x.shape).astype(np.float32)
        adv = np.asarray(jnp.argmax(model_fn(variables, jnp.asarray(noise)), -1) != y)
        take = ~found & adv
        starts[take] = noise[take]
        found |= adv
    return jnp.asarray(starts), found


def run_hsj(args, norm, model_fn, variables, twin, x, y) -> dict:
    import foolbox
    import torch
    from torch_port import nhwc_to_nchw

    eps = args.eps if norm == "linf" else args.l2_eps
    clean = np.asarray(jnp.argmax(model_fn(variables, x), -1) == y)
    starts, found = noise_starts(model_fn, variables, x, y, args.seed)
    idx = np.nonzero(found)[0]
    ours = hop_skip_jump(steps=args.hsj_steps, norm=norm)
    norms, rows = {}, {}

    def ours_run(label, from_start):
        fn = jax.jit(ours.run_from if from_start else ours.run_with_queries, static_argnums=0)
        out, queries, seconds, compile_s = [], [], 0.0, None
        for i in range(0, len(y), args.batch):
            sl = slice(i, i + args.batch)
            keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), i), len(y[sl]))
            call = (model_fn, variables, x[sl], y[sl], keys) + ((starts[sl],) if from_start else ())
            if compile_s is None:
                t0 = time.time()
                fn.lower(*call).compile()
                compile_s = time.time() - t0
            t0 = time.time()
            result, q = jax.block_until_ready(fn(*call))
            seconds += time.time() - t0
            out.append(np.where(np.asarray(result.success), -np.asarray(result.loss), np.inf))
            queries.append(np.asarray(q))
            print(label, i + len(y[sl]), round(seconds, 1), flush=True)
        norms[label] = np.concatenate(out)
        q = np.concatenate(queries)
        rows[label] = {
            "seconds": seconds,
            "compile_seconds": compile_s,
            "queries_per_point": float(np.mean(q[clean & found])),
        }

    ours_run("advjax", True)
    ours_run("advjax (own start)", False)

    # foolbox, from the same starts, on the points that have one.
    evaluated = [0]
    hook = twin.register_forward_hook(
        lambda module, inputs, output: evaluated.__setitem__(0, evaluated[0] + len(output))
    )
    fmodel = foolbox.PyTorchModel(twin.eval(), bounds=(0, 1))
    xt, yt = nhwc_to_nchw(np.asarray(x)), torch.from_numpy(np.array(y)).long()
    st = nhwc_to_nchw(np.asarray(starts))

    def foolbox_run(label, attack_cls):
        peer = attack_cls(steps=args.hsj_steps, constraint=norm)
        theirs, seconds = np.full(len(y), np.inf), 0.0
        torch.manual_seed(args.seed)
        evaluated[0] = 0
        for i in range(0, len(idx), args.batch):
            part = idx[i : i + args.batch]
            t0 = time.time()
            criterion = foolbox.criteria.Misclassification(yt[part])
            adv = peer.run(fmodel, xt[part], criterion, starting_points=st[part])
            seconds += time.time() - t0
            with torch.no_grad():
                ok = (twin(adv).argmax(1) != yt[part]).numpy()
            delta = (adv - xt[part]).flatten(1)
            dist = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
            theirs[part] = np.where(ok, dist.numpy(), np.inf)
            print(label, i + len(part), round(seconds, 1), flush=True)
        theirs[~clean & found] = 0.0
        norms[label] = theirs
        rows[label] = {"seconds": seconds, "queries_per_point": evaluated[0] / max(len(idx), 1)}

    foolbox_run("foolbox", foolbox.attacks.HopSkipJumpAttack)
    foolbox_run("foolbox, per-example normalisation", PerExampleHopSkipJump)
    hook.remove()

    both = clean & found & np.all([np.isfinite(n) for n in norms.values()], axis=0)
    out = {}
    for label, row in rows.items():
        n = norms[label]
        row.update(
            median_norm=float(np.median(n[both])),
            robust_accuracy=float(np.mean(clean & ~(n <= eps))),
            clean_accuracy=float(np.mean(clean)),
            smaller_by_1pct_than={
                other: int(np.sum(both & (n < 0.99 * norms[other])))
                for other in norms
                if other != label
            },
            eps=eps,
            points_with_a_start=int(found.sum()),
            compared_points=int(both.sum()),
        )
        out[f"HSJ {norm} {label}"] = row
    return out


class PerExampleHopSkipJump:
    """foolbox's ``HopSkipJumpAttack`` with per-example norms in its gradient estimate.

    foolbox 3.3.4's ``approximate_gradients`` normalises each random direction ``[samples, B,
    ...]`` by a norm over the whole batch (its ``flatten(rv, keep=1)`` keeps the sample axis only)
    and the estimate by the norm of the whole batch's estimate, so probes and L2 steps shrink like
    ``1 / sqrt(B)``. Here ``flatten`` keeps the point axis too while the method runs (for image
    batches: 5-D directions), and the estimate is renormalised per point. Built on first use
    (foolbox is optional).
    """

    def __new__(cls, **kwargs):
        import eagerpy as ep
        import foolbox
        import foolbox.attacks.hop_skip_jump as module
        from foolbox.devutils import atleast_kd, flatten

        def per_point_flatten(t, keep=1):
            return flatten(t, keep=keep + 1 if t.ndim == 5 else keep)

        class Patched(foolbox.attacks.HopSkipJumpAttack):
            def approximate_gradients(self, *args, **kw):
                module.flatten = per_point_flatten
                try:
                    grad = super().approximate_gradients(*args, **kw)
                finally:
                    module.flatten = flatten
                norms = ep.norms.l2(flatten(grad), axis=-1)
                return grad / (atleast_kd(norms, grad.ndim) + 1e-12)

        return Patched(**kwargs)


NOTES = """\
Setup. SPSA: Linf, the same hyperparameters in every row (Adam, learning rate 0.01, `delta` 0.01,
128 Rademacher directions per step each queried at `+-delta`, margin loss, uniform random start);
advjax stops a point once it is misclassified and returns its best iterate, cleverhans runs every
step and returns the last iterate. cleverhans 4.0.0's PyTorch `spsa` passes the clean `x` where
the perturbation belongs when it estimates the gradient, so it estimates it at `2x + delta v` at
every step (cleverhans issue #1249); the third row is its loop with that one line fixed
(`spsa_fixed_torch` in the benchmark, batched over points, which Adam's element-wise update makes
equivalent); the fourth row is that loop returning each point's first misclassified iterate, as
advjax does. HopSkipJump: both libraries start from the same points (the first of up to 100
uniform-noise images the model misclassifies, NumPy-seeded) and run the same hyperparameters
(`gamma` 1, 100 to 10,000 decisions per estimate, geometric step-size search); "own start" is
advjax from its own noise search. foolbox 3.3.4's `approximate_gradients` normalises each random
direction, and then the estimate, by norms taken over the whole batch (`flatten(rv, keep=1)` keeps
only the sample axis; the estimate's norm runs over every axis), so with 100 points per batch its
probes (`delta u`) and its L2 steps are about 10 times shorter than the algorithm's; "per-example
normalisation" is foolbox with those norms taken per point, as in the authors' single-point code
(`PerExampleHopSkipJump` in the benchmark, which swaps foolbox's `flatten` while the method runs
and renormalises the estimate). For Linf only the probes are affected (the step is the estimate's
sign). Median smallest norm: over the points every row attacked (clean correct, start found).
Queries / point: advjax counts them per point; for foolbox, the images sent to the model (forward
hook) over the attacked points. Times are wall-clock on a machine shared with other jobs (load
average 4 to 11 during these runs on 2 cores), so they are indicative only; PyTorch ran with one
thread (two OpenMP threads spin-wait on the loaded machine and make small-batch calls tens of
times slower), JAX with its default thread pool.
"""


def markdown(result: dict) -> str:
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    lines = [
        "# SPSA and HopSkipJump: advjax against cleverhans and foolbox",
        "",
        f"Model `{result['model']}` ({result['workdir']}, checkpoint {result['checkpoint']}), "
        f"the first {result['num_examples']} MNIST test points; {result['cpu']}, "
        f"{result['cores']} cores shared with other jobs; jax {result['jax']}, torch "
        f"{result['torch']} ({result['torch_threads']} thread), cleverhans "
        f"{result.get('cleverhans')}, foolbox {result.get('foolbox')}. SPSA steps: "
        f"{result['spsa_steps']}; HopSkipJump steps: {result['hsj_steps']}; seed 0 unless named.",
        "",
        "| attack | eps | robust acc. | median smallest norm | queries / point | time (s) "
        "| compile (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in sorted(result["rows"], key=lambda k: (not k.startswith("SPSA"), k)):
        r = result["rows"][label]
        lines.append(
            f"| {label} | {r.get('eps', result['eps'])} | {100 * r['robust_accuracy']:.1f}% | "
            f"{fmt(r.get('median_norm'), '.4f')} | {fmt(r.get('queries_per_point'), '.0f')} | "
            f"{r['seconds']:.1f} | {fmt(r.get('compile_seconds'), '.1f')} |"
        )
    lines += ["", "Runs (each one process):", ""]
    for run in result.get("runs", []):
        cpu = run.get("cpu_seconds")
        lines.append(
            f"* {run['date']}: `{run['command']}` ({', '.join(run['rows'])}); wall "
            f"{fmt(run.get('wall_seconds'), '.0f')} s, CPU {fmt(cpu, '.0f')} s"
        )
    return "\n".join(lines + ["", NOTES])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--num_examples", type=int, default=100)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--eps", type=float, default=0.3, help="Linf budget")
    p.add_argument("--l2_eps", type=float, default=2.0, help="L2 budget (HSJ L2 robust accuracy)")
    p.add_argument("--spsa_steps", type=int, default=50)
    p.add_argument("--hsj_steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="PyTorch intra-op threads (on a loaded shared machine, 2 OpenMP threads spin-wait "
        "and make the peers' small-batch calls tens of times slower)",
    )
    p.add_argument("--output", default=None, help="add to <output>.json, rewrite <output>.md")
    args = p.parse_args(argv)

    import torch
    from parity_torchattacks import load_model_and_twin

    torch.set_num_threads(args.torch_threads)

    config, model_fn, variables, ckpt, twin, test = load_model_and_twin(
        args.workdir, args.checkpoint, args.num_examples, args.data_dir
    )
    twin.eval()
    x = jnp.asarray(test.images, jnp.float32) / 255.0
    y = jnp.asarray(test.labels, jnp.int32)
    rows = {}
    versions = {}
    wall0, cpu0 = time.time(), time.process_time()
    for part in args.parts.split(","):
        t0 = time.time()
        if part == "spsa":
            import cleverhans

            versions["cleverhans"] = cleverhans.__version__.split("-")[0]
            rows.update(run_spsa(args, model_fn, variables, twin, x, y))
        elif part in ("hsj_l2", "hsj_linf"):
            import foolbox

            versions["foolbox"] = foolbox.__version__
            rows.update(run_hsj(args, part[4:], model_fn, variables, twin, x, y))
        else:
            raise ValueError(f"unknown part {part!r}; valid parts: {', '.join(PARTS)}")
        print(part, "done in", round(time.time() - t0, 1), "s", flush=True)

    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "workdir": args.workdir,
        "model": config.model.name,
        "checkpoint": ckpt,
        "num_examples": int(len(y)),
        "eps": args.eps,
        "spsa_steps": args.spsa_steps,
        "hsj_steps": args.hsj_steps,
        "seed": args.seed,
        "cpu": host.cpu_model(),
        "cores": len(__import__("os").sched_getaffinity(0)),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torch_threads": args.torch_threads,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_seconds": time.time() - wall0,
        "cpu_seconds": time.process_time() - cpu0,
        **versions,
    }
    if args.output:
        path = Path(f"{args.output}.json")
        previous = json.loads(path.read_text()) if path.exists() else {}
        merged = {**previous, **result}
        merged["rows"] = {**previous.get("rows", {}), **rows}
        merged["runs"] = [*previous.get("runs", []), {**result, "rows": sorted(rows)}]
        path.write_text(json.dumps(merged, indent=2) + "\n")
        Path(f"{args.output}.md").write_text(markdown(merged))
        result = merged
    else:
        result["rows"] = rows
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
