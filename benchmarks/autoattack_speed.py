"""AutoAttack-standard speed: advjax vs torchattacks and the reference on the same MNIST weights.

    python benchmarks/autoattack_speed.py --workdir=workdirs/mnist_fast_at --num_examples=1000 \\
        --output=results/autoattack_speed

Both sides run the four components of AutoAttack standard (Linf; APGD-CE, APGD-T with 9 target
classes, FAB-T with 9 target classes, Square with 5,000 queries; 100 iterations for the APGD and FAB
parts, as the reference) in order, each only on the points no earlier component broke, in batches
of ``--batch``, on the same points:

* advjax: ``advjax.attacks.combinators.cascade_stage`` per component, jitted once per component
  (the same code ``attacks.autoattack`` runs inside one jit), the still-robust points compacted
  into static buckets, in passes of at most ``--pass_rows`` rows. Compilation is timed apart
  (ahead-of-time ``lower().compile()``).
* torchattacks: its ``AutoAttack`` components (``_autoattack.attacks``, with ``steps=100``),
  applied in order to the still-robust points of each batch, as its ``MultiAttack`` does.
* reference (fra31/auto-attack, when importable as ``autoattack``; not on PyPI: install a checkout
  with ``pip install --no-deps path/to/auto-attack``): its ``run_standard_evaluation`` with one
  component at a time (``attacks_to_run``) on the points still robust, batch ``--batch``, ``seed``.
  The reference process also feeds advjax's final points to the PyTorch twin: every point advjax
  calls broken must be misclassified there too (``advjax_broken_confirmed_by_twin``).

``--square_redraw_unchanged=false`` runs advjax's Square as the reference does on proposals that
would not change the current point (spends the query instead of drawing another sign pattern), to
measure how much of a robust-accuracy gap that deliberate difference explains.

``--order=isolated`` (the default) runs all of advjax, then all of torchattacks, each side in a
fresh process of its own (this script, re-run with a hidden ``--side``), as a user runs one library:
advjax's process never imports PyTorch. ``--order=sequential`` runs the same two halves in one
process; ``--order=interleaved`` alternates them, one component on one batch at a time, in one
process. Neither is neutral: on the 1,000-point runs of results/autoattack_speed.md advjax took
1068 and 1102 s isolated, 1209 s sequential and 1325 s interleaved, while torchattacks took
1030-1128 s in all four: PyTorch in the same process slowed advjax down (how, we do not know).

Prints the per-component time split, the robust accuracy after each component on both sides, and
the ratio advjax / torchattacks (the issue's target: at most 1.0x).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from parity_torchattacks import load_model, load_model_and_twin, torch_attack  # noqa: E402

from advjax.attacks import auto_attack, combinators, compaction  # noqa: E402
from advjax.attacks.base import split_keys  # noqa: E402

NAMES = auto_attack.COMPONENTS["standard"]  # apgd_ce, apgd_t, fab_t, square


class Tally(NamedTuple):
    """One side's measurements: per component seconds and robust points left after it, and the
    per-point robust mask of each finished batch."""

    seconds: dict
    robust_after: dict
    robust: list
    x_adv: list

    @classmethod
    def empty(cls) -> Tally:
        return cls(dict.fromkeys(NAMES, 0.0), dict.fromkeys(NAMES, 0), [], [])


def advjax_steps(
    model_fn, variables, x, y, eps, batch, seed, buckets, pass_rows, tally, compile_s, redraw=True
):
    """Generator: one AutoAttack component on one batch per step, timed into ``tally``
    (compilation, ahead of time, into ``compile_s``)."""
    components = auto_attack.components(eps, "linf", "standard")
    components["square"] = dataclasses.replace(components["square"], redraw_unchanged=redraw)
    stages = {
        name: jax.jit(
            lambda v, x, y, k, xa, br, a=attack: combinators.cascade_stage(
                a, model_fn, v, x, y, k, xa, br, buckets, pass_rows
            )
        )
        for name, attack in components.items()
    }
    compiled = {}
    for start in range(0, len(y), batch):
        xb, yb = jnp.asarray(x[start : start + batch]), jnp.asarray(y[start : start + batch])
        keys = split_keys(
            jax.random.split(jax.random.key(seed), len(y))[start : start + len(yb)], len(stages)
        )
        x_adv = xb
        broken = combinators.misclassified(model_fn, variables, xb, yb)
        for (name, stage), k in zip(stages.items(), keys, strict=True):
            args = (variables, xb, yb, k, x_adv, broken)
            if (name, len(yb)) not in compiled:  # one executable per component and batch size
                t0 = time.perf_counter()
                compiled[name, len(yb)] = stage.lower(*args).compile()
                compile_s[name] = compile_s.get(name, 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            x_adv, broken = jax.block_until_ready(compiled[name, len(yb)](*args))
            tally.seconds[name] += time.perf_counter() - t0
            tally.robust_after[name] += int(jnp.sum(~broken))
            if float(jnp.max(jnp.abs(x_adv - xb))) > eps + 1e-5:
                raise RuntimeError(f"advjax {name} left the eps ball")
            yield
        tally.robust.append(np.asarray(~broken))
        tally.x_adv.append(np.asarray(x_adv))


def torch_steps(twin, x, y, eps, batch, seed, tally):
    """Generator: torchattacks' AutoAttack components, in order, each on the still-robust points
    of a batch, one component on one batch per step, timed into ``tally``."""
    import torch
    from torch_port import nhwc_to_nchw

    torch.manual_seed(seed)
    parts = list(torch_attack("aa_standard", twin, eps, 0.0, seed)._autoattack.attacks)
    for start in range(0, len(y), batch):
        xb = nhwc_to_nchw(x[start : start + batch])
        yb = torch.from_numpy(y[start : start + batch]).long()
        with torch.no_grad():
            robust = twin(xb).argmax(1) == yb
        for name, part in zip(NAMES, parts, strict=True):
            idx = torch.nonzero(robust).flatten()
            if len(idx) == 0:
                yield  # robust_after stays 0 for this batch
                continue
            t0 = time.perf_counter()
            adv = part(xb[idx], yb[idx])
            with torch.no_grad():
                still = twin(adv).argmax(1) == yb[idx]
            tally.seconds[name] += time.perf_counter() - t0
            if float((adv.detach() - xb[idx]).abs().max()) > eps + 1e-5:
                raise RuntimeError(f"torchattacks {name} left the eps ball")
            robust[idx] = still
            tally.robust_after[name] += int(robust.sum())
            yield
        tally.robust.append(robust.numpy())


REFERENCE_NAMES = {"apgd_ce": "apgd-ce", "apgd_t": "apgd-t", "fab_t": "fab-t", "square": "square"}


def reference_steps(twin, x, y, eps, batch, seed, tally):
    """Generator: fra31/auto-attack's standard components, one at a time on all still-robust
    points (its own batching, ``bs=batch``), timed into ``tally``."""
    import torch
    from autoattack import AutoAttack
    from torch_port import nhwc_to_nchw

    xt, yt = nhwc_to_nchw(x), torch.from_numpy(y).long()
    adversary = AutoAttack(twin, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu")
    adversary.verbose = False
    with torch.no_grad():
        robust = torch.cat([twin(xt[i : i + batch]).argmax(1) for i in range(0, len(y), batch)])
    robust = robust == yt
    for name in NAMES:
        idx = torch.nonzero(robust).flatten()
        if len(idx) == 0:
            break
        adversary.attacks_to_run = [REFERENCE_NAMES[name]]
        t0 = time.perf_counter()
        adv = adversary.run_standard_evaluation(xt[idx], yt[idx], bs=batch)
        tally.seconds[name] += time.perf_counter() - t0
        if float((adv - xt[idx]).abs().max()) > eps + 1e-5:
            raise RuntimeError(f"reference {name} left the eps ball")
        with torch.no_grad():
            robust[idx] = twin(adv).argmax(1) == yt[idx]
        tally.robust_after[name] = int(robust.sum())
        yield
    tally.robust.append(robust.numpy())


def confirm_on_twin(twin, x, y, x_adv, robust, eps, batch) -> dict:
    """advjax's final points on the PyTorch twin: how many that advjax calls broken are
    misclassified there too, and the largest Linf distance to the clean points."""
    import torch
    from torch_port import nhwc_to_nchw

    broken = ~np.asarray(robust)
    with torch.no_grad():
        pred = np.concatenate(
            [
                twin(nhwc_to_nchw(x_adv[i : i + batch])).argmax(1).numpy()
                for i in range(0, len(y), batch)
            ]
        )
    return {
        "advjax_broken": int(broken.sum()),
        "advjax_broken_confirmed_by_twin": int((broken & (pred != y)).sum()),
        "advjax_max_linf": float(np.abs(x_adv - x).max()),
        "eps": eps,
    }


def drive(steps: list, interleave: bool) -> None:
    """Runs the step generators to the end: alternating one step of each (``interleave``: both
    sides see the same drift of a noisy machine), or one after the other."""
    if not interleave:
        for gen in steps:
            for _ in gen:
                pass
        return
    live = list(steps)
    while live:
        for gen in list(live):
            if next(gen, StopIteration) is StopIteration:
                live.remove(gen)


SIDES = ("advjax", "torchattacks", "reference")
PEERS = SIDES[1:]
ORDERS = {
    "sequential": "all of advjax, then all of torchattacks, in one process",
    "isolated": "all of advjax, then each peer, each in a fresh process of its own "
    "(advjax's never imports PyTorch)",
    "interleaved": "the sides alternating component by component in one process",
}


def measure(args, sides: tuple[str, ...]) -> dict:
    """Runs the given sides in this process and returns their measurements. PyTorch is imported
    only when a peer is one of them."""
    if any(side in PEERS for side in sides):
        config, model_fn, variables, ckpt, twin, test = load_model_and_twin(
            args.workdir, args.checkpoint, args.num_examples, args.data_dir
        )
    else:
        config, model_fn, variables, ckpt, test = load_model(
            args.workdir, args.checkpoint, args.num_examples, args.data_dir
        )
    if args.model_form == "lax":  # the same weights as a third-party raw-lax NCHW model
        import twins

        if config.model.name != "mnist_fast_at":
            raise ValueError("--model_form=lax has a raw-lax twin of mnist_fast_at only")
        model_fn, variables = twins.lax_fast_at, twins.lax_fast_at_params(variables)
    x = test.images.astype(np.float32) / 255.0
    y = test.labels.astype(np.int64)
    buckets = tuple(float(b) for b in args.buckets.split(","))
    tallies, compile_s, steps = {side: Tally.empty() for side in sides}, {}, []
    if "advjax" in sides:
        steps.append(
            advjax_steps(
                model_fn,
                variables,
                x,
                y.astype(np.int32),
                args.eps,
                args.batch,
                args.seed,
                buckets,
                args.pass_rows or None,
                tallies["advjax"],
                compile_s,
                args.square_redraw_unchanged == "true",
            )
        )
    if "torchattacks" in sides:
        steps.append(
            torch_steps(twin, x, y, args.eps, args.batch, args.seed, tallies["torchattacks"])
        )
    if "reference" in sides:
        steps.append(
            reference_steps(twin, x, y, args.eps, args.batch, args.seed, tallies["reference"])
        )
    drive(steps, args.order == "interleaved")
    out = {
        "model": config.model.name,
        "checkpoint": ckpt,
        "num_examples": len(y),
        "buckets": buckets,
        "jax": jax.__version__,
        # Whether this process ever imported PyTorch (``isolated``: false for advjax's process).
        f"torch_imported_with_{'_'.join(sides)}": "torch" in sys.modules,
    }
    if "advjax" in sides:
        out["advjax_compile_s"] = compile_s
        x_adv = np.concatenate(tallies["advjax"].x_adv)
        if args.advjax_x_adv:  # isolated: the reference's process checks these points
            np.save(args.advjax_x_adv, x_adv)
        elif "reference" in sides:
            robust = np.concatenate(tallies["advjax"].robust)
            out["twin_check"] = confirm_on_twin(twin, x, y, x_adv, robust, args.eps, args.batch)
    elif "reference" in sides and args.advjax_x_adv:
        robust = np.asarray(json.loads(Path(args.advjax_x_adv).with_suffix(".json").read_text()))
        out["twin_check"] = confirm_on_twin(
            twin, x, y, np.load(args.advjax_x_adv), robust, args.eps, args.batch
        )
    for side, tally in tallies.items():
        print(side, tally.seconds, flush=True)
        out[f"{side}_s"] = tally.seconds
        out[f"{side}_robust_after"] = tally.robust_after
        out[f"{side}_robust_mask"] = np.concatenate(tally.robust).astype(bool).tolist()
    if any(side in PEERS for side in sides):
        import torch

        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return out


def measure_isolated(argv: list[str], sides: tuple[str, ...]) -> dict:
    """Each side in a fresh Python process of its own, advjax first: the advjax process never
    imports PyTorch, and no side's runtime (threads, allocator) disturbs another's."""
    merged = {}
    with tempfile.TemporaryDirectory() as tmp:
        x_adv = Path(tmp) / "advjax_x_adv.npy"
        for side in sides:
            path = Path(tmp) / f"{side}.json"
            cmd = [sys.executable, __file__, *argv, f"--side={side}", f"--side_output={path}"]
            subprocess.run([*cmd, f"--advjax_x_adv={x_adv}"], check=True)
            merged.update(json.loads(path.read_text()))
            if side == "advjax":  # the advjax robust mask, for the reference's twin check
                x_adv.with_suffix(".json").write_text(json.dumps(merged["advjax_robust_mask"]))
    return merged


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="advjax training workdir (MNIST)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--num_examples", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument(
        "--buckets",
        default=",".join(map(str, combinators.CASCADE_BUCKETS)),
        help="compaction buckets (fractions; default: the Cascade's)",
    )
    p.add_argument(
        "--pass_rows",
        type=int,
        default=compaction.default_pass_rows() or 0,
        help="rows per attack call (0: one pass; default: the Cascade's, 128 on a CPU)",
    )
    p.add_argument(
        "--order",
        choices=("isolated", "sequential", "interleaved"),
        default="isolated",
        help="isolated: all of advjax, then all of torchattacks, each side in a process of its "
        "own; sequential: the same in one process; interleaved: alternate the two sides component "
        "by component in one process (same machine drift for both, but they disturb each other)",
    )
    p.add_argument(
        "--model_form",
        choices=("zoo", "lax"),
        default="zoo",
        help="advjax side: the zoo model, or its weights in a raw-lax NCHW model "
        "(benchmarks/twins.py: lax_fast_at), as a user's third-party model",
    )
    p.add_argument(
        "--peers",
        default=None,
        help="comma-separated peers among torchattacks,reference (default: torchattacks, and "
        "reference when fra31/auto-attack is importable)",
    )
    p.add_argument(
        "--square_redraw_unchanged",
        choices=("true", "false"),
        default="true",
        help="advjax Square's redraw_unchanged (false: spend the query as the reference does)",
    )
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--side_output", default=None, help=argparse.SUPPRESS)
    p.add_argument("--advjax_x_adv", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.peers is None:
        peers = ["torchattacks"] + (["reference"] if importlib.util.find_spec("autoattack") else [])
    else:
        peers = [name for name in args.peers.split(",") if name]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; valid peers: {', '.join(PEERS)}")
    sides = ("advjax", *peers)

    if args.side:  # a child process of --order=isolated
        Path(args.side_output).write_text(json.dumps(measure(args, (args.side,))))
        return {}
    if args.order == "isolated":
        measured = measure_isolated(argv, sides)  # the children return before writing --output
    else:
        measured = measure(args, sides)
    print("advjax compile", measured["advjax_compile_s"], flush=True)
    result = summarize(args, sides, measured)
    table = markdown(result)
    print(table)
    if args.output:
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))
        Path(f"{args.output}.md").write_text(table)
    return result


def summarize(args, sides: tuple[str, ...], measured: dict) -> dict:
    """The report's fields from the sides' measurements (per-point masks reduced to accuracies)."""
    result = {
        "workdir": args.workdir,
        "model_form": args.model_form,
        "batch": args.batch,
        "pass_rows": args.pass_rows or None,
        "eps": args.eps,
        "order": args.order,
        "sides": list(sides),
        "square_redraw_unchanged": args.square_redraw_unchanged == "true",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    for key, value in measured.items():
        if key.endswith("_robust_mask"):
            side = key.removesuffix("_robust_mask")
            result[f"{side}_robust"] = float(np.mean(value))
        else:
            result[key] = value
    return result


def markdown(r: dict) -> str:
    peers = [side for side in r["sides"] if side != "advjax"]
    head = "".join(f" {peer} s | advjax / {peer} |" for peer in peers)
    left = " / ".join(r["sides"])
    lines = [
        f"| component | advjax s |{head} robust after it: {left} |",
        "| --- | ---: |" + " ---: | ---: |" * len(peers) + " ---: |",
    ]
    for name in [*NAMES, None]:
        a = r["advjax_s"].get(name, 0.0) if name else sum(r["advjax_s"].values())
        cells = [f"{a:.1f}"]
        for peer in peers:
            t = r[f"{peer}_s"].get(name, 0.0) if name else sum(r[f"{peer}_s"].values())
            cells += [f"{t:.1f}", f"{a / t if t else float('nan'):.2f}x"]
        if name:
            counts = " / ".join(str(r[f"{side}_robust_after"].get(name)) for side in r["sides"])
            lines.append(f"| {name} | {' | '.join(cells)} | {counts} |")
        else:
            bold = " | ".join(f"**{c}**" for c in cells)
            lines.append(f"| **AutoAttack standard** | {bold} | |")
    compile_total = sum(r["advjax_compile_s"].values())
    accuracies = ", ".join(f"{side} {100 * r[f'{side}_robust']:.2f}%" for side in r["sides"])
    lines.append("")
    lines.append(
        f"{r['num_examples']} MNIST test points, `{r['model']}` ({r['checkpoint']}"
        f"{', as raw-lax NCHW code' if r.get('model_form') == 'lax' else ''}), batch "
        f"{r['batch']}, rows per pass {r.get('pass_rows') or 'all'}, Linf eps {r['eps']}, "
        f"{ORDERS[r.get('order', 'sequential')]}; advjax Square redraw_unchanged="
        f"{r.get('square_redraw_unchanged', True)}. Robust accuracy: {accuracies}. "
        f"advjax compilation (not in the times above): {compile_total:.1f} s."
    )
    check = r.get("twin_check")
    if check:
        lines.append(
            f"\nadvjax's {check['advjax_broken']} broken points on the PyTorch twin: "
            f"{check['advjax_broken_confirmed_by_twin']} misclassified there too; largest Linf "
            f"distance {check['advjax_max_linf']:.6f} (eps {check['eps']})."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
