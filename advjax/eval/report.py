"""Evaluation reports: ``report.json`` (numbers + protocol of every number) and a markdown table
in the layout of the documents' tables (one row per model, one column per attack, worst case
last), then each attack's perturbation statistics (UDR document Table 5: mean ``|delta|``, mean
Linf, fractions of pixels within 0.9, 1 and 1.1 eps; ``advjax.eval.perturbation``)."""

from __future__ import annotations

import platform
import time
from typing import Any

import jax

import advjax
from advjax.eval.presets import ThreatSettings, protocol_summary
from advjax.eval.suite import SuiteResult


def build_report(
    result: SuiteResult,
    settings: ThreatSettings,
    *,
    seed: int,
    dataset: str,
    split: str = "test",
    model: str = "",
    defense: str = "",
    checks: tuple[dict, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    acc = result.accuracy()
    perturbation = result.perturbation_statistics()
    attacks_out = []
    for e in result.entries:
        attacks_out.append(
            {
                "name": e.name,
                "label": e.label,
                "kind": e.kind,
                "accuracy": acc[e.name],
                "violations": result.violations[e.name],
                "protocol": e.protocol,
                "perturbation": perturbation.get(e.name),
            }
        )
    report = {
        "dataset": dataset,
        "split": split,
        "model": model,
        "defense": defense,
        "num_examples": result.num_examples,
        "complete": result.complete,
        "threat_model": {
            "norm": settings.norm,
            "eps": settings.eps,
            "eps_text": settings.eps_text,
            "eps_note": f"eps = {settings.eps_text} exactly ({settings.eps:.6g})",
        },
        "seed": seed,
        "attacks": attacks_out,
        "worst_case_accuracy": acc["worst_case"],
        "worst_case_definition": "correct on the clean point and under every attack above",
        "advjax_version": advjax.__version__,
        "jax_version": jax.__version__,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "processes": jax.process_count(),
        "host": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if checks is not None:
        report["checks"], report["warnings"] = checks[0], list(checks[1])
    if extra:
        report.update(extra)
    return report


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _perturbation_table(cols: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of Table 5's statistics, one row per attack that has them."""
    rows = [c for c in cols if c.get("perturbation") and c["perturbation"].get("examples")]
    if not rows:
        return []
    lines = [
        "",
        "## Perturbations",
        "",
        "delta = x_adv - x: L1 is the per-pixel mean |delta| (||delta||_1 / d), Linf the mean "
        "over points of max |delta|, p(<= r eps) the fraction of all pixels with |delta| <= r eps "
        "(eps per row).",
        "",
        "| attack | eps | L1 | Linf | p(<= 0.9 eps) | p(<= eps) | p(<= 1.1 eps) | points |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in rows:
        p = c["perturbation"]
        lines.append(
            f"| {c['label']} | {p['eps']:.6g} | {p['l1']:.4g} | {p['linf']:.4g} | "
            f"{_pct(p['p_0.9eps'])}% | {_pct(p['p_eps'])}% | {_pct(p['p_1.1eps'])}% | "
            f"{p['examples']} |"
        )
    return lines


def markdown_table(report: dict[str, Any]) -> str:
    """The report as markdown: a results table, the protocol of each column and the warnings."""
    tm = report["threat_model"]
    cols = report["attacks"]
    head = "| model | defense | " + " | ".join(c["label"] for c in cols) + " | worst case |"
    rule = "| --- | --- | " + " | ".join("---:" for _ in cols) + " | ---: |"
    row = (
        f"| {report['model']} | {report['defense']} | "
        + " | ".join(_pct(c["accuracy"]) for c in cols)
        + f" | **{_pct(report['worst_case_accuracy'])}** |"
    )
    lines = [
        f"# Robustness of {report['model'] or 'the model'} on {report['dataset']} "
        f"({report['split']})",
        "",
        f"{report['num_examples']} examples{'' if report['complete'] else ' (INCOMPLETE)'}; "
        + (
            f"lp threat model {tm['norm']} eps = {tm['eps_text']} ({tm['eps']:.6g})"
            if any("eps" in c["protocol"] for c in cols)
            else "no lp-bounded attacks"
        )
        + (
            "; spatial and compound bounds per column (Protocols)"
            if any("threat_model" in c["protocol"] for c in cols)
            else ""
        )
        + f"; seed "
        f"{report['seed']}. Accuracy in %; a point counts as robust under an attack when it is "
        "classified correctly clean and at the attack's output.",
        "",
        head,
        rule,
        row,
        "",
        "## Protocols",
        "",
    ]
    for c in cols:
        proto = protocol_summary(c["protocol"])
        note = f" ({c['violations']} outputs outside the threat model)" if c["violations"] else ""
        lines.append(f"- **{c['label']}** ({c['kind']}): {proto}{note}")
    lines += _perturbation_table(cols)
    warnings = report.get("warnings")
    if warnings is not None:
        lines += ["", "## Gradient-masking checks", ""]
        lines += [f"- WARNING: {w}" for w in warnings] or ["- no warnings"]
    lines += [
        "",
        f"advjax {report['advjax_version']}, jax {report['jax_version']}, {report['devices']}, "
        f"{report['date']}.",
    ]
    return "\n".join(lines) + "\n"
