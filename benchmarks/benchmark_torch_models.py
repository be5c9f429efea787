"""``advjax.eval.benchmark`` against the reference AutoAttack on a converted PyTorch MNIST model.

    python benchmarks/benchmark_torch_models.py --train --num_examples=1000 \\
        --output=results/benchmark_torch_models

Steps, each in a fresh Python process of its own (this script re-run with a hidden ``--side``),
one after the other:

1. ``train`` (with ``--train``): Wong et al.'s MNIST net (``mnist_net()`` of fast_adversarial, an
   ``nn.Sequential`` with the keys ``--arch=mnist_fast_at`` reads) trained in PyTorch by PGD
   adversarial training (Madry et al. 2018): ``min_theta E max_{||d||_inf <= eps} CE(f(x + d), y)``,
   the inner max by ``--train_steps`` signed-gradient steps of ``--train_alpha`` from a uniform
   random start, Adam with Wong et al.'s cyclic learning rate (0 -> ``--lr_max`` at 2/5 of the run
   -> 0), ``torch.manual_seed(--train_seed)``. The first 100 batches are timed and the projected
   time printed. Writes the ``state_dict`` to ``--torch_checkpoint`` and the schedule and timings
   to the same path with ``.json``.
2. ``convert``: ``python -m launch.convert --arch=mnist_fast_at`` into ``--advjax_model``.
3. ``check``: both models' logits on the benchmark points (largest difference, argmax agreement).
4. ``advjax``: ``advjax.eval.benchmark(model_fn, variables, "mnist", "Linf", eps,
   num_examples=N)`` on the converted model, in a process that never imports PyTorch. Wall time
   includes compilation; the compilation time is the union of JAX's trace, lowering and
   backend-compile events (``jax.monitoring``), and wall minus it is the compile-free time.
5. ``reference``: fra31/auto-attack's ``AutoAttack(..., version="standard", seed=seed)
   .run_standard_evaluation(x, y, bs=batch)`` on the PyTorch model; its log gives the robust
   accuracy and time after each component.

Both sides read the first N MNIST test points through ``advjax.data.load_dataset`` (images / 255;
NHWC for advjax, NCHW for PyTorch), and the report compares their clean and robust accuracy
(target: within 0.5 points), the per-point outcomes (points one side breaks and the other does
not) and the times. ``--reuse=advjax,reference`` reads a side's result from an earlier run of the
same N (saved next to the checkpoint) instead of running it again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CHECKPOINT = "workdirs/torch_mnist_pgd_at/model.pt"
SIDES = ("train", "check", "advjax", "reference")
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
REFERENCE_LOG = re.compile(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)")


# --- Shared helpers (no PyTorch, no JAX) ------------------------------------------------------


def mnist_net():
    """Wong et al.'s MNIST net (fast_adversarial ``mnist_net()``): keys ``0``, ``2`` (convs),
    ``5``, ``7`` (linears), as ``--arch=mnist_fast_at`` reads."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def test_points(num_examples: int, data_dir: str | None):
    """The first ``num_examples`` MNIST test points: NHWC float32 images in [0, 1], int64 labels,
    and a sha256 of both (the same on every side)."""
    import numpy as np

    from advjax.data import load_dataset

    test = load_dataset("mnist", "test", data_dir)
    test = test.take(np.arange(min(num_examples, len(test))))
    x = test.images.astype(np.float32) / 255.0
    y = test.labels.astype(np.int64)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return x, y, digest


def load_torch_model(path: str):
    import torch

    model = mnist_net()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def predict(model, x, batch: int):
    """The PyTorch model's argmax labels of NCHW ``x``, ``batch`` images at a time."""
    import torch

    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def nchw(x):
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (nested compile events counted once)."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


# --- Sides, each run in a process of its own --------------------------------------------------


def side_train(args) -> dict:
    """PGD adversarial training of Wong et al.'s MNIST net in PyTorch (see the module doc)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from advjax.data import load_dataset

    torch.set_num_threads(args.train_threads)
    torch.manual_seed(args.train_seed)
    gen = torch.Generator().manual_seed(args.train_seed)
    train = load_dataset("mnist", "train", args.data_dir)
    x_all = nchw(train.images.astype(np.float32) / 255.0)
    y_all = torch.from_numpy(train.labels.astype(np.int64))
    model = mnist_net()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    eps, alpha, steps, epochs = args.eps, args.train_alpha, args.train_steps, args.train_epochs
    batch = args.train_batch
    per_epoch = len(y_all) // batch  # the last partial batch is dropped

    def lr_at(t: float) -> float:  # Wong et al.'s cyclic schedule, t in epochs
        return float(np.interp(t, [0, epochs * 2 / 5, epochs], [0, args.lr_max, 0]))

    def eps_at(t: float) -> float:  # linear warm-up from 0 over the first warm-up epochs
        return eps * min(1.0, t / args.eps_warmup_epochs) if args.eps_warmup_epochs else eps

    def pgd(x, y, radius: float):
        step = alpha * radius / eps  # the step keeps its ratio to the radius
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * radius
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-radius, radius)
            delta = (x + delta).clamp(0, 1) - x
        return delta.detach()

    log, t_start, first_100 = [], time.perf_counter(), None
    for epoch in range(epochs):
        order = torch.randperm(len(y_all), generator=gen)
        loss_sum, correct, seen, t_epoch = 0.0, 0, 0, time.perf_counter()
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x, y = x_all[idx], y_all[idx]
            t = epoch + (i + 1) / per_epoch
            delta = pgd(x, y, eps_at(t))
            logits = model(x + delta)
            loss = F.cross_entropy(logits, y)
            for group in opt.param_groups:
                group["lr"] = lr_at(t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if epoch == 0 and i == 99:
                first_100 = time.perf_counter() - t_start
                projected = first_100 / 100 * per_epoch * epochs
                print(
                    f"first 100 batches: {first_100:.1f} s; {epochs} epochs of {per_epoch} "
                    f"batches projected at {projected:.0f} s",
                    flush=True,
                )
        log.append(
            {
                "epoch": epoch + 1,
                "adv_loss": loss_sum / seen,
                "adv_accuracy": correct / seen,
                "seconds": time.perf_counter() - t_epoch,
            }
        )
        print(json.dumps(log[-1]), flush=True)
    seconds = time.perf_counter() - t_start
    path = Path(args.torch_checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    record = {
        "schedule": {
            "model": "Wong et al. mnist_net (nn.Sequential, 2 convs + 2 linears)",
            "objective": f"PGD-AT, Linf eps {eps}, linearly warmed up from 0 over the first "
            f"{args.eps_warmup_epochs} epochs (the step size scaled with it)",
            "attack": f"PGD-{steps}, step {alpha}, uniform random start, cross-entropy",
            "optimizer": f"Adam, cyclic lr 0 -> {args.lr_max} (at 2/5) -> 0, per batch",
            "epochs": epochs,
            "batch": batch,
            "batches_per_epoch": per_epoch,
            "seed": args.train_seed,
        },
        "first_100_batches_s": first_100,
        "train_s": seconds,
        "epochs": log,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return record


def side_check(args) -> dict:
    """The PyTorch model's and the converted advjax model's logits on the benchmark points."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    from advjax.models import make_model_fn
    from advjax.models.saved_model import load_model

    x, y, digest = test_points(args.num_examples, args.data_dir)
    twin = load_torch_model(args.torch_checkpoint)
    model, variables = load_model(args.advjax_model)
    model_fn = make_model_fn(model)
    with torch.no_grad():
        torch_logits = twin(nchw(x)).numpy()
    jax_logits = np.asarray(model_fn(variables, jnp.asarray(x)))
    return {
        "logits_max_abs_diff": float(np.abs(torch_logits - jax_logits).max()),
        "argmax_agree": int((torch_logits.argmax(1) == jax_logits.argmax(1)).sum()),
        "num_examples": len(y),
        "points_sha256": digest,
    }


def side_advjax(args) -> dict:
    """``advjax.eval.benchmark`` on the converted model; this process never imports PyTorch."""
    from advjax import host

    host.configure()  # malloc and XLA:CPU settings, before JAX starts

    import jax
    import jax.monitoring
    import jaxlib
    import numpy as np

    from advjax.eval import benchmark
    from advjax.models import make_model_fn
    from advjax.models.saved_model import load_model

    spans: list[tuple[float, float]] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event in COMPILE_EVENTS:
            end = time.perf_counter()
            spans.append((end - duration, end))

    jax.monitoring.register_event_duration_secs_listener(listener)
    _, y, digest = test_points(args.num_examples, args.data_dir)
    model, variables = load_model(args.advjax_model)
    t0 = time.perf_counter()
    result = benchmark(
        make_model_fn(model),
        variables,
        "mnist",
        "Linf",
        args.eps,
        num_examples=args.num_examples,
        data_dir=args.data_dir,
        batch_size=args.batch,
        seed=args.seed,
        progress=False,
        model_name="mnist_fast_at (converted from PyTorch)",
    )
    wall = time.perf_counter() - t0
    compile_s = union_seconds([(lo, hi) for lo, hi in spans if hi >= t0])
    clean = np.asarray(result.result.correct["clean"])
    robust = np.asarray(result.result.correct["aa_standard"]) & clean
    return {
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "num_examples": result.num_examples,
        "violations": result.result.violations,
        "clean_mask": clean.tolist(),
        "robust_mask": robust.tolist(),
        "wall_s": wall,
        "compile_s": compile_s,
        "compile_free_s": wall - compile_s,
        "points_sha256": digest,
        "labels_checked": len(y),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "devices": [str(d) for d in jax.devices()],
        "torch_imported": "torch" in sys.modules,
    }


def side_reference(args) -> dict:
    """fra31/auto-attack standard on the PyTorch model, its log parsed per component."""
    import importlib.metadata

    import torch
    from autoattack import AutoAttack

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    x, y, digest = test_points(args.num_examples, args.data_dir)
    model = load_torch_model(args.torch_checkpoint)
    xt, yt = nchw(x), torch.from_numpy(y)
    adversary = AutoAttack(
        model, norm="Linf", eps=args.eps, version="standard", seed=args.seed, device="cpu"
    )
    lines: list[tuple[float, str]] = []
    log = adversary.logger.log  # shared by the components

    def record(message: str) -> None:
        lines.append((time.perf_counter() - t0, str(message)))
        log(message)

    adversary.logger.log = record
    t0 = time.perf_counter()
    x_adv = adversary.run_standard_evaluation(xt, yt, bs=args.batch)
    wall = time.perf_counter() - t0
    clean = (predict(model, xt, args.batch) == yt).numpy()
    adv = (predict(model, x_adv, args.batch) == yt).numpy()
    components = {}
    for _, message in lines:
        match = REFERENCE_LOG.search(message)
        if match:
            components[match[1].lower()] = {
                "robust_accuracy": float(match[2]) / 100,
                "robust": round(float(match[2]) / 100 * len(y)),
                "cumulative_s": float(match[3]),
            }
    return {
        "clean_accuracy": float(clean.mean()),
        "robust_accuracy": float((adv & clean).mean()),
        "num_examples": len(y),
        "clean_mask": clean.tolist(),
        "robust_mask": (adv & clean).tolist(),
        "components": components,
        "max_linf": float((x_adv - xt).abs().max()),
        "wall_s": wall,
        "points_sha256": digest,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_threads_set": args.torch_threads,
        "autoattack": importlib.metadata.version("autoattack"),
    }


SIDE_FUNCTIONS = {
    "train": side_train,
    "check": side_check,
    "advjax": side_advjax,
    "reference": side_reference,
}


# --- The driver -------------------------------------------------------------------------------


def run_side(side: str, argv: list[str], args) -> dict:
    """Runs ``side`` in a fresh process (or reads its saved result, ``--reuse``); returns its
    result with the process's wall time and the load averages around it."""
    saved = Path(args.torch_checkpoint).parent / f"side_{side}_{args.num_examples}.json"
    if side in args.reuse:
        print(f"[{side}] reusing {saved}", flush=True)
        return json.loads(saved.read_text())
    print(f"[{side}] starting", flush=True)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    cmd = [sys.executable, __file__, *argv, f"--side={side}", f"--side_output={saved}"]
    subprocess.run(cmd, check=True, cwd=REPO)
    out = json.loads(saved.read_text())
    out.update(
        process_s=time.perf_counter() - t0,
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
    )
    saved.write_text(json.dumps(out))
    print(f"[{side}] done in {out['process_s']:.1f} s", flush=True)
    return out


def convert(args) -> dict:
    """``python -m launch.convert`` of the PyTorch checkpoint (the user's path)."""
    cmd = [
        sys.executable,
        "-m",
        "launch.convert",
        f"--torch_checkpoint={args.torch_checkpoint}",
        "--arch=mnist_fast_at",
        f"--output={args.advjax_model}",
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return {"command": " ".join(cmd[1:]), "seconds": time.perf_counter() - t0}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def summarize(args, argv: list[str], train: dict | None, conv: dict, sides: dict) -> dict:
    """The report's fields: accuracies, their difference, per-point agreement and times."""
    ours, ref, check = sides["advjax"], sides["reference"], sides["check"]
    n = ours["num_examples"]
    if ref["num_examples"] != n or ours["points_sha256"] != ref["points_sha256"]:
        raise RuntimeError("the two sides attacked different points")
    a_rob, r_rob = ours["robust_mask"], ref["robust_mask"]
    a_clean, r_clean = ours["clean_mask"], ref["clean_mask"]
    pairs = list(zip(a_rob, r_rob, strict=True))
    diff = 100 * (ours["robust_accuracy"] - ref["robust_accuracy"])
    return {
        "command": "python benchmarks/benchmark_torch_models.py " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "hardware": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "accelerator": "none (CPU only)",
        },
        "versions": {
            "python": platform.python_version(),
            "advjax": git_commit(),
            "jax": ours["jax"],
            "jaxlib": ours["jaxlib"],
            "torch": ref["torch"],
            "autoattack": ref["autoattack"],
        },
        "eps": args.eps,
        "num_examples": n,
        "batch": args.batch,
        "seed": args.seed,
        "points_sha256": ours["points_sha256"],
        "train": train,
        "convert": conv,
        "check": check,
        "advjax": {k: v for k, v in ours.items() if not k.endswith("_mask")},
        "reference": {k: v for k, v in ref.items() if not k.endswith("_mask")},
        "robust_difference_points": diff,
        "within_target": abs(diff) <= 0.5,
        "agreement": {
            "clean_disagree": sum(a != r for a, r in zip(a_clean, r_clean, strict=True)),
            "robust_both": sum(a and r for a, r in pairs),
            "broken_both": sum(not a and not r for a, r in pairs),
            "broken_by_advjax_only": sum(r and not a for a, r in pairs),
            "broken_by_reference_only": sum(a and not r for a, r in pairs),
            "advjax_only_indices": [i for i, (a, r) in enumerate(pairs) if r and not a],
            "reference_only_indices": [i for i, (a, r) in enumerate(pairs) if a and not r],
        },
        "ratio_wall": ours["wall_s"] / ref["wall_s"],
        "ratio_compile_free": ours["compile_free_s"] / ref["wall_s"],
    }


def markdown(r: dict) -> str:
    ours, ref, agree, check = r["advjax"], r["reference"], r["agreement"], r["check"]
    n = r["num_examples"]
    hw = r["hardware"]
    v = r["versions"]
    lines = [
        "# advjax.eval.benchmark vs the reference AutoAttack on a converted PyTorch MNIST model",
        "",
        f"Command: `{r['command']}`",
        "",
        f"{r['date']}; {hw['cpu']}, {hw['cores']} cores, {hw['accelerator']}; Python "
        f"{v['python']}, advjax {v['advjax']}, jax {v['jax']} (jaxlib {v['jaxlib']}), torch "
        f"{v['torch']} ({ref['torch_threads']} CPU threads), autoattack {v['autoattack']} "
        "(fra31/auto-attack).",
        "",
    ]
    train = r.get("train")
    if train:
        s = train["schedule"]
        last = train["epochs"][-1]
        lines += [
            "## The model",
            "",
            f"{s['model']}, trained in PyTorch: {s['objective']}; inner max {s['attack']}; "
            f"{s['optimizer']}; {s['epochs']} epochs of {s['batches_per_epoch']} batches of "
            f"{s['batch']}; `torch.manual_seed({s['seed']})`. The first 100 batches took "
            f"{train['first_100_batches_s']:.1f} s; training took {train['train_s']:.0f} s "
            f"(last epoch: adversarial training loss {last['adv_loss']:.3f}, accuracy on its PGD "
            f"points {100 * last['adv_accuracy']:.2f}%).",
            "",
        ]
    lines += [
        f"Converted with `{r['convert']['command']}`. On the {check['num_examples']} benchmark "
        f"points the two models' logits differ by at most {check['logits_max_abs_diff']:.2e} and "
        f"their argmax agrees on {check['argmax_agree']}.",
        "",
        "## Accuracy and time",
        "",
        f"AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square 5,000 queries), Linf eps "
        f"{r['eps']}, the first {n} MNIST test points (sha256 {r['points_sha256'][:12]}... on "
        f"both sides), batch {r['batch']}, seed {r['seed']}; each side in a process of its own, "
        "one after the other (advjax's process never imported PyTorch: "
        f"{not ours['torch_imported']}).",
        "",
        "| | clean | robust | wall s | compile s | compile-free s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| advjax.eval.benchmark | {100 * ours['clean_accuracy']:.2f}% | "
        f"{100 * ours['robust_accuracy']:.2f}% | {ours['wall_s']:.1f} | {ours['compile_s']:.1f} | "
        f"{ours['compile_free_s']:.1f} |",
        f"| reference AutoAttack | {100 * ref['clean_accuracy']:.2f}% | "
        f"{100 * ref['robust_accuracy']:.2f}% | {ref['wall_s']:.1f} | - | - |",
        "",
        f"Robust accuracy difference (advjax - reference): **{r['robust_difference_points']:+.2f} "
        f"points** (target: within 0.5; {'met' if r['within_target'] else 'missed'}). Time "
        f"advjax / reference: {r['ratio_wall']:.2f}x with compilation, "
        f"{r['ratio_compile_free']:.2f}x without.",
        "",
        f"Per point: both robust {agree['robust_both']}, both broken (or misclassified) "
        f"{agree['broken_both']}, broken by advjax only {agree['broken_by_advjax_only']}, by the "
        f"reference only {agree['broken_by_reference_only']}; clean predictions disagree on "
        f"{agree['clean_disagree']}. advjax's points outside the ball: {ours['violations']}; the "
        f"reference's largest Linf distance {ref['max_linf']:.6f}.",
        "",
    ]
    if not r["within_target"]:
        lines += [
            "The difference misses the 0.5-point target. Both sides attack the same weights and "
            "points with the same seed number, but the two implementations draw different random "
            "numbers (APGD's and FAB's starting points, Square's random search), so a point near "
            "the attacks' reach can fall on either side; the points that differ are listed in the "
            "JSON (`agreement`).",
            "",
        ]
    if ref["components"]:
        lines += [
            "Reference, robust points after each component (its log; cumulative time):",
            "",
            "| component | robust | cumulative s |",
            "| --- | ---: | ---: |",
        ]
        for name, c in ref["components"].items():
            lines.append(f"| {name} | {c['robust']} | {c['cumulative_s']:.1f} |")
        lines.append("")
    loads = ", ".join(
        f"{side} {r[side]['loadavg_before'][0]:.2f} -> {r[side]['loadavg_after'][0]:.2f}"
        for side in ("advjax", "reference")
        if "loadavg_before" in r[side]
    )
    if ref.get("torch_threads_set"):
        lines += [
            f"The reference ran with `torch.set_num_threads({ref['torch_threads_set']})` "
            "(`--torch_threads`): on this shared machine, with another job on the cores, PyTorch's "
            "default 2 threads ran a 100-point APGD-T 6.4x slower than 1 thread (3.74 s vs "
            "0.58 s), so 1 thread is the reference's better setting here; advjax kept XLA's "
            "defaults.",
            "",
        ]
    lines += [
        "Compile s: the union of JAX's trace, lowering and backend-compile events "
        "(`jax.monitoring`) during the `benchmark` call; compile-free s = wall s - compile s.",
        "",
        f"1-minute load average before -> after each side: {loads} (other jobs may have shared "
        "the 2 cores; the times are one run each).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", action="store_true", help="train the PyTorch model first")
    p.add_argument("--torch_checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("--advjax_model", default=None, help="default: <checkpoint dir>/advjax")
    p.add_argument("--num_examples", type=int, default=1000)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=None, help="MNIST files (default: $ADVJAX_DATA_DIR)")
    p.add_argument("--train_epochs", type=int, default=8)
    p.add_argument("--train_steps", type=int, default=10)
    p.add_argument("--train_alpha", type=float, default=0.075)
    p.add_argument("--train_batch", type=int, default=100)
    p.add_argument("--lr_max", type=float, default=5e-3)
    p.add_argument("--train_seed", type=int, default=0)
    p.add_argument(
        "--eps_warmup_epochs",
        type=float,
        default=2.0,
        help="training eps ramps linearly from 0 (at eps 0.3 from the start, one epoch stayed at "
        "chance)",
    )
    p.add_argument(
        "--train_threads",
        type=int,
        default=1,
        help="PyTorch threads for training (1: on a shared 2-core machine, 2 threads contended "
        "by another job ran 7.5x slower than 1)",
    )
    p.add_argument(
        "--torch_threads", type=int, default=0, help="PyTorch threads, reference (0: its default)"
    )
    p.add_argument("--reuse", default="", help="sides whose saved result to read: advjax,reference")
    p.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--side_output", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.advjax_model = args.advjax_model or str(Path(args.torch_checkpoint).parent / "advjax")
    args.reuse = [s for s in args.reuse.split(",") if s]

    if args.side:  # a child process
        Path(args.side_output).write_text(json.dumps(SIDE_FUNCTIONS[args.side](args)))
        return {}
    train_json = Path(args.torch_checkpoint).with_suffix(".json")
    if args.train:
        run_side("train", argv, args)
    elif not Path(args.torch_checkpoint).exists():
        raise SystemExit(f"{args.torch_checkpoint} does not exist; pass --train to train it")
    train = json.loads(train_json.read_text()) if train_json.exists() else None
    conv = convert(args)
    sides = {side: run_side(side, argv, args) for side in ("check", "advjax", "reference")}
    result = summarize(args, argv, train, conv, sides)
    table = markdown(result)
    print(table)
    if args.output:
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))
        Path(f"{args.output}.md").write_text(table)
    return result


if __name__ == "__main__":
    main()
