"""UDR's learned ``lambda`` (Eq. 19, spec ``thesis_ch5_6.md`` Sec. 4.1/4.4, P4-P6) against a NumPy
recomputation from the logged global-batch statistics: over 20 train steps on 8 fake CPU devices
and on 1 (its own process), and across a kill-and-resume of the real training loop. The
one-device, rule-level checks are in ``tests/test_udr.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from advjax import models
from advjax.experiment import train_and_evaluate
from advjax.train import Checkpointer
from advjax.train.metrics import read_metrics

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REPO = SCRIPTS.parents[1]
KEYS = ("lam", "sum", "count", "last")


def lambda_recursion(stats, eps, learning_rate, period, initial, lam_max=None):
    """Eq. 19 in NumPy (float64): the state ``(lam, sum, count, last)`` after each step, from the
    per-step global-batch statistics; every ``period``-th step ``lambda`` moves by
    ``-learning_rate (eps - mean of the period's statistics)``, projected onto ``[0, lam_max]``."""
    lam, total, count, out = float(initial), 0.0, 0, {k: [] for k in KEYS}
    for s in stats:
        total, count = total + float(s), count + 1
        if count >= period:
            lam = float(np.clip(lam - learning_rate * (eps - total / count), 0.0, lam_max))
            total, count = 0.0, 0
        for k, v in zip(KEYS, (lam, total, count, float(s)), strict=True):
            out[k].append(v)
    return {k: np.asarray(v) for k, v in out.items()}


# Tolerances. The step updates lambda in float32 (a handful of roundings of values <= 1 per
# update, 10 updates: < 1e-6 from the float64 recursion; measured 1e-7), and the logged
# statistics are float32 values (on 8 devices the logged metrics went through a pmean of eight
# equal copies: an ulp or so off). Between 8 devices and 1 the gradients are summed in another
# order; the adversary's sign steps could turn such a rounding into a flipped pixel, which moves
# the statistic by at most 2 eps / (36 * 32) ~ 5e-4: 1e-3 (measured: 5e-8). A wrong combine is
# off by far more: the shards' own statistics spread by > 0.05 at every step.
NUMPY_ATOL = 1e-6
DEVICES_ATOL = 1e-3


def _check_against_numpy(log, states, constants):
    stats = np.asarray(states["last"])  # step t's global-batch statistic, after step t
    # The log: step t reports the lambda its adversary used and step t-1's statistic.
    np.testing.assert_allclose(log["udr_lambda"][1:], states["lam"][:-1], rtol=1e-6)
    assert log["udr_lambda"][0] == constants["lambda_0"]
    np.testing.assert_allclose(log["udr_statistic"][1:], stats[:-1], rtol=1e-6)
    logged = np.r_[log["udr_statistic"][1:], stats[-1]]  # the last step's is in the final state
    expected = lambda_recursion(
        logged,
        constants["eps"],
        constants["lambda_lr"],
        constants["period"],
        constants["lambda_0"],
    )
    for k in ("lam", "sum", "last"):
        np.testing.assert_allclose(states[k], expected[k], atol=NUMPY_ATOL, err_msg=k)
    np.testing.assert_array_equal(states["count"], expected["count"])
    return expected


def test_lambda_on_8_devices_and_on_1_equals_numpy_over_20_steps():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "udr_lambda_devices.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    states8, states1 = result["states8"], result["states1"]

    # Every replica holds the same state after every step (P6), bit for bit.
    assert result["replicas_differing8"] == 0 and result["replicas_differing1"] == 0, result
    # Both runs follow Eq. 19 over their own logged statistics.
    expected8 = _check_against_numpy(result["log8"], states8, result)
    _check_against_numpy(result["log1"], states1, result)
    # 8 devices and 1 see the same global batches: the same statistics and lambdas.
    for k in ("lam", "sum", "last"):
        np.testing.assert_allclose(states8[k], states1[k], atol=DEVICES_ATOL, err_msg=k)
    assert states8["count"] == states1["count"]
    # lambda moved (10 updates, well away from its bounds): 1 -> about 0.1.
    lam = np.asarray(states8["lam"])
    assert len(set(lam.tolist())) == 11 and lam[-1] < 0.5 and lam.min() > 0.0, lam

    # The statistic is the mean over the global batch: the mean of the eight shards' own
    # statistics (recomputed outside the step), which spread widely (by design of the data).
    per_shard = np.asarray(result["log8"]["per_shard"])  # [steps, devices]
    np.testing.assert_allclose(per_shard.mean(1), states8["last"], atol=NUMPY_ATOL)
    assert np.min(per_shard.max(1) - per_shard.min(1)) > 0.05, per_shard
    # A device that updated from its own shard's statistics (no pmean) would hold another lambda:
    # every device's would be off by > 1e-2, 10^4 times the tolerance above; a psum, by far more.
    constants = (result["eps"], result["lambda_lr"], result["period"], result["lambda_0"])
    for d in range(per_shard.shape[1]):
        own = lambda_recursion(per_shard[:, d], *constants)["lam"]
        assert np.max(np.abs(own - expected8["lam"])) > 1e-2, d
    summed = lambda_recursion(per_shard.sum(1), *constants)["lam"]
    assert np.max(np.abs(summed - expected8["lam"])) > 1.0


class Linear(nn.Module):
    """Softmax regression: compiles in a fraction of a CNN's time (each run compiles its step)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _by_step(records):
    """The last record of each step (a resumed run logs the replayed steps again)."""
    return {int(r["step"]): r for r in records if "udr_lambda" in r}


def test_lambda_state_across_a_kill_and_resume_is_exact_and_equals_numpy(tmp_path, monkeypatch):
    from tests import udr_config

    monkeypatch.setitem(models.MODELS, "udr_test_linear", Linear)
    config = udr_config.get_config()  # 6 steps an epoch, 12 steps; lambda updated every 3
    config.model.name = "udr_test_linear"
    uninterrupted = train_and_evaluate(config, str(tmp_path / "a"))
    partial = train_and_evaluate(config, str(tmp_path / "b"), stop_after_steps=10)
    assert int(partial.step) == 10
    assert Checkpointer(str(tmp_path / "b")).latest_step() == 8  # 2 steps into a period
    resumed = train_and_evaluate(config, str(tmp_path / "b"))
    assert int(resumed.step) == int(uninterrupted.step) == 12
    final = jax.device_get(uninterrupted.defense_state)
    assert sorted(final) == sorted(KEYS)
    for k in KEYS:
        a, b = np.asarray(final[k]), np.asarray(jax.device_get(resumed.defense_state)[k])
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (k, a, b)

    # Eq. 19 over the statistics logged in metrics.jsonl (step t logs step t-1's statistic and
    # the lambda step t used; the last step's statistic is in the final state).
    records = _by_step(read_metrics(str(tmp_path / "a")))
    assert sorted(records) == list(range(1, 13))
    logged_lambda = np.asarray([records[t]["udr_lambda"] for t in range(1, 13)])
    stats = np.asarray([records[t]["udr_statistic"] for t in range(2, 13)] + [final["last"]])
    expected = lambda_recursion(
        stats, udr_config.EPS, udr_config.LAMBDA_LR, udr_config.LAMBDA_PERIOD, 1.0
    )
    np.testing.assert_allclose(logged_lambda, np.r_[1.0, expected["lam"][:-1]], atol=NUMPY_ATOL)
    for k in ("lam", "sum", "last"):
        assert float(final[k]) == pytest.approx(expected[k][-1], abs=NUMPY_ATOL), k
    assert int(final["count"]) == expected["count"][-1] == 0
    assert expected["count"][7] == 2 and expected["sum"][7] > 0  # the checkpoint at step 8
    assert len(set(expected["lam"].tolist())) == 5 and expected["lam"][-1] < 0.6  # it moved
    assert 0.0 < stats.min() and stats.max() < udr_config.EPS

    # The resumed run logged the same lambdas and statistics as the uninterrupted one.
    again = _by_step(read_metrics(str(tmp_path / "b")))
    assert sorted(again) == sorted(records)
    for t, record in records.items():
        for key in ("udr_lambda", "udr_statistic"):
            assert again[t][key] == record[key], (t, key)
