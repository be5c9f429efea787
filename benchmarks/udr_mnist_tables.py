"""Thesis Ch. 5, Tables 1 and 2 (MNIST): our reports beside the thesis's numbers.

Reads the evaluation reports that ``python -m launch.evaluate`` wrote for each ``ch5_*`` variant of
``configs/mnist.py`` (``<root>/<variant>/eval_main``: clean, PGD-200, AutoAttack standard;
``eval_eps<e>``: PGD-200 at a larger eps; ``eval_bb``: B&B) and the training log (``lambda``),
and writes ``<output>.md`` / ``<output>.json``::

    python benchmarks/udr_mnist_tables.py --root=workdirs/ch5 --output=results/udr_mnist_tables
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (variant, our label, the thesis's row, the standard counterpart's label or None)
METHODS = (
    ("ch5_pgd_at", "PGD-AT", "PGD-AT", None),
    ("ch5_udr_pgd", "UDR-PGD", "UDR-PGD", "PGD-AT"),
    ("ch5_udr_pgd_box", "UDR-PGD (box)", "UDR-PGD", "PGD-AT"),
    ("ch5_trades", "TRADES", "TRADES", None),
    ("ch5_udr_trades", "UDR-TRADES", "UDR-TRADES", "TRADES"),
    ("ch5_udr_trades_box", "UDR-TRADES (box)", "UDR-TRADES", "TRADES"),
    ("ch5_mart", "MART (Eq. 7)", "MART", None),
    ("ch5_udr_mart_box", "UDR-MART (Eq. 7, box)", "UDR-MART", "MART (Eq. 7)"),
    ("ch5_mart_original", "MART (Wang et al.)", "MART", None),
    ("ch5_udr_mart_original_box", "UDR-MART (Wang et al., box)", "UDR-MART", "MART (Wang et al.)"),
    ("ch5_wrm", "WRM", "WRM", None),
)
# spec thesis_ch5_6.md Sec. 8: Table 1 (MNIST: Nat, PGD-200, AA, B&B) and Table 2 (PGD-200 at eps).
THESIS_TABLE1 = {
    "PGD-AT": (99.4, 94.0, 88.9, 91.3),
    "UDR-PGD": (99.5, 94.3, 90.0, 91.4),
    "TRADES": (99.4, 95.1, 90.9, 92.2),
    "UDR-TRADES": (99.4, 96.9, 92.2, 95.2),
    "MART": (99.3, 94.7, 90.6, 92.9),
    "UDR-MART": (99.3, 96.0, 92.3, 94.4),
    "WRM": (91.8, 27.1, 4.5, 8.2),  # Table 9
}
EPS = ("0.3", "0.325", "0.35", "0.375", "0.4", "0.425")
THESIS_TABLE2 = {
    "PGD-AT": (94.0, 67.8, 21.1, 6.8, 2.3, 1.2),
    "UDR-PGD": (94.3, 92.9, 90.1, 79.2, 22.3, 3.8),
    "TRADES": (95.5, 85.2, 34.4, 5.8, 0.6, 0.1),
    "UDR-TRADES": (96.9, 96.9, 95.8, 95.1, 94.5, 88.5),
    "MART": (94.7, 66.1, 9.4, 0.9, 0.2, 0.1),
    "UDR-MART": (96.0, 95.0, 94.1, 92.8, 88.8, 37.7),
}
THESIS_LABEL = {label: thesis for _, label, thesis, _ in METHODS}
COUNTERPART = {label: base for _, label, _, base in METHODS}


def _accuracy(report_dir: Path, attack: str) -> float | None:
    path = report_dir / "report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    for entry in report["attacks"]:
        if entry["name"] == attack:
            return 100.0 * entry["accuracy"]
    return None


def _lambda_trajectory(workdir: Path) -> dict | None:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lam = [(r["step"], r["udr_lambda"]) for r in rows if "udr_lambda" in r]
    stat = [r["udr_statistic"] for r in rows if "udr_statistic" in r]
    if not lam:
        return None
    return {"first": lam[0][1], "last": lam[-1][1], "last_step": lam[-1][0], "last_stat": stat[-1]}


def collect(root: Path) -> dict:
    out = {}
    for variant, label, _, _ in METHODS:
        w = root / variant
        if not w.exists():
            continue
        row = {
            "nat": _accuracy(w / "eval_main", "clean"),
            "pgd200": _accuracy(w / "eval_main", "pgd200"),
            "aa": _accuracy(w / "eval_main", "aa_standard"),
            "bb": _accuracy(w / "eval_bb", "brendel_bethge"),
            "eps_sweep": {e: _accuracy(w / f"eval_eps{e}", "pgd200") for e in EPS[1:]},
            "lambda": _lambda_trajectory(w),
        }
        row["eps_sweep"]["0.3"] = row["pgd200"]
        out[label] = row
    return out


def training_adversary_statistics(root: Path, data_dir: str | None, num_examples: int) -> dict:
    """Table 5 for each UDR model: its training adversary (the UDR attack at the full eps) on
    the first test points, at lambda_0 = 1 and at the learned lambda of the last step, against
    PGD-40 (the counterparts' adversary); ``advjax.eval.perturbation_statistics``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from parity_torchattacks import load_model

    from advjax import attacks, defenses
    from advjax.eval import perturbation_statistics

    out = {}
    for variant, label, _, base in METHODS:
        w = root / variant
        traj = _lambda_trajectory(w)
        if base is None or traj is None or not (w / "best").exists():
            continue
        config, model_fn, variables, _, test = load_model(str(w), "best", num_examples, data_dir)
        attack = defenses.build(config.defense.to_dict()).adversaries[0].attack
        pgd = attacks.pgd(
            attack.eps, attack.step_size, attack.steps, loss=attack.loss, keep_best=False
        )
        x = jnp.asarray(test.images.astype(np.float32) / 255.0)
        y = jnp.asarray(test.labels.astype(np.int32))
        if attack.loss != "ce":  # TRADES/MART adversaries: KL to the clean prediction
            y = model_fn(variables, x)
        eps, key = attack.eps, jax.random.key(0)
        rows = {
            "PGD-40": pgd,
            "lambda_0 = 1": attack.with_lambda(1.0),
            f"learned lambda = {traj['last']:.3f}": attack.with_lambda(traj["last"]),
        }
        out[label] = {}
        for name, a in rows.items():
            run = jax.jit(lambda v, x, y, k, a=a, f=model_fn: a(f, v, x, y, k))
            x_adv = run(variables, x, y, key)
            stats = perturbation_statistics(x_adv, x, eps)
            out[label][name] = {k: float(v) for k, v in stats.items()}
    return out


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(rows: dict) -> str:
    lines = [
        "| method | Nat | PGD-200 | AA | B&B (500 pts) | thesis Nat / PGD / AA / B&B |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, r in rows.items():
        thesis = " / ".join(f"{v:.1f}" for v in THESIS_TABLE1[THESIS_LABEL[label]])
        lines.append(
            f"| {label} | {_f(r['nat'])} | {_f(r['pgd200'])} | {_f(r['aa'])} | {_f(r['bb'])} "
            f"| {thesis} |"
        )
    lines += ["", "PGD-200 at each eps (ours; the thesis's Table 2 below each row):", ""]
    lines.append("| method | " + " | ".join(EPS) + " | Avg gain |")
    lines.append("|---|" + "---:|" * (len(EPS) + 1))
    for label in rows:
        ours = [rows[label]["eps_sweep"].get(e) for e in EPS]
        base_label = COUNTERPART[label]
        gain = "-"
        if base_label in rows:  # a UDR method: average gain over its counterpart (Table 2's Avg)
            base = [rows[base_label]["eps_sweep"].get(e) for e in EPS]
            if all(v is not None for v in ours + base):
                gain = f"{sum(a - b for a, b in zip(ours, base, strict=True)) / len(EPS):+.2f}"
        lines.append(f"| {label} | " + " | ".join(_f(v) for v in ours) + f" | {gain} |")
        thesis = THESIS_TABLE2.get(THESIS_LABEL[label])
        if thesis is None:
            continue
        t_gain = "-"
        if base_label is not None:
            base = THESIS_TABLE2[THESIS_LABEL[base_label]]
            t_gain = f"{sum(a - b for a, b in zip(thesis, base, strict=True)) / len(EPS):+.2f}"
        lines.append(
            "| *thesis* | " + " | ".join(f"*{v:.1f}*" for v in thesis) + f" | *{t_gain}* |"
        )
    lam = [(label, r["lambda"]) for label, r in rows.items() if r["lambda"]]
    if lam:
        header = "| UDR method | lambda at the first log | lambda at the end | last statistic |"
        lines += ["", header]
        lines.append("|---|---:|---:|---:|")
        for label, t in lam:
            lines.append(
                f"| {label} | {t['first']:.3f} | {t['last']:.3f} (step {t['last_step']}) "
                f"| {t['last_stat']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def table5_markdown(table5: dict, num_examples: int) -> str:
    lines = [
        f"Training adversaries on the first {num_examples} test points (Table 5's statistics; "
        "L1 is the per-pixel mean |delta|, L_inf the mean per-example max):",
        "",
        "| model | adversary | L1 | L_inf | p(<= 0.9 eps) | p(<= eps) | p(<= 1.1 eps) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, by_attack in table5.items():
        for name, st in by_attack.items():
            lines.append(
                f"| {label} | {name} | {st['l1']:.4f} | {st['linf']:.4f} | "
                f"{100 * st['p_0.9eps']:.1f}% | {100 * st['p_eps']:.1f}% | "
                f"{100 * st['p_1.1eps']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="workdirs/ch5")
    p.add_argument("--output", default=None)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--table5_examples", type=int, default=500, help="0: skip Table 5")
    args = p.parse_args(argv)
    rows = collect(Path(args.root))
    text = markdown(rows)
    if args.table5_examples:
        table5 = training_adversary_statistics(Path(args.root), args.data_dir, args.table5_examples)
        rows["_table5"] = table5
        text += "\n" + table5_markdown(table5, args.table5_examples)
    print(text)
    if args.output:
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(args.output).with_suffix(".md").write_text(text)
    return rows


if __name__ == "__main__":
    main()
