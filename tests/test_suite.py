"""The evaluation suite: per-example outcomes, worst case, resumption, bounds, cascade."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import linear_model_fn, linear_toy_problem

from advjax import attacks
from advjax.attacks.base import Attack
from advjax.eval import presets
from advjax.eval.presets import ThreatSettings, parse_eps
from advjax.eval.suite import evaluate_suite


@pytest.fixture(scope="module")
def problem():
    return linear_toy_problem(0, 37, (40, 215), 0.3, 5)


SETTINGS = ThreatSettings(norm="linf", eps=0.05, eps_text="0.05", step_size=0.01)


def run(problem, suite, **kwargs):
    dataset, variables = problem
    kwargs.setdefault("settings", SETTINGS)
    kwargs.setdefault("progress", False)
    return evaluate_suite(linear_model_fn, variables, dataset, suite, **kwargs)


def test_columns_worst_case_and_clean_consistency(problem):
    dataset, variables = problem
    result = run(problem, ["pgd10", "fgsm"], batch_size=16, key=jax.random.key(3))
    assert [e.name for e in result.entries] == ["clean", "pgd10", "fgsm"]
    assert result.complete and result.num_examples == 37
    x = jnp.asarray(dataset.images, jnp.float32) / 255.0
    clean = np.asarray(jnp.argmax(linear_model_fn(variables, x), -1) == dataset.labels)
    np.testing.assert_array_equal(result.correct["clean"], clean)
    for name in ("pgd10", "fgsm"):  # robust implies clean-correct
        assert not np.any(result.correct[name] & ~clean)
    np.testing.assert_array_equal(
        result.worst_case, result.correct["pgd10"] & result.correct["fgsm"]
    )
    acc = result.accuracy()
    assert acc["worst_case"] <= min(acc["pgd10"], acc["fgsm"]) <= acc["clean"]
    assert acc["pgd10"] < acc["clean"]  # the attack does something at this eps
    assert result.violations == {"clean": 0, "pgd10": 0, "fgsm": 0}

    # FGSM on a linear model is the exact worst case of the margin's first-order term only when
    # one wrong class dominates; PGD is never weaker here than a single full step of its own.
    pgd_x = attacks.pgd(0.05, 0.01, 10)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(
        presets_key(jax.random.key(3), "pgd10"), jnp.arange(37)
    )
    x_adv = pgd_x(linear_model_fn, variables, x, jnp.asarray(dataset.labels), keys)
    direct = np.asarray(jnp.argmax(linear_model_fn(variables, x_adv), -1) == dataset.labels)
    np.testing.assert_array_equal(result.correct["pgd10"], direct & clean)


def presets_key(key, name):
    from advjax.eval.suite import _entry_key

    return _entry_key(key, name)


def test_results_do_not_depend_on_batch_size_or_order(problem):
    a = run(problem, ["pgd10", "fgsm"], batch_size=8, key=jax.random.key(1))
    b = run(problem, ["fgsm", "pgd10"], batch_size=32, key=jax.random.key(1))
    for name in ("clean", "pgd10", "fgsm"):
        np.testing.assert_array_equal(a.correct[name], b.correct[name])


def test_interrupted_evaluation_resumes_without_redoing_batches(problem, tmp_path, monkeypatch):
    state = str(tmp_path / "suite_state.npz")
    full = run(problem, ["pgd10"], batch_size=8, key=jax.random.key(2))
    part = run(
        problem,
        ["pgd10"],
        batch_size=8,
        key=jax.random.key(2),
        state_path=state,
        stop_after_batches=2,
    )
    assert not part.complete and part.num_examples == 16
    np.testing.assert_array_equal(part.evaluated, np.arange(37) < 16)

    calls = []
    import advjax.eval.suite as suite_module

    original = suite_module.shard_batch
    monkeypatch.setattr(
        suite_module, "shard_batch", lambda batch, mesh: calls.append(1) or original(batch, mesh)
    )
    resumed = run(problem, ["pgd10"], batch_size=8, key=jax.random.key(2), state_path=state)
    assert len(calls) == 3  # 5 batches in all, 2 were done
    assert resumed.complete
    for name in ("clean", "pgd10"):
        np.testing.assert_array_equal(resumed.correct[name], full.correct[name])

    with pytest.raises(ValueError, match="different evaluation"):
        run(problem, ["pgd20"], batch_size=8, key=jax.random.key(2), state_path=state)


@dataclasses.dataclass(frozen=True)
class Overshoot(Attack):
    """A broken attack: steps 3 eps along the gradient sign, ignoring the ball."""

    eps: float

    def run(self, model_fn, variables, x, y, key):
        inner = attacks.fgsm(3 * self.eps)
        return inner.run(model_fn, variables, x, y, key)


def test_out_of_ball_points_count_as_failures_and_are_reported(problem):
    entry = presets.Entry("overshoot", "Overshoot", Overshoot(0.05), {"norm": "linf", "eps": 0.05})
    result = run(problem, [entry], batch_size=16)
    clean = result.correct["clean"]
    np.testing.assert_array_equal(result.correct["overshoot"], clean)
    assert result.violations["overshoot"] > 0


def test_cascade_keeps_first_success_and_matches_union(problem):
    dataset, variables = problem
    x = jnp.asarray(dataset.images, jnp.float32) / 255.0
    y = jnp.asarray(dataset.labels)
    weak, strong = attacks.fgsm(0.01), attacks.pgd(0.05, 0.01, 10)
    key = jax.random.key(0)
    uncompacted = dataclasses.replace(attacks.cascade(weak, strong), buckets=(1.0,))
    combined = uncompacted.run(linear_model_fn, variables, x, y, key)
    k_weak, k_strong = attacks.split_keys(key, 2)
    r_weak = weak.run(linear_model_fn, variables, x, y, k_weak)
    r_strong = strong.run(linear_model_fn, variables, x, y, k_strong)
    clean_wrong = jnp.argmax(linear_model_fn(variables, x), -1) != y
    np.testing.assert_array_equal(combined.success, clean_wrong | r_weak.success | r_strong.success)
    first = ~clean_wrong & r_weak.success
    np.testing.assert_allclose(combined.x_adv[first], r_weak.x_adv[first])
    # Points no attack broke keep the clean image.
    untouched = ~combined.success
    np.testing.assert_allclose(combined.x_adv[untouched], x[untouched])


def test_cascade_compaction_changes_nothing_with_per_example_keys(problem):
    """Later stages run on a compacted bucket of the robust points; with per-example keys every
    point's random start is its own, so the outcome equals the uncompacted cascade's."""
    dataset, variables = problem
    x = jnp.asarray(dataset.images, jnp.float32) / 255.0
    y = jnp.asarray(dataset.labels)
    stages = (attacks.fgsm(0.02), attacks.pgd(0.04, 0.01, 2), attacks.pgd(0.05, 0.02, 3))
    keys = jax.random.split(jax.random.key(3), x.shape[0])
    assert attacks.cascade(*stages).buckets != (1.0,)  # compacted by default
    compacted = dataclasses.replace(attacks.cascade(*stages), buckets=(1.0, 0.25))
    full = dataclasses.replace(compacted, buckets=(1.0,))
    in_passes = dataclasses.replace(compacted, pass_rows=5)  # several passes of <= 5 rows
    a = jax.jit(compacted.run, static_argnums=0)(linear_model_fn, variables, x, y, keys)
    b = jax.jit(full.run, static_argnums=0)(linear_model_fn, variables, x, y, keys)
    c = jax.jit(in_passes.run, static_argnums=0)(linear_model_fn, variables, x, y, keys)
    for other in (b, c):
        np.testing.assert_array_equal(a.success, other.success)
        np.testing.assert_allclose(a.x_adv, other.x_adv, atol=1e-6)
    assert 0 < int(a.success.sum()) < x.shape[0]
    assert x.shape[0] > 10  # so that pass_rows=5 means several passes
    with pytest.raises(ValueError, match="pass_rows"):
        dataclasses.replace(compacted, pass_rows=0)


def test_names_and_eps_are_checked():
    with pytest.raises(ValueError, match="valid names: .*pgd<N>"):
        presets.resolve("pgd_typo", SETTINGS)
    assert parse_eps("8/255") == (8 / 255, "8/255")
    assert parse_eps(0.3) == (0.3, "0.3")
    with pytest.raises(ValueError, match=">= 0"):
        parse_eps("-1/255")
    with pytest.raises(ValueError, match="fraction"):
        parse_eps("eight")
    entry = presets.resolve("pgd40", ThreatSettings(eps=0.3, eps_text="0.3"))
    assert entry.label == "PGD-40" and entry.protocol["step_size"] == pytest.approx(0.3 / 16)


def quantised_model_fn(variables, x):
    """Input quantisation (a classic masked defense): zero gradients almost everywhere."""
    return linear_model_fn(variables, jnp.round(x * 4) / 4)


def softmax_model_fn(variables, x):
    return jax.nn.softmax(linear_model_fn(variables, x))


def noisy_model_fn(variables, x):
    from advjax.attacks.base import MODEL_KEY

    noise = 0.1 * jax.random.normal(variables[MODEL_KEY], x.shape)
    return linear_model_fn(variables, x + noise)


def check_points(problem, n=16):
    dataset, variables = problem
    x = jnp.asarray(dataset.images[:n], jnp.float32) / 255.0
    return x, jnp.asarray(dataset.labels[:n]), variables


def test_masking_checks_stay_quiet_on_an_honest_linear_model(problem):
    from advjax.eval import checks

    x, y, variables = check_points(problem)
    result = run(problem, ["pgd10"], batch_size=16)
    m, warnings = checks.run_checks(
        linear_model_fn, variables, x, y, jax.random.key(0), SETTINGS, result
    )
    assert warnings == [], warnings
    assert m["zero_gradient_fraction"] == 0 and m["output_change_between_passes"] == 0
    assert m["unbounded_pgd100_accuracy"] == 0
    curve = list(m["pgd20_accuracy_vs_eps"].values())
    assert curve == sorted(curve, reverse=True)


def test_masking_checks_flag_quantised_softmax_and_random_models(problem):
    from advjax.attacks.base import with_model_key
    from advjax.eval import checks

    x, y, variables = check_points(problem)
    m, warnings = checks.run_checks(
        quantised_model_fn, variables, x, y, jax.random.key(0), SETTINGS
    )
    assert m["zero_gradient_fraction"] == 1.0
    assert any("zero input gradient" in w for w in warnings)
    assert any("unbounded budget" in w for w in warnings)  # PGD cannot move: accuracy stays

    assert checks.probability_output_fraction(softmax_model_fn(variables, x)) == 1.0
    assert checks.probability_output_fraction(linear_model_fn(variables, x)) == 0.0

    noisy = with_model_key(variables, jax.random.key(5))
    assert checks.output_randomness(noisy_model_fn, noisy, x, jax.random.key(1)) > 0
    assert checks.output_randomness(linear_model_fn, variables, x, jax.random.key(1)) == 0


def test_blackbox_beating_whitebox_is_flagged():
    from advjax.eval import checks
    from advjax.eval.suite import SuiteResult

    entries = [
        presets.Entry("clean", "Clean", None, {}, kind="clean"),
        presets.Entry("pgd20", "PGD-20", None, {}),
        presets.Entry("square", "Square", None, {}, kind="black-box"),
    ]
    correct = {
        "clean": np.array([1, 1, 1, 0], bool),
        "pgd20": np.array([0, 1, 1, 0], bool),
        "square": np.array([0, 0, 1, 0], bool),
    }
    result = SuiteResult(entries, correct, {}, np.ones(4, bool))
    assert checks.blackbox_only_breaks(result) == {"square": 1}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_preset_resolves_with_its_protocol(norm):
    settings = ThreatSettings(norm=norm, eps=0.5, eps_text="1/2")
    for name in presets.PRESETS:
        linf_only = name in ("rays", "spsa") and norm != "linf"
        if (
            linf_only
            or (name in ("cw_l2", "ddn") and norm != "l2")
            or (name == "hop_skip_jump" and norm == "l1")
        ):
            with pytest.raises(ValueError, match="norm"):
                presets.resolve(name, settings)
            continue
        entry = presets.resolve(name, settings)
        assert entry.name == name and entry.label
        if entry.attack is not None and entry.bounded:
            assert entry.protocol["norm"] == norm and entry.protocol["eps_text"] == "1/2"
    assert presets.resolve("pgd20", settings).attack.unroll is True
    assert presets.resolve("pgd1000", settings).attack.unroll is False  # a scan, not 1000 copies
    components = presets.resolve("aa_standard", settings).protocol["components"]
    assert list(components) == ["apgd_ce", "apgd_t", "fab_t", "square"]  # = preset names
    assert set(components) <= set(presets.PRESETS)
    assert components["apgd_ce"]["steps"] == 100 and components["square"]["steps"] == 5000
    assert components["square"]["rescale_schedule"] is False  # as the reference's Square
    assert list(presets.resolve("aa_rand", settings).protocol["components"]) == [
        "apgd_ce",
        "apgd_dlr",
    ]


def test_presets_are_specs_over_the_registry_filled_from_the_settings():
    settings = ThreatSettings(norm="l2", eps=0.5, eps_text="1/2", restarts=3, num_classes=5)
    for name, preset in presets.PRESETS.items():
        if preset.attack is not None:  # every spec names registry attacks, and so do its parts
            spec = presets.fill(preset.attack, settings)
            assert spec["name"] in attacks.ATTACKS, name
    entry = presets.resolve("pgd20", settings)
    pgd = attacks.pgd(0.5, None, 20, norm="l2")
    assert entry.attack == attacks.restarts(pgd, 3)
    assert entry.protocol["restarts"] == 3 and entry.protocol["steps"] == 20
    assert entry.protocol["spec"]["attack"]["eps"] == 0.5
    apgd_t = attacks.apgd_t(0.5, norm="l2", num_targets=4)  # at most num_classes - 1 targets
    assert presets.resolve("apgd_t", settings).attack == apgd_t
    assert presets.resolve("rand_adv_t", settings).protocol["max_angle"] == 0.0
    with pytest.raises(ValueError, match="unknown placeholder '\\$epsilon'"):
        presets.fill({"eps": "$epsilon"}, settings)


def test_spec_entries_get_the_suite_threat_model_where_they_name_none():
    settings = ThreatSettings(norm="l2", eps=0.5, eps_text="1/2")
    spec = {"name": "restarts", "restarts": 2, "attack": {"name": "apgd", "steps": 10}}
    entry = presets.resolve({**spec, "label": "APGD-10x2"}, settings)
    assert entry.name == entry.label == "APGD-10x2"
    assert entry.attack == attacks.restarts(attacks.apgd(0.5, 10, norm="l2"), 2)
    assert (entry.protocol["norm"], entry.protocol["eps_text"]) == ("l2", "1/2")
    own = presets.resolve({"name": "fgsm", "eps": 0.25, "norm": "linf"}, settings)
    assert own.attack == attacks.fgsm(0.25) and own.protocol["eps"] == 0.25
    spatial = presets.resolve({"name": "worst_of_k", "steps": 2, "bounded": False}, settings)
    assert not spatial.bounded and spatial.attack == attacks.worst_of_k(steps=2)
    with pytest.raises(ValueError, match="unknown hyperparameter.*n_iter for attack 'apgd'"):
        presets.resolve({"name": "apgd", "n_iter": 10}, settings)
