"""Metrics to JSON lines in the workdir (process 0 only)."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np


class MetricWriter:
    """Appends ``{"step": s, "time": t, **scalars}`` lines to ``workdir/metrics.jsonl``."""

    def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
        self.path = os.path.join(workdir, filename)
        self.enabled = jax.process_index() == 0

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str, filename: str = "metrics.jsonl") -> list[dict]:
    with open(os.path.join(workdir, filename)) as f:
        return [json.loads(line) for line in f if line.strip()]
