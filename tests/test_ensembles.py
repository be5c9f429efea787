"""Ensembles: stacked members trained in one step, an ensemble model_fn, ensemble workdirs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, defenses, losses
from advjax.data import load_dataset, train_batches
from advjax.defenses import Defense
from advjax.models import Ensemble, get_model, init_variables, make_model_fn, member
from advjax.sharding import make_mesh, replicate, shard_batch
from advjax.train.state import create_train_state
from advjax.train.step import sharded_train_step
from configs import mnist

REPO = Path(__file__).resolve().parents[1]
M = 3


@pytest.fixture(scope="module")
def ensemble():
    model = Ensemble(get_model("mnist_cnn4"), M)
    variables = jax.jit(lambda k: init_variables(model, k, (28, 28, 1)))(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    return model, variables, x, jnp.arange(4)


def test_ensemble_output_is_the_mean_of_member_probabilities(ensemble):
    model, variables, x, _ = ensemble
    member_fn = make_model_fn(model.member)
    probs = jnp.stack([jax.nn.softmax(member_fn(member(variables, m), x)) for m in range(M)])
    out = make_model_fn(model)(variables, x)
    np.testing.assert_allclose(jnp.exp(out), jnp.mean(probs, 0), rtol=1e-5, atol=1e-7)
    by_logits = make_model_fn(dataclasses.replace(model, combine="logits"))(variables, x)
    member_logits = jnp.stack([member_fn(member(variables, m), x) for m in range(M)])
    np.testing.assert_allclose(by_logits, jnp.mean(member_logits, 0), rtol=1e-5, atol=1e-6)
    differ = np.abs(np.asarray(member_logits[0] - member_logits[1])).max()
    assert differ > 1e-3  # members start from independent initialisations
    with pytest.raises(ValueError, match="valid values: probabilities, logits"):
        make_model_fn(dataclasses.replace(model, combine="vote"))(variables, x)


def test_vmapped_attack_on_members_equals_a_loop(ensemble):
    model, variables, x, y = ensemble
    member_fn = make_model_fn(model.member)
    pgd = attacks.pgd(0.3, 0.05, 3)
    stacked = jax.tree.map(
        lambda *leaves: jnp.stack(leaves), *[member(variables, m) for m in range(M)]
    )
    vmapped = jax.jit(jax.vmap(pgd, in_axes=(None, 0, None, None, None)), static_argnums=0)(
        member_fn, stacked, x, y, jax.random.key(2)
    )
    one = jax.jit(pgd, static_argnums=0)
    loop = [one(member_fn, member(variables, m), x, y, jax.random.key(2)) for m in range(M)]
    np.testing.assert_allclose(vmapped, jnp.stack(loop), atol=1e-6)
    # The ensemble model_fn is a model like any other for attacks.
    x_adv = one(make_model_fn(model), variables, x, y, jax.random.key(2))
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.3 + 1e-6


def _trainer(model, defense, steps=4):
    """``variables -> (final host state, last metrics)``: ``steps`` SGD steps of ``defense`` on
    synthetic batches, the step compiled once."""
    import optax

    tx = optax.sgd(0.05, momentum=0.9)
    mesh = make_mesh(jax.devices()[:1])
    step_fn = sharded_train_step(model, defense, tx, optax.constant_schedule(0.05), mesh)
    ds = load_dataset("synthetic", "train", num_examples=128)

    def train(variables):
        state = create_train_state(variables, tx, jax.random.key(7), defense.init_state())
        state = replicate(jax.device_get(state), mesh)
        batches = train_batches(ds, 32, seed=0)
        for _ in range(steps):
            state, metrics = step_fn(state, shard_batch(next(batches), mesh))
        return jax.device_get(state), metrics

    return train


def test_members_trained_together_equal_separate_runs(ensemble):
    model, variables, _, _ = ensemble
    fast_at = defenses.pgd_at(attacks.fgsm_rs(0.3))
    together = defenses.for_model(fast_at, model)
    assert isinstance(together, defenses.IndependentMembers)
    joint, metrics = _trainer(model, together)(variables)
    assert np.isfinite(float(metrics["loss"]))
    train_alone = _trainer(model.member, fast_at)
    for m in range(M):
        alone, _ = train_alone(member(variables, m))
        for a, b in zip(
            jax.tree.leaves(member(joint.variables, m)),
            jax.tree.leaves(alone.variables),
            strict=True,
        ):
            # vmapped and single convolutions sum in different orders: float noise, which FGSM's
            # sign can amplify a little over 4 steps (measured up to 1.5e-6).
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@dataclasses.dataclass(frozen=True)
class MemberCrossEntropy:
    """A coupled-defense term: ``sum_m CE(f_m(view), y)`` read from the ensemble's
    ``member_logits`` feature (what CCE and TA-MOO build on)."""

    view: str = "clean"
    weight: float = 1.0
    name: str = "members_ce"
    jacobian_views = ()
    reads_unlabeled_labels = True

    @property
    def views(self):
        return (self.view,)

    @property
    def features(self):
        return {self.view: ("member_logits",)}

    def __call__(self, views):
        member_logits = views.features(self.view, "member_logits")  # [M, B, K]
        ce = jax.vmap(lambda z: losses.cross_entropy(z, views.labels))(member_logits)
        return jnp.sum(jnp.mean(ce, axis=1)), {}


def test_a_coupled_defense_reads_every_member(ensemble):
    model, variables, x, y = ensemble
    batch = {"image": x, "label": y}
    keys = jax.random.split(jax.random.key(3), 4)
    coupled = Defense((MemberCrossEntropy(),), couples_members=True)
    assert defenses.for_model(coupled, model) is coupled
    loss, aux = coupled(model, variables, batch, keys)
    independent = defenses.for_model(defenses.natural(), model)
    expected, _ = independent(model, variables, batch, keys)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Its accuracy metric is the ensemble's (mean of probabilities).
    ensemble_pred = jnp.argmax(make_model_fn(model)(variables, x), -1)
    assert float(aux["metrics"]["clean_accuracy"]) == pytest.approx(
        float(jnp.mean(ensemble_pred == y))
    )


def test_ensemble_workdir_trains_and_evaluates_through_launch(tmp_path):
    workdir = tmp_path / "ensemble"
    overrides = [
        "--config.data.name=synthetic",
        "--config.data.source=synthetic",
        "--config.data.num_validation=64",
        "--config.data.synthetic.num_examples=192",
        "--config.model.name=mnist_cnn4",
        "--config.ensemble.members=2",
        "--config.train.epochs=1",
        "--config.train.batch_size=32",
        "--config.validation.attack.steps=2",
        "--config.validation.num_examples=64",
        "--config.evaluate.suite=clean,pgd3",
        "--config.evaluate.num_examples=64",
        "--config.evaluate.checks=False",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (
        ["-m", "launch.train", f"--config={REPO}/configs/mnist.py:fast_at", f"--workdir={workdir}"]
        + overrides,
        ["-m", "launch.evaluate", f"--workdir={workdir}"],
    ):
        proc = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        # A quiet console: progress bars and results, no library INFO logs (unless --verbose).
        assert not [line for line in proc.stderr.splitlines() if line.startswith("I1")]
    report = json.loads((workdir / "report.json").read_text())
    assert report["num_examples"] == 64 and report["complete"]
    assert 0.0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1.0
    config = json.loads((workdir / "config.json").read_text())
    assert config["ensemble"]["members"] == 2
    assert mnist.get_config("fast_at").ensemble.members == 1  # single models by default
