"""``attacks.build``: every registry entry from a spec, nested combinators, clear errors."""

from __future__ import annotations

import inspect

import jax
import ml_collections
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks.registry import ATTACKS
from tests.conftest import linear_model_fn

PGD = {"name": "pgd", "eps": 0.1, "step_size": 0.02, "steps": 3}
SMALL_GRID = {"name": "grid_adv", "num_angles": 3, "num_translations": 3}

# A value for every required hyperparameter of a registry factory (by parameter name).
REQUIRED = {
    "eps": 0.1,
    "step_size": 0.02,
    "steps": 3,
    "eps_flow": 0.05,
    "eps_affine": 0.1,
    "restarts": 2,
    "attack": PGD,
    "attacks": [PGD, {"name": "fgsm", "eps": 0.05}],
    "surrogate_fn": linear_model_fn,
    "gamma": 0.5,
}


def _required(name: str) -> dict:
    """The minimal spec of ``name``: its required hyperparameters only."""
    params = inspect.signature(ATTACKS[name]).parameters.values()
    return {p.name: REQUIRED[p.name] for p in params if p.default is inspect.Parameter.empty}


def _direct(name: str, params: dict) -> attacks.Attack:
    """The attack built by calling the factory by hand (inner specs built the same way)."""
    params = dict(params)
    inner = [_direct(s.pop("name"), s) for s in map(dict, params.pop("attacks", []))]
    if "attack" in params:
        spec = dict(params["attack"])
        params["attack"] = _direct(spec.pop("name"), spec)
    return ATTACKS[name](*inner, **params)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_registry_entry_builds_from_its_minimal_spec(name):
    spec = {"name": name, **_required(name)}
    built = attacks.build(spec)
    assert isinstance(built, attacks.Attack)
    assert built == _direct(name, _required(name))
    hash(built)  # jit-static
    # Every other hyperparameter, at its signature default, is accepted and changes nothing.
    defaults = {
        p.name: p.default
        for p in inspect.signature(ATTACKS[name]).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    assert attacks.build({**spec, **defaults}) == built


def test_nested_combinators_equal_direct_construction(linear_model, images):
    model_fn, variables = linear_model
    x, y = images
    keys = jax.random.split(jax.random.key(0), x.shape[0])
    pgd = attacks.pgd(0.1, 0.02, 3)
    grid = attacks.grid_adv(num_angles=3, num_translations=3)
    cases = [
        ({"name": "restarts", "restarts": 2, "attack": PGD}, attacks.restarts(pgd, 2)),
        ({"name": "sequence", "attacks": [PGD, SMALL_GRID]}, attacks.sequence(pgd, grid)),
        (
            {"name": "worst_case", "attacks": [PGD, {"name": "fgsm", "eps": 0.1}]},
            attacks.worst_case(pgd, attacks.fgsm(0.1)),
        ),
    ]
    # Equal attacks are one jit-static argument: the built attack reuses the direct one's program.
    run = jax.jit(lambda attack, *args: attack.run(model_fn, *args), static_argnums=0)
    for spec, direct in cases:
        built = attacks.build(spec)
        assert built == direct and hash(built) == hash(direct)
        expected = run(direct, variables, x, y, keys)
        compiled = run._cache_size()
        got = run(built, variables, x, y, keys)
        assert run._cache_size() == compiled  # no new trace for the built attack
        np.testing.assert_array_equal(got.x_adv, expected.x_adv)
        np.testing.assert_array_equal(got.success, expected.success)
        assert bool(got.success.any()), spec["name"]  # the attack does something on this model
    nested = {"name": "restarts", "restarts": 2, "attack": {"name": "sequence", "attacks": [PGD]}}
    assert attacks.build(nested) == attacks.restarts(attacks.sequence(pgd), 2)
    assert attacks.build({"name": "restarts", "restarts": 1, "attack": PGD}) == pgd


def test_config_dicts_lists_and_built_attacks_are_accepted():
    config = ml_collections.ConfigDict(
        {"name": "cascade", "attacks": [PGD], "buckets": [1.0, 0.5]}  # lists, as from JSON
    )
    built = attacks.build(config)
    assert built == attacks.cascade(attacks.pgd(0.1, 0.02, 3), buckets=(1.0, 0.5))
    hash(built)
    pgd = attacks.pgd(0.1, 0.02, 3)
    assert attacks.build(pgd) is pgd
    assert attacks.build({"name": "restarts", "restarts": 2, "attack": pgd}).attack is pgd


def test_unknown_names_and_hyperparameters_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attack 'deepfool'; valid attacks: .*apgd.*pgd"):
        attacks.build({"name": "deepfool"})
    with pytest.raises(ValueError, match="needs a 'name'"):
        attacks.build({"eps": 0.1})
    with pytest.raises(
        ValueError,
        match="unknown hyperparameter.*n_iter for attack 'apgd'; valid hyperparameters: eps, steps",
    ):
        attacks.build({"name": "apgd", "eps": 0.1, "n_iter": 10})
    with pytest.raises(ValueError, match="unknown hyperparameter.*k for attack 'worst_of_k'"):
        attacks.build({"name": "worst_of_k", "k": 10})
    with pytest.raises(ValueError, match="'pgd' needs step_size, steps; valid hyperparameters"):
        attacks.build({"name": "pgd", "eps": 0.1})
    with pytest.raises(ValueError, match="unknown attack 'pgd_typo'"):  # nested specs too
        attacks.build({"name": "restarts", "restarts": 2, "attack": {"name": "pgd_typo"}})
    with pytest.raises(ValueError, match="list of attack specs"):
        attacks.build({"name": "sequence", "attacks": PGD})
    assert attacks.hyperparameters("pgd")[:3] == ["eps", "step_size", "steps"]


def test_one_vocabulary_across_factories():
    """Iteration counts are ``steps``, restart counts ``restarts``, step sizes ``step_size``,
    target counts ``num_targets``; budgets come first, then step sizes, then ``steps``."""
    retired = {"n_iter", "n_restarts", "num_restarts", "n_queries", "max_passes", "num_tries"}
    retired |= {"k", "alpha", "lr", "learning_rate", "n_target_classes", "theta", "eot_iter"}
    for name, factory in ATTACKS.items():
        names = attacks.hyperparameters(name)
        assert not retired & set(names), (name, retired & set(names))
        positional = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        rank = [_rank(n) for n in positional]
        assert rank == sorted(rank), (name, positional)


def _rank(name: str) -> int:
    """Budgets, then step sizes, then ``steps``, then the rest (keyword-only in most factories)."""
    if name.startswith(("eps", "max_")):
        return 0
    if name.startswith("step_size"):
        return 1
    return 2 if name == "steps" else 3
