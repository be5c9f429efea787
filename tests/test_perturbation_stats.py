"""Perturbation statistics (UDR document Table 5): against NumPy, PGD's hard ball, masks, the
streaming form, and their place in the evaluation suite's result and report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.data import Dataset
from advjax.eval import perturbation as ps
from advjax.eval import report
from advjax.eval.presets import ThreatSettings
from advjax.eval.suite import _entry_key, evaluate_suite
from tests.conftest import linear_model_fn

EPS = 0.1


def _numpy_stats(x_adv, x, eps, mask=None):
    """Table 5 by hand (float64): per-pixel mean |delta|, mean per-example Linf, and the pixel
    fractions within 0.9, 1, 1.1 eps, over the unmasked rows."""
    a = np.abs(np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    rows = np.ones(len(x), bool) if mask is None else np.asarray(mask, bool)
    a = a[rows]
    out = {"l1": a.mean(), "linf": a.max(1).mean(), "examples": rows.sum()}
    for name, r in (("p_0.9eps", 0.9), ("p_eps", 1.0), ("p_1.1eps", 1.1)):
        out[name] = (a <= r * eps + ps.ATOL).mean()
    return out


def _random_pair(seed=0, batch=7, shape=(5, 5, 3)):
    """(x_adv, x): deltas spread over [-1.3 eps, 1.3 eps], some exactly at +-eps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, (batch, *shape)).astype(np.float32)
    delta = rng.uniform(-1.3 * EPS, 1.3 * EPS, x.shape)
    delta[:, 0, 0, :] = EPS * rng.choice([-1.0, 1.0], (batch, shape[-1]))
    return jnp.asarray(np.clip(x + delta, 0.0, 1.0), jnp.float32), jnp.asarray(x)


def test_statistics_match_numpy_on_random_data():
    x_adv, x = _random_pair()
    got = ps.perturbation_statistics(x_adv, x, EPS)
    want = _numpy_stats(x_adv, x, EPS)
    assert set(got) == set(ps.KEYS) | {"examples"}
    for k in ps.KEYS:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
    assert float(got["examples"]) == 7
    assert 0.0 < float(got["p_0.9eps"]) < float(got["p_eps"]) < float(got["p_1.1eps"]) < 1.0
    jitted = jax.jit(ps.perturbation_statistics)(x_adv, x, EPS)  # eps traced
    for k in ps.KEYS:
        np.testing.assert_allclose(jitted[k], got[k], rtol=1e-6)


def test_masked_rows_are_excluded_and_the_streaming_form_agrees():
    x_adv, x = _random_pair(seed=1, batch=9)
    mask = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0], np.float32)
    garbage = x_adv.at[mask == 0].set(jnp.where(x[mask == 0] > 0.5, 0.0, 1.0))  # huge deltas
    got = ps.perturbation_statistics(garbage, x, EPS, mask)
    want = _numpy_stats(x_adv, x, EPS, mask)
    for k in ps.KEYS:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
    assert float(got["examples"]) == 6
    # Batch by batch (fixed shapes, masked padding rows) equals the whole batch.
    acc = ps.init_accumulator()
    step = jax.jit(ps.accumulate)
    for lo in range(0, 9, 4):
        rows = slice(lo, lo + 4)
        pad = 4 - len(x[rows])
        batch = [jnp.pad(a[rows], ((0, pad), (0, 0), (0, 0), (0, 0))) for a in (garbage, x)]
        acc = step(acc, *batch, EPS, jnp.pad(jnp.asarray(mask[rows]), (0, pad)))
    streamed = ps.finalize(acc)
    for k in (*ps.KEYS, "examples"):
        np.testing.assert_allclose(float(streamed[k]), float(got[k]), rtol=1e-5, err_msg=k)
    # Stored per-example values, averaged on the host (NaN rows are unknown, not zeros).
    per_example = jax.tree.map(np.array, ps.per_example_statistics(garbage, x, EPS))
    per_example["l1"][2] = np.nan
    summary = ps.summarize(per_example, mask)
    assert summary["examples"] == 5
    np.testing.assert_allclose(
        summary["l1"], _numpy_stats(x_adv, x, EPS, mask * (np.arange(9) != 2))["l1"], rtol=1e-5
    )
    # No rows: zeros, not NaN.
    empty = ps.perturbation_statistics(x_adv, x, EPS, np.zeros(9))
    assert all(float(empty[k]) == 0.0 for k in (*ps.KEYS, "examples"))


def test_pgd_stays_in_its_hard_ball(linear_model, images):
    """A hard Linf ball: every pixel within eps (Table 5's PGD row: p(<= eps) = 100%)."""
    model_fn, variables = linear_model
    x, y = images
    x_adv = jax.jit(attacks.pgd(EPS, 0.03, 10), static_argnums=0)(
        model_fn, variables, x, y, jax.random.key(0)
    )
    stats = ps.perturbation_statistics(x_adv, x, EPS)
    assert float(stats["p_eps"]) == 1.0 and float(stats["p_1.1eps"]) == 1.0
    assert float(stats["p_0.9eps"]) < 1.0  # most of PGD's pixels sit on the sphere
    assert float(stats["linf"]) <= EPS + ps.ATOL
    assert 0.5 * EPS < float(stats["l1"]) <= EPS + ps.ATOL


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    images = rng.integers(40, 215, size=(21, 8, 8, 1), dtype=np.uint8)
    k_w, k_b = jax.random.split(jax.random.key(0))
    variables = {
        "w": jax.random.normal(k_w, (64, 10)) * 0.3,
        "b": 0.1 * jax.random.normal(k_b, (10,)),
    }
    labels = np.asarray(jnp.argmax(linear_model_fn(variables, jnp.asarray(images) / 255.0), -1))
    return Dataset(images, labels.astype(np.int32), 10, "toy"), variables


def test_suite_reports_each_attacks_statistics_and_keeps_them_on_resume(problem, tmp_path):
    dataset, variables = problem
    settings = ThreatSettings(norm="linf", eps=0.05, eps_text="0.05", step_size=0.01)
    key = jax.random.key(3)

    def run(**kwargs):
        return evaluate_suite(
            linear_model_fn,
            variables,
            dataset,
            ["pgd10", {"name": "fgsm", "eps": 0.03, "label": "FGSM-0.03"}],
            settings=settings,
            batch_size=8,  # 21 points: the last batch is padded
            key=key,
            progress=False,
            **kwargs,
        )

    result = run()
    stats = result.perturbation_statistics()
    assert set(stats) == {"pgd10", "FGSM-0.03"}  # not the clean column
    assert stats["pgd10"]["examples"] == 21 and stats["pgd10"]["eps"] == 0.05
    assert stats["pgd10"]["p_eps"] == 1.0 and stats["pgd10"]["linf"] <= 0.05 + ps.ATOL
    assert stats["FGSM-0.03"]["eps"] == 0.03  # the entry's own bound
    # The same numbers as the attack run by hand with the suite's per-example keys.
    x = jnp.asarray(dataset.images, jnp.float32) / 255.0
    keys = jax.vmap(jax.random.fold_in, (None, 0))(_entry_key(key, "pgd10"), jnp.arange(21))
    x_adv = result.entries[1].attack(
        linear_model_fn, variables, x, jnp.asarray(dataset.labels), keys
    )
    direct = _numpy_stats(x_adv, x, 0.05)
    for k in ps.KEYS:
        np.testing.assert_allclose(stats["pgd10"][k], direct[k], rtol=1e-5, err_msg=k)

    rep = report.build_report(result, settings, seed=3, dataset="toy")
    columns = {c["name"]: c for c in rep["attacks"]}
    assert columns["clean"]["perturbation"] is None
    assert columns["pgd10"]["perturbation"] == stats["pgd10"]
    text = report.markdown_table(rep)
    assert "## Perturbations" in text and "| PGD-10 | 0.05 |" in text and "FGSM-0.03" in text

    state = str(tmp_path / "state.npz")
    part = run(state_path=state, stop_after_batches=1)
    assert part.perturbation_statistics()["pgd10"]["examples"] == 8
    resumed = run(state_path=state).perturbation_statistics()
    for name in ("pgd10", "FGSM-0.03"):
        for k in ps.KEYS:
            assert resumed[name][k] == pytest.approx(stats[name][k], rel=1e-6), (name, k)
