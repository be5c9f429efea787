"""Multi-device and multi-host equivalence, each in its own processes (fake CPU devices)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REPO = SCRIPTS.parents[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_sharded_step_on_8_devices_equals_single_device():
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "sharded_equivalence.py")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Same global batch, same per-example attack noise: equal up to float summation order.
    assert result["max_param_diff"] < 1e-6, result
    assert abs(result["loss8"] - result["loss1"]) < 1e-5, result
    # The evaluation suite: per-example keys and outcomes do not depend on the device count.
    assert result["suite_outcomes"] == 300 and result["suite_outcomes_differing"] == 0, result
    # Defense state, updated from statistics pmean-ed over the devices: on 8 devices and on 1 it
    # follows the NumPy recursion over the per-step (global-batch) losses for 20 steps. The two
    # runs agree to float noise, which FGSM's sign amplifies over 20 steps (not bit for bit).
    assert result["state_diff_8_vs_numpy"] < 1e-5 and result["final_state"] > 0.5, result
    assert result["state_diff_1_vs_numpy"] < 1e-5, result
    assert result["state_rel_diff_8_vs_1"] < 1e-2, result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_multihost_training_agrees(tmp_path):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS / "multihost_worker.py"),
                str(i),
                str(port),
                str(tmp_path),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    for rc, out, err in outputs:
        assert rc == 0, err[-3000:]
        assert "step 3" in out
    a, b = (np.load(tmp_path / f"params_{i}.npy") for i in range(2))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))
