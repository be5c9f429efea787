"""Defense objectives: values, composition, epsilon warm-up."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import attacks, defenses, losses
from advjax.models import get_model, init_variables, make_model_fn


@pytest.fixture(scope="module")
def setup():
    model = get_model("mnist_cnn4")
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    batch = {"image": x, "label": jnp.arange(4)}
    keys = jax.random.split(jax.random.key(2), 4)
    return model, variables, batch, keys


def test_natural_is_clean_cross_entropy(setup):
    model, variables, batch, keys = setup
    loss, aux = defenses.natural()(model, variables, batch, keys)
    logits = make_model_fn(model)(variables, batch["image"])
    expected = jnp.mean(losses.cross_entropy(logits, batch["label"]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert aux["batch_stats"] == {} and "clean_accuracy" in aux["metrics"]


def test_adversarial_loss_exceeds_clean_and_sums_compose(setup):
    model, variables, batch, keys = setup
    pgd = defenses.pgd_at(attacks.pgd(0.3, 0.05, 5, keep_best=False))
    clean, _ = defenses.natural()(model, variables, batch, keys)
    adv, _ = pgd(model, variables, batch, keys)
    assert float(adv) > float(clean)
    both, aux = defenses.weighted_sum((0.5, defenses.natural()), (2.0, pgd))(
        model, variables, batch, keys
    )
    # The sum gives each term its own keys (fold_in of the term index): recompute them the same way.
    adv_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
    adv_again, _ = pgd(model, variables, batch, adv_keys)
    np.testing.assert_allclose(both, 0.5 * clean + 2.0 * adv_again, rtol=1e-5)
    assert {"clean_loss", "adv_loss"} <= set(aux["metrics"])


def test_eps_warmup_ramps_the_attack_budget(setup):
    model, variables, batch, keys = setup
    cfg = ml_collections.ConfigDict(
        dict(name="fast_at", eps=0.3, step_size=0.375, norm="linf", eps_warmup_epochs=2)
    )
    defense = defenses.get_defense(cfg, steps_per_epoch=10)  # full eps from step 20 on
    model_fn = make_model_fn(model)

    @jax.jit
    def budget_used(step):
        x_adv = defense.at_step(step).attack(
            model_fn, variables, batch["image"], batch["label"], keys
        )
        return jnp.max(jnp.abs(x_adv - batch["image"]))

    used = [float(budget_used(jnp.int32(s))) for s in (0, 5, 20, 40)]
    np.testing.assert_allclose(used, [0.0, 0.075, 0.3, 0.3], atol=1e-6)
