"""Seed 001's Robustness Score (Sec. 4.3), the Pareto front of Fig. 7 and its launch command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from advjax import attacks
from advjax.analysis import pareto_front as pf
from advjax.data import Dataset
from advjax.eval import evaluate_suite, presets
from advjax.eval import robustness_score as rs

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- Robustness Score

TWO = {"pgd": (10, 20), "flow": (10,)}


def test_score_matches_a_hand_computation():
    model = {"clean": 0.90, "pgd_10": 0.50, "pgd_20": 0.30, "flow_10": 0.60, "worst_case": 0.2}
    natural = {"clean": 0.99, "pgd_10": 0.00, "pgd_20": 0.00, "flow_10": 0.20}
    out = rs.robustness_score(model, natural, TWO)
    # A(pgd) = (0.5 + 0.3) / 2 = 0.4, A(flow) = 0.6; natural: 0 and 0.2.
    assert out["category_accuracy"] == pytest.approx({"pgd": 0.4, "flow": 0.6})
    assert out["natural_category_accuracy"] == pytest.approx({"pgd": 0.0, "flow": 0.2})
    assert out["robust_accuracy"] == pytest.approx(0.5)
    assert out["natural_robust_accuracy"] == pytest.approx(0.1)
    assert out["score"] == pytest.approx(0.4)  # (0.4 + 0.6) / 2 - (0 + 0.2) / 2
    assert out["category_score"] == pytest.approx({"pgd": 0.4, "flow": 0.4})
    assert out["score"] == pytest.approx(np.mean(list(out["category_score"].values())))
    assert out["clean_accuracy"] == 0.90
    assert out["sacrificed_clean_accuracy"] == pytest.approx(0.09)


def test_natural_model_scores_zero_and_sacrifice_has_the_documented_sign():
    natural = {"clean": 0.95, "pgd_10": 0.1, "pgd_20": 0.05, "flow_10": 0.3}
    own = rs.robustness_score(natural, natural, TWO)
    assert own["score"] == 0.0 and own["sacrificed_clean_accuracy"] == 0.0
    cleaner = rs.robustness_score({**natural, "clean": 0.97}, natural, TWO)
    assert cleaner["sacrificed_clean_accuracy"] == pytest.approx(-0.02)  # cleaner: negative
    worse = rs.robustness_score({**natural, "clean": 0.90}, natural, TWO)
    assert worse["sacrificed_clean_accuracy"] == pytest.approx(0.05)


def test_score_names_what_is_missing():
    with pytest.raises(KeyError, match="pgd_20"):
        rs.robustness_score({"clean": 1.0, "pgd_10": 0.5, "flow_10": 0.5}, {}, TWO)
    no_clean = {"pgd_10": 0.5, "pgd_20": 0.5, "flow_10": 0.5}
    with pytest.raises(KeyError, match="clean"):
        rs.robustness_score(no_clean, no_clean, TWO)
    with pytest.raises(ValueError, match="unknown attack category 'spatial'"):
        rs.robustness_suite({"spatial": (10,)})
    with pytest.raises(ValueError, match="positive integer"):
        rs.robustness_suite({"pgd": (0,)})


def test_suite_entries_are_labelled_by_category_and_steps():
    suite = rs.robustness_suite()
    labels = [e["label"] for e in suite]
    assert labels == [f"{c}_{k}" for c in ("pgd", "flow", "rt") for k in (10, 20, 40)]
    by_label = {e["label"]: e for e in suite}
    assert by_label["pgd_20"] == {
        "name": "pgd", "eps": 0.3, "norm": "linf", "step_size": 0.01, "steps": 20,
        "label": "pgd_20",
    }  # fmt: skip
    assert by_label["flow_40"]["eps_flow"] == 0.05 and by_label["flow_40"]["steps"] == 40
    assert by_label["rt_10"]["name"] == "affine_pgd" and by_label["rt_10"]["eps_affine"] == 0.1
    entries = {e["label"]: presets.resolve(e, rs.DEFAULT_SETTINGS) for e in suite}
    assert entries["pgd_40"].bounded and entries["pgd_40"].protocol["eps"] == 0.3
    assert entries["pgd_40"].protocol["steps"] == 40
    assert not entries["flow_10"].bounded and not entries["rt_10"].bounded
    # Other settings: restarts wrap PGD, rt_pgd is Engstrom's rotation-translation.
    settings = presets.ThreatSettings(restarts=3, max_angle=15.0)
    (pgd, rt) = rs.robustness_suite({"pgd": (5,), "rt_pgd": (5,)}, settings)
    assert pgd["name"] == "restarts" and pgd["attack"]["step_size"] is None
    assert isinstance(
        attacks.build({k: v for k, v in pgd.items() if k != "label"}), attacks.Restarts
    )
    assert rt["name"] == "rt_pgd" and rt["max_angle"] == 15.0
    lines = rs.describe_suite({"pgd": (10, 20, 40)})
    assert lines == ["PGD (`pgd`; linf eps 0.3, step 0.01, random start): 10/20/40 iterations"]


def test_evaluate_robustness_resumes_and_matches_the_suite(tmp_path, linear_model):
    model_fn, variables = linear_model
    rng = np.random.default_rng(0)
    dataset = Dataset(
        images=rng.integers(50, 200, size=(12, 8, 8, 1)).astype(np.uint8),
        labels=(np.arange(12) % 10).astype(np.int32),
        num_classes=10,
        name="tiny",
    )
    categories = {"pgd": (2,), "flow": (2,), "rt": (2,)}
    suite = rs.robustness_suite(categories)
    state = str(tmp_path / "state.npz")
    key = jax.random.key(3)
    common = dict(settings=rs.DEFAULT_SETTINGS, batch_size=4, key=key, state_path=state)
    partial = evaluate_suite(
        model_fn, variables, dataset, suite, **common, progress=False, stop_after_batches=1
    )
    assert not partial.complete and partial.num_examples == 4
    resumed = rs.evaluate_robustness(model_fn, variables, dataset, suite, **common, progress=False)
    fresh = evaluate_suite(
        model_fn, variables, dataset, suite, settings=rs.DEFAULT_SETTINGS, batch_size=4, key=key,
        progress=False,
    ).accuracy()  # fmt: skip
    assert resumed == fresh
    assert set(resumed) == {"clean", "pgd_2", "flow_2", "rt_2", "worst_case"}
    score = rs.robustness_score(resumed, resumed, categories)
    assert score["score"] == 0.0


# ------------------------------------------------------------------------------ Pareto front


def _point(method, score, sacrificed, family="baseline", r=None):
    return pf.FrontPoint(method, family, score, sacrificed, r)


def test_pareto_optimal_subset_removes_dominated_points_and_keeps_ties():
    points = [
        _point("a", 10.0, 1.0),
        _point("b", 5.0, 1.0),  # dominated by a (same sacrifice, lower score)
        _point("c", 10.0, 1.0),  # equal to a: neither dominates, both stay
        _point("d", 2.0, -1.0),  # the least sacrifice
        _point("e", 12.0, 5.0),  # the highest score
        _point("f", 9.0, 5.0),  # dominated by a and by e
        _point("g", 10.0, 3.0),  # same score as a, more sacrifice: dominated
    ]
    assert pf.pareto_mask(points) == [True, False, True, True, True, False, False]
    assert [p.method for p in pf.pareto_optimal(points)] == ["a", "c", "d", "e"]
    assert pf.pareto_optimal([points[1]]) == [points[1]]
    assert pf.pareto_optimal([]) == []
    with pytest.raises(ValueError, match="finite"):
        _point("nan", math.nan, 0.0)


def test_signed_log_is_odd_monotone_and_inverted():
    v = np.linspace(-150.0, 150.0, 601)
    u = pf.signed_log(v)
    np.testing.assert_allclose(pf.signed_log(-v), -u)
    assert np.all(np.diff(u) > 0) and pf.signed_log(0.0) == 0.0
    np.testing.assert_allclose(pf.signed_log(np.array([1.0, -9.0])), [np.log(2), -np.log(10)])
    np.testing.assert_allclose(pf.signed_log_inverse(u), v, atol=1e-9)


def test_plot_table_and_json_of_a_front(tmp_path, monkeypatch):
    points = [
        pf.FrontPoint("natural", "natural", 0.0, 0.0, details={"clean (%)": 99.0}),
        _point("pareto_at_r0.5", 20.0, 0.5, "pareto_at", 0.5),
        _point("pareto_at_r1", 35.0, 2.0, "pareto_at", 1.0),
        _point("pgd10_at", 25.0, 3.0),
        _point("flow_at", 10.0, -0.3),
    ]
    path = str(tmp_path / "front.png")
    pf.plot_front(points, path)
    image = __import__("matplotlib.image").image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn
    table = pf.markdown_table(points)
    assert table.splitlines()[0].startswith("| method | family | r | clean (%) | score (pp)")
    assert "| pareto_at_r1 | pareto_at | 1 |  | 35.00 | 2.00 | yes |" in table
    assert "| pgd10_at | baseline |  |  | 25.00 | 3.00 |  |" in table  # dominated by r=1
    pf.write_json(points, str(tmp_path / "front.json"), command="x")
    saved = json.loads((tmp_path / "front.json").read_text())
    # natural is dominated by flow_at (more robust and cleaner), pgd10_at by r=1.
    flags = [p["pareto_optimal"] for p in saved["points"]]
    assert saved["command"] == "x" and flags == [False, True, True, False, True]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "advjax\[plot\]"'):
        pf.plot_front(points, str(tmp_path / "other.png"))


# ---------------------------------------------------------------------------- launch command


def test_overrides_take_the_field_type_and_reject_unknown_fields():
    from launch import evaluate  # noqa: F401 - importing both defines no flag twice
    from launch import pareto_front as lp

    config = lp.load_variant(str(REPO / "configs" / "mnist.py"), "natural")
    for text in (
        "train.epochs=2", "train.learning_rate=1", "data.source=synthetic", "evaluate.eps=0.1",
        "train.progress=false", "validation.attack.steps=3",
    ):  # fmt: skip
        lp.apply_override(config, text)
    assert config.train.epochs == 2 and config.train.learning_rate == 1.0
    assert isinstance(config.train.learning_rate, float) and config.evaluate.eps == "0.1"
    assert config.data.source == "synthetic" and config.train.progress is False
    assert config.validation.attack.steps == 3
    with pytest.raises(KeyError, match="train.epoch"):
        lp.apply_override(config, "train.epoch=2")
    with pytest.raises(ValueError, match="a.b=value"):
        lp.apply_override(config, "train.epochs")


TINY = [
    "data.name=synthetic",
    "data.source=synthetic",
    "data.synthetic.num_examples=128",
    "data.num_validation=32",
    "model.name=mnist_fast_at",
    "train.epochs=1",
    "train.batch_size=32",
    "train.progress=false",
    "train.checkpoint_every_steps=0",
    "validation.num_examples=32",
    "validation.batch_size=32",
    "validation.attack.steps=1",
    "validation.jac_examples=0",
]


def test_launch_front_end_to_end_then_reuses_the_workdirs(tmp_path):
    """Tiny synthetic runs (3 steps of batch 32 each), attacks of one iteration (averages over
    several are tested above). The Pareto AT stand-in is ``natural`` with ``train.learning_rate``
    as ``r`` (the command takes any variant and field), so that the test does not pay for Pareto
    AT's three adversaries a step."""
    from launch import pareto_front as lp

    root = tmp_path / "front"
    args = dict(
        pareto_variant="natural", r_field="train.learning_rate", r_values=[0.002],
        baselines=["natural", "flow_at"], natural="natural", overrides=TINY,
        categories={c: (1,) for c in ("pgd", "flow", "rt")}, num_examples=32, batch_size=32,
    )  # fmt: skip
    command = [
        sys.executable, "-m", "launch.pareto_front", f"--root={root}",
        "--pareto_variant=natural", "--r_field=train.learning_rate", "--r=0.002",
        "--baselines=natural,flow_at", "--natural=natural", "--steps=1", "--num_examples=32",
        "--batch_size=32", *[f"--override={o}" for o in TINY],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in root.iterdir()} >= {"natural", "natural_r0.002", "flow_at"}
    record = json.loads((root / "pareto_front.json").read_text())
    assert record["command"].startswith("python -m launch.pareto_front --root=")
    assert record["overrides"] == TINY and record["r"] == [0.002]
    assert record["hardware"]["cpu_count"] == os.cpu_count()
    assert record["protocol"]["num_examples"] == 32
    assert [e["label"] for e in record["protocol"]["suite"]] == ["pgd_1", "flow_1", "rt_1"]
    runs = {r["method"]: r for r in record["runs"]}
    assert list(runs) == ["natural", "natural_r0.002", "flow_at"]
    assert all(r["trained"] for r in runs.values())
    assert (
        runs["natural_r0.002"]["family"] == "pareto_at" and runs["flow_at"]["family"] == "baseline"
    )
    points = {p["method"]: p for p in record["points"]}
    assert points["natural"]["score"] == 0.0 and points["natural"]["sacrificed"] == 0.0
    for run in runs.values():
        score = rs.robustness_score(
            run["accuracy"], runs["natural"]["accuracy"], args["categories"]
        )
        assert points[run["method"]]["score"] == pytest.approx(100 * score["score"])
        config = json.loads((Path(run["workdir"]) / "config.json").read_text())
        assert config["train"]["epochs"] == 1 and config["data"]["source"] == "synthetic"
    lr = json.loads((root / "natural_r0.002" / "config.json").read_text())["train"]
    assert lr["learning_rate"] == 0.002
    md = (root / "pareto_front.md").read_text()
    assert "`train.epochs=1`" in md and "): 1 iterations" in md and "eps_flow 0.05" in md
    assert "first 32 test images" in md and "| flow_at | baseline |" in md
    assert __import__("matplotlib.image").image.imread(str(root / "pareto_front.png")).size
    # A rerun reads the finished workdirs and the finished evaluations: nothing is retrained.
    points2, meta = lp.run_front(str(root), **args, progress=False)
    assert [r["trained"] for r in meta["runs"]] == [False, False, False]
    assert [p.score for p in points2] == [p["score"] for p in record["points"]]
    assert lp.training_finished(lp.front_runs(
        str(root), str(REPO / "configs" / "mnist.py"), "natural", "train.learning_rate",
        [0.002], [], "natural", TINY,
    )[1].config, str(root / "natural_r0.002"))  # fmt: skip
