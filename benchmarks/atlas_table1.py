"""ATLAS Table 1 (MNIST) columns for trained workdirs: clean, PGD-20, PGD-1000, Un-T, Multi-T.

    python benchmarks/atlas_table1.py workdirs/mnist_fast_at workdirs/mnist_atlas \
        --num_examples=1000 --restarts=2

Every attack runs on every point (``advjax.eval.evaluate_suite``, per-example keys); robust =
correct on the clean point and under the attack. Protocol (ATLAS Sec. 6 / App. B, with fewer
restarts than the paper's 20 to fit a CPU): Linf eps 0.3; PGD-20 and PGD-1000 with step 0.01
from a random start (``--long_pgd=40`` swaps PGD-1000 for PGD-40); Un-T = margin PGD (u
re-chosen every step), 50 steps of eps/4, ``--restarts`` random starts; Multi-T = targeted
margin PGD towards each of the 9 wrong classes, 50 steps of eps/4, ``--multi_restarts`` starts
per target. Prints a markdown table and writes it next to each workdir's ``report.json`` as
``atlas_table1.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from advjax.attacks import multitarget  # noqa: E402
from advjax.eval import ThreatSettings, evaluate_suite, presets  # noqa: E402
from advjax.eval.presets import Entry  # noqa: E402
from advjax.experiment import (  # noqa: E402
    load_config,
    load_split,  # noqa: E402
    restore_variables,
)
from advjax.models import make_model_fn  # noqa: E402

EPS = 0.3


def suite(restarts: int, multi_restarts: int = 1, long_pgd: int = 1000) -> list:
    un_t = multitarget.untargeted(EPS, step_size=EPS / 4, steps=50, restarts=restarts)
    multi_t = multitarget.multitargeted(EPS, step_size=EPS / 4, steps=50, restarts=multi_restarts)
    return [
        "clean",
        "pgd20",
        f"pgd{long_pgd}",
        Entry("Un-T", "Un-T", un_t, {"norm": "linf", "eps": EPS, **presets.describe(un_t)}),
        Entry(
            "Multi-T",
            "Multi-T",
            multi_t,
            {"norm": "linf", "eps": EPS, **presets.describe(multi_t)},
        ),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--num_examples", type=int, default=500)
    p.add_argument("--restarts", type=int, default=2, help="Un-T random starts")
    p.add_argument("--multi_restarts", type=int, default=1, help="Multi-T starts per target")
    p.add_argument("--long_pgd", type=int, default=1000, help="steps of the long PGD column")
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows = []
    for workdir in args.workdirs:
        config = load_config(workdir)
        test = load_split(config, "test", args.data_dir)
        test = test.take(np.arange(min(args.num_examples, len(test))))
        model, variables, info = restore_variables(config, workdir, "best", test.image_shape)
        settings = ThreatSettings(norm="linf", eps=EPS, eps_text="0.3", step_size=0.01)
        entries = suite(args.restarts, args.multi_restarts, args.long_pgd)
        start = time.time()
        result = evaluate_suite(
            make_model_fn(model),
            variables,
            test,
            entries,
            settings=settings,
            batch_size=250,
            key=jax.random.key(args.seed),
            progress=False,
        )
        acc = result.accuracy()
        row = {
            "workdir": workdir,
            "defense": config.defense.name,
            "checkpoint": info,
            "num_examples": len(test),
            "protocol": dict(
                eps=EPS,
                un_t_restarts=args.restarts,
                multi_t_restarts=args.multi_restarts,
                long_pgd_steps=args.long_pgd,
                seed=args.seed,
            ),
            "seconds": round(time.time() - start, 1),
            **{k: round(100 * v, 2) for k, v in acc.items()},
        }
        rows.append(row)
        with open(os.path.join(workdir, "atlas_table1.json"), "w") as f:
            json.dump(row, f, indent=2)
        print(json.dumps(row), flush=True)
    long_pgd = f"pgd{args.long_pgd}"
    columns = f"clean | PGD-20 | PGD-{args.long_pgd} | Un-T | Multi-T | worst case"
    print(f"\n| workdir | defense | {columns} |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['workdir']} | {r['defense']} | {r['clean']} | {r['pgd20']} | {r[long_pgd]} | "
            f"{r['Un-T']} | {r['Multi-T']} | {r['worst_case']} |"
        )


if __name__ == "__main__":
    main()
