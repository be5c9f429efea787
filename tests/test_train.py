"""Training: exact resumption, checkpoint errors, no recompiles, configs, launch commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, defenses
from advjax.analysis import read_png
from advjax.data import load_dataset, train_batches
from advjax.experiment import initial_state, train_and_evaluate
from advjax.models import get_model
from advjax.train import Checkpointer, make_mesh, replicate, shard_batch
from advjax.train.metrics import read_metrics
from advjax.train.step import train_step
from configs import mnist
from tests.train_configs import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _assert_states_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    config = tiny_config("fast_at", epochs=2)  # 12 steps; checkpoints at 4, 6 (epoch), 8, 12
    uninterrupted = train_and_evaluate(config, str(tmp_path / "a"))
    # "Killed" after step 11: the last checkpoint is step 8, so steps 9-11 are redone on resume.
    partial = train_and_evaluate(config, str(tmp_path / "b"), stop_after_steps=11)
    assert int(partial.step) == 11
    assert Checkpointer(str(tmp_path / "b")).latest_step() == 8
    resumed = train_and_evaluate(config, str(tmp_path / "b"))
    assert int(resumed.step) == int(uninterrupted.step) == 12
    _assert_states_equal(uninterrupted, resumed)  # parameters, optimiser state, RNG, step
    metrics = read_metrics(str(tmp_path / "a"))
    assert any("val_robust_accuracy" in m for m in metrics)
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    ckpt = Checkpointer(str(tmp_path / "a"))
    assert ckpt.best_step() in (6, 12)


def test_train_step_traces_once_and_learns(tmp_path):
    config = tiny_config("fast_at")
    ds = load_dataset("synthetic", "train", num_examples=128)
    model = get_model("mnist_cnn4")
    state, tx, schedule = initial_state(config, model, ds.image_shape, steps_per_epoch=4)
    defense = defenses.build(config.defense)
    mesh = make_mesh()
    traced = chex.assert_max_traces(n=1)(
        lambda s, b: train_step(s, b, model=model, defense=defense, tx=tx, schedule=schedule)
    )
    step = jax.jit(
        jax.shard_map(
            traced, mesh=mesh, in_specs=(jax.P(), jax.P("batch")), out_specs=(jax.P(), jax.P())
        )
    )
    state = replicate(state, mesh)
    batches = train_batches(ds, 32, seed=0)
    losses = []
    for _ in range(8):
        state, metrics = step(state, shard_batch(next(batches), mesh))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 8
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_locked_config_rejects_typos_and_unknown_names():
    config = mnist.get_config("fast_at")
    config.lock()
    with pytest.raises(AttributeError):
        config.train.epochz = 3
    with pytest.raises(ValueError, match="valid variants: natural, pgd_at, fast_at, adv, jac"):
        mnist.get_config("tradez")
    with pytest.raises(ValueError, match="unknown defense .madry.; valid defenses: natural, "):
        defenses.build(dict(name="madry"))


def test_one_step_adversaries_step_1_25_eps_of_their_own_eps():
    """FGSM-from-random-start variants take a step of 1.25 eps (Wong et al. 2020; SRT App. J)."""
    for variant in ("fast_at", "atlas", "fast_srt"):
        attack = defenses.build(mnist.get_config(variant).defense).attacks[0]
        assert isinstance(attack, attacks.GradientAttack) and attack.random_init
        assert attack.steps == 1 and attack.step_size == pytest.approx(1.25 * attack.threat.eps)


def test_schedules_have_the_documented_shape():
    from advjax.train.optim import make_schedule

    cfg = mnist.get_config("fast_at").train
    cfg.epochs, cfg.learning_rate = 10, 1.0
    cyclic = make_schedule(cfg, steps_per_epoch=10)
    assert float(cyclic(0)) == 0.0 and float(cyclic(40)) == pytest.approx(1.0)
    assert float(cyclic(100)) == pytest.approx(0.0, abs=1e-6)
    cfg.schedule, cfg.decay_epochs, cfg.decay_factor = "piecewise", (5, 8), 0.1
    piecewise = make_schedule(cfg, steps_per_epoch=10)
    assert [float(piecewise(s)) for s in (49, 50, 80)] == pytest.approx([1.0, 0.1, 0.01])
    cfg.schedule, cfg.warmup_epochs = "cosine", 1
    cosine = make_schedule(cfg, steps_per_epoch=10)
    assert float(cosine(10)) == pytest.approx(1.0) and float(cosine(100)) < 1e-6
    cfg.schedule = "exponential"
    with pytest.raises(ValueError, match="valid schedules"):
        make_schedule(cfg, steps_per_epoch=10)


def _run(args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_launch_train_then_evaluate(tmp_path):
    workdir = tmp_path / "wd"
    overrides = [
        "--config.data.name=synthetic",
        "--config.data.source=synthetic",
        "--config.data.num_validation=64",
        "--config.data.synthetic.num_examples=320",
        "--config.model.name=mnist_cnn4",
        "--config.train.epochs=1",
        "--config.train.batch_size=32",
        "--config.validation.attack.steps=2",
        "--config.validation.num_examples=64",
        "--config.evaluate.suite=clean,pgd3,fgsm,rand_adv_t",
        "--config.evaluate.num_examples=100",
        "--config.evaluate.check_examples=32",
    ]
    _run(
        [
            "-m",
            "launch.train",
            f"--config={REPO}/configs/mnist.py:natural",
            f"--workdir={workdir}",
            *overrides,
        ],
        cwd=REPO,
    )
    _run(["-m", "launch.evaluate", f"--workdir={workdir}"], cwd=REPO, timeout=600)
    report = json.loads((workdir / "report.json").read_text())
    assert report["num_examples"] == 100 and report["complete"]
    by_name = {a["name"]: a for a in report["attacks"]}
    assert list(by_name) == ["clean", "pgd3", "fgsm", "rand_adv_t"]
    assert by_name["rand_adv_t"]["protocol"]["max_translation"] == 3.0
    assert by_name["rand_adv_t"]["protocol"]["max_angle"] == 0.0
    assert by_name["pgd3"]["protocol"]["steps"] == 3
    assert by_name["pgd3"]["protocol"]["eps_text"] == "0.3"
    assert report["threat_model"]["norm"] == "linf"
    assert 0.0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1.0
    assert report["robust_accuracy"] <= min(a["accuracy"] for a in report["attacks"])
    assert "pgd20_accuracy_vs_eps" in report["checks"] and isinstance(report["warnings"], list)
    table = (workdir / "report.md").read_text()
    assert "| mnist_cnn4 | natural |" in table and "PGD-3" in table and "worst case" in table
    assert "RandAdv.T" in table
    # --eps / --norm override the config's threat model (here in-process, on 32 points).
    from launch.evaluate import evaluate_workdir

    other = evaluate_workdir(
        str(workdir), num_examples=32, output=str(tmp_path / "l2"), suite_names="clean,pgd3",
        run_checks=False, eps="3/2", norm="l2",
    )  # fmt: skip
    assert other["threat_model"]["norm"] == "l2" and other["threat_model"]["eps_text"] == "3/2"
    assert other["attacks"][1]["protocol"]["eps"] == pytest.approx(1.5)
    # Pictures: one row of clean images, then one per attack, with a caption naming the rows.
    _run(
        [
            "-m",
            "launch.visualize",
            f"--workdir={workdir}",
            "--attacks=grid_adv_r,fgsm",
            "--num_examples=4",
            "--scale=2",
        ],
        cwd=REPO,
    )
    grid = read_png(str(workdir / "adversarial_examples.png"))
    assert grid.shape == (3 * (28 * 2 + 2) + 2, 4 * (28 * 2 + 2) + 2, 1)
    caption = (workdir / "adversarial_examples.md").read_text()
    assert "GridAdv.R" in caption and "FGSM" in caption and "max_angle=30.0" in caption


def test_missing_mnist_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVJAX_DATA_DIR", raising=False)
    config = tiny_config("natural")
    config.data.name, config.data.source, config.data.data_dir = "mnist", "local", str(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        train_and_evaluate(config, str(tmp_path / "wd"))


def test_device_count_invariance_needs_per_example_keys():
    # The defense keys depend on the global example index, not on the shard.
    from advjax.sharding import example_keys

    key = jax.random.key(0)
    mesh1 = make_mesh(jax.devices()[:1])
    keys = jax.jit(
        jax.shard_map(
            lambda k: example_keys(k, 4), mesh=mesh1, in_specs=jax.P(), out_specs=jax.P("batch")
        )
    )(key)
    expected = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(4))
    np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(expected))


def test_mnist_variants_build_and_atlas_objectives_share_the_app_b_schedule():
    for variant in mnist.VARIANTS:
        config = mnist.get_config(variant)
        defenses.build(config.defense, steps_per_epoch=10)  # a real defense
        get_model(config.model.name)
    table1 = [mnist.get_config(v) for v in ("adv", "jac", "trades", "atlas")]
    for config in table1:  # ATLAS Sec. 5 and App. B: one schedule for every Table 1 objective
        assert config.model.name == "mnist_fast_at" and config.train.batch_size == 128
        assert (config.train.optimizer, config.train.schedule) == ("sgd", "constant")
        assert config.train.learning_rate == 0.01 and config.train.plateau.enabled
        assert (config.train.plateau.patience, config.train.plateau.factor) == (2, 5.0)
        if config.defense.name != "jac":  # zero-step JAC has no adversary to warm up
            assert config.defense.eps_warmup_epochs == 15
    assert table1[0].defense.name == "fast_at"  # one-step ADV is Wong et al.'s fast AT
    assert not mnist.get_config("fast_at").train.plateau.enabled
    with pytest.raises(ValueError, match="valid variants: natural"):
        mnist.get_config("atlass")


def test_cifar_config_trains_a_batchnorm_model_with_augmentation(tmp_path):
    from configs import cifar10

    for variant in cifar10.VARIANTS:
        assert cifar10.get_config(variant).data.name == "cifar10"
    config = cifar10.get_config("fast_at")
    config.data.update(name="synthetic", source="synthetic", num_validation=32)
    config.data.synthetic = dict(num_examples=96, image_shape=(32, 32, 3))
    config.model = dict(name="resnet20", depth=8)
    config.train.update(epochs=1, batch_size=32, progress=False, log_every=1)
    config.validation.update(num_examples=32, batch_size=32)
    config.validation.attack.steps = 2
    state = train_and_evaluate(config, str(tmp_path / "wd"))
    assert int(state.step) == 2
    initial, _, _ = initial_state(config, get_model("resnet20", depth=8), (32, 32, 3), 2)
    moved = [
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(state.batch_stats), jax.tree.leaves(initial.batch_stats), strict=True
        )
    ]
    assert state.batch_stats and all(moved)  # running statistics were updated (and pmean-ed)


def test_sigkilled_launch_resumes_to_the_same_parameters_and_defense_state(tmp_path):
    """Kill -9 the real command mid-run, rerun it, and compare with an uninterrupted run. The
    config (``tests/stateful_config.py``) registers a defense that carries state across steps:
    it must come back exactly too."""
    import signal
    import time

    from tests import stateful_config

    workdir = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "launch.train",
        f"--config={REPO}/tests/stateful_config.py",
        f"--workdir={workdir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (workdir / "checkpoints" / "8").exists():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = Checkpointer(str(workdir)).latest_step()
    assert killed_at is not None and killed_at < 18, killed_at
    _run(args[1:], cwd=REPO)

    config = stateful_config.get_config()
    config.train.progress = False
    reference = train_and_evaluate(config, str(tmp_path / "reference"))
    defense = defenses.build(config.defense, 6)
    template, _, _ = initial_state(
        config, get_model("mnist_cnn4"), (28, 28, 1), 6, defense.init_state()
    )
    resumed = Checkpointer(str(workdir)).restore(template)
    assert int(resumed.step) == int(reference.step) == 18
    assert float(reference.defense_state["adv"]) > 0.1  # the state did move
    _assert_states_equal(reference, resumed)  # parameters, optimiser and defense state, RNG


def test_eval_step_is_built_once_per_model_attack_and_mesh():
    from advjax import attacks
    from advjax.eval.accuracy import sharded_eval_step

    mesh = make_mesh()
    model = get_model("mnist_cnn4")
    first = sharded_eval_step(model, attacks.pgd(0.3, 0.01, 2), mesh)
    assert sharded_eval_step(get_model("mnist_cnn4"), attacks.pgd(0.3, 0.01, 2), mesh) is first
    assert sharded_eval_step(model, attacks.pgd(0.3, 0.01, 3), mesh) is not first
