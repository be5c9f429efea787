"""One epoch of the README's main job (fast AT on ``mnist_fast_at``) vs a plain eager PyTorch loop.

    python benchmarks/train_epoch_vs_torch.py --repeats=2 --output=results/train_epoch_vs_torch
    python benchmarks/train_epoch_vs_torch.py --num_examples=10000 --repeats=1   # 50-step epochs

Both sides train the same recipe on random data of MNIST's size (``--num_examples`` 60,000 images
of 28x28x1, 5,000 of them held out as validation, so an epoch is 550 steps of batch 100), each in a
fresh Python process of its own (this script, re-run with a hidden ``--side``), advjax first, then
PyTorch, ``--repeats`` times alternating. The advjax process never imports PyTorch, nor the
PyTorch process JAX.

* advjax: the main job itself, ``advjax.experiment.train_and_evaluate`` (what ``python -m
  launch.train --config=configs/mnist.py:fast_at`` runs) on ``configs/mnist.py:fast_at`` with
  ``data.source=synthetic``, ``data.synthetic.num_examples=--num_examples`` and
  ``train.progress=False`` (no progress bar), every other field as the main job has it: the
  10-epoch cyclic schedule and eps warm-up, logging every 50 steps to ``metrics.jsonl``,
  checkpoints every 200 steps and at each epoch end (latest and best), validation (clean and
  PGD-20 on 1,000 held-out images) and the catastrophic-overfitting check after each epoch. It
  runs in a fresh temporary workdir and stops after ``--epochs`` epochs (``stop_after_steps``, so
  nothing is saved beyond the last epoch end's checkpoints; the main job's separate evaluation,
  ``launch.evaluate``, is not part of it). The loop's hooks (data, step dispatch, logging,
  validation, checkpoints) are wrapped in timers that only read the clock. Epoch ``k`` runs from the
  end of epoch ``k - 1``'s checkpoint save (from the call for the first) to the end of its own
  checkpoint save. The first epoch holds the compilation of the train step and of the validation
  and is not timed: the epoch time is the mean over epochs 2..``--epochs``. Also reported: the
  same epoch without the end-of-epoch validation and overfitting check ("train part"), and, in
  the first repeat, a breakdown by re-running the run's own compiled train step afterwards on
  ``--breakdown_steps`` steps: on pre-made device batches alone, the data pipeline alone
  (``train_batches`` + ``shard_batch``), the two together, and the two with the loop's metrics
  fetch every 50 steps.
* PyTorch: ``TorchFastATNet`` (benchmarks/torch_port.py; PyTorch's default initialisation) on
  ``torch.rand`` images and ``torch.randint`` labels, the same held-out split size, an index
  permutation per epoch (no DataLoader), batch 100; FGSM from a uniform random start (delta ~
  U(-eps, eps), clipped to the [0, 1] box, one sign step of 1.25 eps by ``torch.autograd.grad``
  with respect to delta, projected onto the eps ball and the box), cross-entropy on the
  adversarial batch, Adam with the same cyclic learning rate (peak 0.005 at 40% of 10 epochs) and
  the same 3-epoch eps warm-up; loss and accuracy read to the host every 50 steps; no
  checkpoints, no validation. ``torch.set_num_threads(--threads)`` (default: every core). It runs
  the same ``--epochs`` and times epochs 2..``--epochs`` the same way (epoch 1 is its warm-up).

Prints a table of the epoch times and the ratio advjax / PyTorch (issue 21's target: at most 1.0x
for the whole epoch), then advjax's time split. ``--output=PATH`` writes ``PATH.json`` and
``PATH.md`` (command, hardware, date, versions, load average, numbers).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SIDES = ("advjax", "torch")
VARIANT = "fast_at"  # configs/mnist.py
# The fast_at recipe as configs/mnist.py sets it (checked against the config by the advjax side).
EPS, STEP_FACTOR, BATCH, LEARNING_RATE = 0.3, 1.25, 100, 5e-3
SCHEDULE_EPOCHS, PEAK_FRACTION, EPS_WARMUP_EPOCHS = 10, 0.4, 3
NUM_VALIDATION, LOG_EVERY = 5000, 50


# ----------------------------------------------------------------------------------------------
# advjax side


class _Clock:
    """(label, start, end, step) events from the wrapped hooks; wrapping only reads the clock."""

    def __init__(self):
        self.events: list[tuple[str, float, float, int | None]] = []

    def wrap(self, owner, name: str, label: str, step_arg: int | None = None) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            step = args[step_arg] if step_arg is not None else None
            self.events.append((label, t0, time.perf_counter(), step))
            return out

        setattr(owner, name, timed)

    def record(self, label: str, t0: float, step: int | None = None) -> None:
        self.events.append((label, t0, time.perf_counter(), step))


def run_advjax(args) -> dict:
    from advjax import host

    host.configure()  # as launch.train does, before JAX starts

    import logging as py_logging

    import jax
    import numpy as np
    from absl import logging

    from advjax.experiment import training
    from configs import mnist

    logging.set_verbosity(logging.WARNING)  # launch.train's console.configure()
    py_logging.getLogger().setLevel(py_logging.WARNING)

    config = mnist.get_config(VARIANT)
    config.data.source = "synthetic"
    config.data.synthetic.num_examples = args.num_examples
    config.train.progress = False
    recipe = (
        config.model.name,
        config.defense.name,
        config.defense.attack.name,
        config.defense.attack.eps,
        config.defense.attack.step_size,
        config.defense.eps_warmup_epochs,
        config.train.batch_size,
        config.train.optimizer,
        config.train.learning_rate,
        config.train.schedule,
        config.train.peak_fraction,
        config.train.epochs,
        config.data.num_validation,
        config.train.log_every,
    )
    expected = ("mnist_fast_at", "fast_at", "fgsm_rs", EPS, STEP_FACTOR * EPS, EPS_WARMUP_EPOCHS)
    expected += (BATCH, "adam", LEARNING_RATE, "cyclic", PEAK_FRACTION, SCHEDULE_EPOCHS)
    expected += (NUM_VALIDATION, LOG_EVERY)
    if recipe != expected:
        raise RuntimeError(f"configs/mnist.py:{VARIANT} changed: {recipe} != {expected}")

    clock, captured = _Clock(), {}
    log_cls, ckpt_cls = training._Log, training._Checkpoints
    clock.wrap(log_cls, "step", "log_step")
    clock.wrap(log_cls, "pause", "wait_for_steps")
    clock.wrap(log_cls, "epoch", "epoch_log")
    clock.wrap(ckpt_cls, "save", "checkpoint", step_arg=1)
    clock.wrap(ckpt_cls, "finish", "finish")
    clock.wrap(training._Validation, "__call__", "validation")
    clock.wrap(training._OverfitMonitor, "check", "overfit_check")
    clock.wrap(training._PlateauSchedule, "update", "plateau")
    clock.wrap(training, "to_host", "to_host")
    clock.wrap(training, "shard_batch", "shard_batch")

    load_splits, make_step, make_batches = (
        training.load_splits,
        training.sharded_train_step,
        training.train_batches,
    )

    def capture_splits(*a, **k):
        captured["splits"] = load_splits(*a, **k)
        return captured["splits"]

    def capture_step(*a, **k):
        step_fn = make_step(*a, **k)
        captured["step_fn"] = step_fn
        calls = [0]

        def timed_step(*sa):
            t0 = time.perf_counter()
            out = step_fn(*sa)
            calls[0] += 1
            clock.record("compile_and_first_step" if calls[0] == 1 else "step_dispatch", t0)
            return out

        return timed_step

    def capture_batches(*a, **k):
        it = make_batches(*a, **k)

        def timed():
            while True:
                t0 = time.perf_counter()
                batch = next(it)
                clock.record("data", t0)
                yield batch

        return timed()

    training.load_splits = capture_splits
    training.sharded_train_step = capture_step
    training.train_batches = capture_batches

    train_ds, _ = capture_splits(config)  # the sizes, to stop after --epochs epochs
    spe = len(train_ds) // config.train.batch_size
    with tempfile.TemporaryDirectory(prefix="train_epoch_vs_torch_") as workdir:
        t_start = time.perf_counter()
        final = training.train_and_evaluate(config, workdir, stop_after_steps=args.epochs * spe)
        t_end = time.perf_counter()
        records = training.read_metrics(workdir)
        ckpt_bytes = sum(f.stat().st_size for f in Path(workdir).rglob("*") if f.is_file())
    epochs = _epochs(clock.events, t_start, t_end, spe, args.epochs)
    logged_epoch_time = {int(r["epoch"]): r["epoch_time_s"] for r in records if "epoch_time_s" in r}
    for e in epochs:
        e["logged_epoch_time_s"] = logged_epoch_time.get(e["epoch"])

    breakdown = None
    if args.breakdown_steps:
        breakdown = _breakdown(args, config, captured, final, spe)

    flags = os.environ.get("XLA_FLAGS", "")
    return {
        "side": "advjax",
        "steps_per_epoch": spe,
        "train_examples": len(train_ds),
        "epochs": epochs,
        "run_s": t_end - t_start,
        "workdir_bytes": ckpt_bytes,
        "breakdown": breakdown,
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": flags,
        "torch_imported": "torch" in sys.modules,
        "versions": {
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "flax": importlib.metadata.version("flax"),
            "optax": importlib.metadata.version("optax"),
            "orbax-checkpoint": importlib.metadata.version("orbax-checkpoint"),
            "numpy": np.__version__,
        },
    }


def _epochs(events, t_start: float, t_end: float, spe: int, num_epochs: int) -> list[dict]:
    """Per epoch: its wall time and the time of each hook inside it (see the module docstring)."""
    ends = sorted(
        t1 for label, _, t1, step in events if label == "checkpoint" and step and step % spe == 0
    )
    if len(ends) != num_epochs:
        raise RuntimeError(f"expected {num_epochs} epoch-end checkpoints, found {len(ends)}")
    out, start = [], t_start
    for epoch, end in enumerate(ends, 1):
        parts: dict[str, float] = {}
        counts: dict[str, int] = {}
        for label, t0, t1, step in events:
            if start <= t0 < end:
                if label == "checkpoint":
                    label = "checkpoint_epoch_end" if step % spe == 0 else "checkpoint_mid_epoch"
                parts[label] = parts.get(label, 0.0) + (t1 - t0)
                counts[label] = counts.get(label, 0) + 1
        total = end - start
        validation = parts.get("validation", 0.0) + parts.get("overfit_check", 0.0)
        out.append(
            {
                "epoch": epoch,
                "epoch_s": total,
                "train_part_s": total - validation,
                "parts_s": parts,
                "counts": counts,
            }
        )
        start = end
    return out


def _breakdown(args, config, captured, final, spe: int) -> dict:
    """The run's own compiled train step re-run on ``--breakdown_steps`` steps, four ways."""
    import jax

    from advjax.data import train_batches
    from advjax.sharding import make_mesh, replicate, shard_batch

    step_fn, (train_ds, _) = captured["step_fn"], captured["splits"]
    mesh = make_mesh()
    n = min(args.breakdown_steps, spe)
    bs, seed = config.train.batch_size, config.seed
    source = train_batches(train_ds, bs, seed + 1)
    premade = [shard_batch(next(source), mesh) for _ in range(min(n, 50))]
    jax.block_until_ready(premade)
    state = replicate(final, mesh)
    state, metrics = step_fn(state, premade[0])  # already compiled: a warm-up step
    jax.block_until_ready(state)

    def loop(data: bool, step: bool, fetch: bool):
        nonlocal state
        batches = train_batches(train_ds, bs, seed, start_step=spe)
        t0 = time.perf_counter()
        for i in range(n):
            batch = shard_batch(next(batches), mesh) if data else premade[i % len(premade)]
            if step:
                state, metrics = step_fn(state, batch)
                if fetch and (i + 1) % LOG_EVERY == 0:
                    jax.device_get(metrics)
        jax.block_until_ready((state, batch))
        return time.perf_counter() - t0

    timed = {
        "step_only_s": loop(False, True, False),
        "data_only_s": loop(True, False, False),
        "data_and_step_s": loop(True, True, False),
        "data_step_and_fetch_s": loop(True, True, True),
    }
    scale = spe / n  # per epoch
    return {"steps": n, "premade_batches": len(premade), **{k: v * scale for k, v in timed.items()}}


# ----------------------------------------------------------------------------------------------
# PyTorch side


def run_torch(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torch_port import TorchFastATNet

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    n = args.num_examples
    images = torch.rand(n, 1, 28, 28)
    labels = torch.randint(0, 10, (n,))
    train_idx = torch.arange(NUM_VALIDATION, n)  # the first 5,000 held out, as advjax's split
    spe = len(train_idx) // BATCH
    total = SCHEDULE_EPOCHS * spe
    peak, warmup = max(1, int(PEAK_FRACTION * total)), EPS_WARMUP_EPOCHS * spe

    def learning_rate(step: int) -> float:  # optax.join_schedules of two linear schedules
        if step < peak:
            return LEARNING_RATE * step / peak
        return LEARNING_RATE * max(0.0, 1.0 - (step - peak) / max(1, total - peak))

    model = TorchFastATNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    logged, epoch_times, step = [], [], 0
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        perm = train_idx[torch.randperm(len(train_idx))]
        for b in range(spe):
            idx = perm[b * BATCH : (b + 1) * BATCH]
            x, y = images[idx], labels[idx]
            eps = EPS * min(1.0, step / warmup)
            delta = torch.empty_like(x).uniform_(-eps, eps)
            delta = (torch.clamp(x + delta, 0.0, 1.0) - x).requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            delta = torch.clamp(delta.detach() + STEP_FACTOR * eps * grad.sign(), -eps, eps)
            x_adv = torch.clamp(x + delta, 0.0, 1.0)
            logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            for group in opt.param_groups:
                group["lr"] = learning_rate(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % LOG_EVERY == 0 or b == spe - 1:
                accuracy = (logits.argmax(1) == y).float().mean()
                logged.append((step, loss.item(), accuracy.item()))
        epoch_times.append(time.perf_counter() - t0)
    return {
        "side": "torch",
        "steps_per_epoch": spe,
        "train_examples": len(train_idx),
        "epochs": [{"epoch": i + 1, "epoch_s": t} for i, t in enumerate(epoch_times)],
        "last_logged": logged[-1],
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "jax_imported": "jax" in sys.modules,
        "versions": {"torch": torch.__version__},
    }


# ----------------------------------------------------------------------------------------------
# Driver and report


def timed_mean(side: dict, key: str = "epoch_s") -> float:
    """Mean of ``key`` over the epochs after the first (the first compiles / warms up)."""
    return statistics.mean(e[key] for e in side["epochs"][1:])


def run_side(side: str, argv: list[str], repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{side}.json"
        cmd = [sys.executable, __file__, *argv, f"--side={side}", f"--side_output={path}"]
        if side == "advjax" and repeat > 0:
            cmd.append("--breakdown_steps=0")  # the breakdown only in the first repeat
        load = os.getloadavg()[0]
        subprocess.run(cmd, check=True)
        out = json.loads(path.read_text())
    out["loadavg_1min_before"] = load
    return out


def summary(runs: list[dict]) -> list[dict]:
    rows = []
    for r, run in enumerate(runs):
        a, t = run["advjax"], run["torch"]
        advjax_s, train_s, torch_s = timed_mean(a), timed_mean(a, "train_part_s"), timed_mean(t)
        rows.append(
            {
                "repeat": r + 1,
                "advjax_epoch_s": advjax_s,
                "advjax_train_part_s": train_s,
                "advjax_logged_epoch_time_s": statistics.mean(
                    e["logged_epoch_time_s"] for e in a["epochs"][1:]
                ),
                "advjax_first_epoch_s": a["epochs"][0]["epoch_s"],
                "torch_epoch_s": torch_s,
                "torch_first_epoch_s": t["epochs"][0]["epoch_s"],
                "ratio": advjax_s / torch_s,
                "ratio_train_part": train_s / torch_s,
                "loadavg_advjax": a["loadavg_1min_before"],
                "loadavg_torch": t["loadavg_1min_before"],
            }
        )
    return rows


PART_ORDER = (
    "compile_and_first_step",
    "step_dispatch",
    "data",
    "shard_batch",
    "log_step",
    "wait_for_steps",
    "to_host",
    "checkpoint_mid_epoch",
    "checkpoint_epoch_end",
    "validation",
    "overfit_check",
    "epoch_log",
    "plateau",
)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| repeat | advjax epoch s | advjax w/o validation s | torch epoch s | advjax / torch | "
        "w/o validation / torch | advjax epoch 1 s | torch epoch 1 s | load (advjax, torch) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['repeat']} | {row['advjax_epoch_s']:.2f} | {row['advjax_train_part_s']:.2f} "
            f"| {row['torch_epoch_s']:.2f} | {row['ratio']:.2f}x | {row['ratio_train_part']:.2f}x "
            f"| {row['advjax_first_epoch_s']:.2f} | {row['torch_first_epoch_s']:.2f} "
            f"| {row['loadavg_advjax']:.2f}, {row['loadavg_torch']:.2f} |"
        )
    return lines


def split_lines(runs: list[dict]) -> list[str]:
    """advjax's time split per epoch (seconds in each wrapped hook; 'other' is the rest)."""
    lines = [
        "| repeat | epoch | epoch s | " + " | ".join(PART_ORDER) + " | other |",
        "| ---: | ---: | ---: | " + " | ".join("---:" for _ in PART_ORDER) + " | ---: |",
    ]
    for r, run in enumerate(runs):
        for e in run["advjax"]["epochs"]:
            parts = e["parts_s"]
            other = e["epoch_s"] - sum(parts.values())
            cells = [f"{parts[p]:.2f}" if p in parts else "-" for p in PART_ORDER]
            lines.append(
                f"| {r + 1} | {e['epoch']} | {e['epoch_s']:.2f} | "
                + " | ".join(cells)
                + f" | {other:.2f} |"
            )
    return lines


def breakdown_lines(runs: list[dict]) -> list[str]:
    lines = []
    for r, run in enumerate(runs):
        b = run["advjax"].get("breakdown")
        if not b:
            continue
        spe = run["advjax"]["steps_per_epoch"]
        how = "" if b["steps"] == spe else f", extrapolated from {b['steps']} steps"
        lines += [
            f"advjax, repeat {r + 1}: the run's compiled train step re-run, seconds per epoch of "
            f"{spe} steps{how}:",
            "",
            "| step alone (pre-made device batches) | data pipeline alone | data + step | "
            "data + step + metrics fetch every 50 steps |",
            "| ---: | ---: | ---: | ---: |",
            f"| {b['step_only_s']:.2f} | {b['data_only_s']:.2f} | {b['data_and_step_s']:.2f} | "
            f"{b['data_step_and_fetch_s']:.2f} |",
            "",
        ]
    return lines


def markdown(result: dict) -> str:
    hw = result["hardware"]
    lines = [
        "# One epoch of the main job (fast AT, mnist_fast_at): advjax vs eager PyTorch",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- hardware: CPU {hw['cpu']} ({hw['cpu_count']} cores); host {hw['host']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- XLA_FLAGS (advjax process): `{result['xla_flags'] or '(none)'}`",
        f"- torch threads: {result['torch_threads']} (interop {result['torch_interop_threads']})",
        f"- {result['steps_per_epoch']} steps of batch {BATCH} per epoch "
        f"({result['train_examples']:,} training examples); {result['settings']['epochs']} "
        "epochs per run, epochs 2.. timed (mean), the first being compilation / warm-up",
        "",
        "advjax epoch: the main job's epoch (data pipeline, steps, logging, checkpoints every 200 "
        "steps and at the epoch end, validation PGD-20 on 1,000 images, overfitting check), "
        "from the end of the previous epoch's checkpoint to the end of its own; 'w/o validation' "
        "subtracts the validation and the overfitting check. PyTorch: a plain eager loop "
        "(no validation, no checkpoints). Load: 1-minute load average before each process.",
        "",
        *table(result["summary"]),
        "",
        "advjax time split (seconds inside each hook of the loop, per epoch; 'log_step' includes "
        "waiting for the device at the metrics fetch every 50 steps; 'other' is the loop's own "
        "time and anything unwrapped):",
        "",
        *split_lines(result["runs"]),
        "",
        *breakdown_lines(result["runs"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2, help="advjax then PyTorch, this many times")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; epochs 2.. are timed")
    p.add_argument(
        "--num_examples",
        type=int,
        default=60_000,
        help="synthetic images before the 5,000 held out (60,000: MNIST's 550 steps per epoch)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument(
        "--breakdown_steps",
        type=int,
        default=-1,
        help="advjax breakdown steps in the first repeat (-1: one epoch, 0: none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write <output>.json and <output>.md")
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--side_output", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch compiles and is not timed)")
    if args.num_examples - NUM_VALIDATION < BATCH:
        p.error(f"--num_examples must leave at least {BATCH} after {NUM_VALIDATION} held out")
    if args.breakdown_steps < 0:
        args.breakdown_steps = (args.num_examples - NUM_VALIDATION) // BATCH
    return args


def main(argv=None):
    from advjax import host

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.side:  # a child process
        out = run_advjax(args) if args.side == "advjax" else run_torch(args)
        Path(args.side_output).write_text(json.dumps(out))
        return
    child_argv = [a for a in argv if not a.startswith("--output")]
    command = shlex.join(["python", "benchmarks/train_epoch_vs_torch.py", *argv])
    print(f"# {command}")
    print(f"# CPU {host.cpu_model()} ({os.cpu_count()} cores), load average {os.getloadavg()}")
    runs = []
    for r in range(args.repeats):
        run = {}
        for side in SIDES:
            run[side] = run_side(side, child_argv, r)
            times = ", ".join(f"{e['epoch_s']:.2f}" for e in run[side]["epochs"])
            print(f"repeat {r + 1} {side}: epoch times {times} s", flush=True)
        runs.append(run)
    first = runs[0]
    result = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": {"cpu": host.cpu_model(), "cpu_count": os.cpu_count(), "host": platform.node()},
        "versions": {
            "python": platform.python_version(),
            **first["advjax"]["versions"],
            **first["torch"]["versions"],
        },
        "xla_flags": first["advjax"]["xla_flags"],
        "torch_threads": first["torch"]["threads"],
        "torch_interop_threads": first["torch"]["interop_threads"],
        "steps_per_epoch": first["advjax"]["steps_per_epoch"],
        "train_examples": first["advjax"]["train_examples"],
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("side")},
        "summary": summary(runs),
        "runs": runs,
    }
    assert first["torch"]["steps_per_epoch"] == result["steps_per_epoch"]
    assert not any(run["advjax"]["torch_imported"] for run in runs)
    assert not any(run["torch"]["jax_imported"] for run in runs)
    print()
    print("\n".join(table(result["summary"])))
    print()
    print("\n".join(split_lines(runs)))
    print()
    print("\n".join(breakdown_lines(runs)))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
