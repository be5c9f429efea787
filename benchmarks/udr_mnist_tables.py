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
from pathlib import Path

METHODS = (
    ("ch5_pgd_at", "PGD-AT"),
    ("ch5_udr_pgd", "UDR-PGD"),
    ("ch5_trades", "TRADES"),
    ("ch5_udr_trades", "UDR-TRADES"),
    ("ch5_mart", "MART"),
    ("ch5_udr_mart", "UDR-MART"),
)
# spec thesis_ch5_6.md Sec. 8: Table 1 (MNIST: Nat, PGD-200, AA, B&B) and Table 2 (PGD-200 at eps).
THESIS_TABLE1 = {
    "PGD-AT": (99.4, 94.0, 88.9, 91.3),
    "UDR-PGD": (99.5, 94.3, 90.0, 91.4),
    "TRADES": (99.4, 95.1, 90.9, 92.2),
    "UDR-TRADES": (99.4, 96.9, 92.2, 95.2),
    "MART": (99.3, 94.7, 90.6, 92.9),
    "UDR-MART": (99.3, 96.0, 92.3, 94.4),
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
    for variant, label in METHODS:
        w = root / variant
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


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(rows: dict) -> str:
    lines = [
        "| method | Nat | PGD-200 | AA | B&B (500 pts) | thesis Nat / PGD / AA / B&B |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, r in rows.items():
        thesis = " / ".join(f"{v:.1f}" for v in THESIS_TABLE1[label])
        lines.append(
            f"| {label} | {_f(r['nat'])} | {_f(r['pgd200'])} | {_f(r['aa'])} | {_f(r['bb'])} "
            f"| {thesis} |"
        )
    lines += ["", "PGD-200 at each eps (ours; the thesis's Table 2 below each row):", ""]
    lines.append("| method | " + " | ".join(EPS) + " | Avg gain |")
    lines.append("|---|" + "---:|" * (len(EPS) + 1))
    labels = list(rows)
    for i, label in enumerate(labels):
        ours = [rows[label]["eps_sweep"].get(e) for e in EPS]
        gain = "-"
        if i % 2 == 1:  # a UDR method: average gain over its counterpart (Table 2's Avg)
            base = [rows[labels[i - 1]]["eps_sweep"].get(e) for e in EPS]
            if all(v is not None for v in ours + base):
                gain = f"{sum(a - b for a, b in zip(ours, base, strict=True)) / len(EPS):+.2f}"
        lines.append(f"| {label} | " + " | ".join(_f(v) for v in ours) + f" | {gain} |")
        thesis = THESIS_TABLE2[label]
        t_gain = "-"
        if i % 2 == 1:
            base = THESIS_TABLE2[labels[i - 1]]
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="workdirs/ch5")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    rows = collect(Path(args.root))
    text = markdown(rows)
    print(text)
    if args.output:
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(args.output).with_suffix(".md").write_text(text)
    return rows


if __name__ == "__main__":
    main()
