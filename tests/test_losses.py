import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from advjax import losses

logits_strategy = hnp.arrays(
    np.float32, (5, 4), elements=st.floats(-20, 20, width=32, allow_nan=False)
)


@settings(max_examples=30, deadline=None)
@given(logits_strategy, logits_strategy)
def test_kl_directions_and_nonnegativity(a, b):
    forward = losses.kl_from_reference(a, b)  # KL(softmax(b) || softmax(a))
    reverse = losses.kl_to_reference(a, b)  # KL(softmax(a) || softmax(b))
    np.testing.assert_allclose(forward, losses.kl_divergence(b, a), rtol=1e-6)
    np.testing.assert_allclose(reverse, losses.kl_divergence(a, b), rtol=1e-6)
    assert np.all(np.asarray(forward) >= -1e-5) and np.all(np.asarray(reverse) >= -1e-5)
    np.testing.assert_allclose(losses.kl_divergence(a, a), 0.0, atol=1e-5)


def test_cross_entropy_matches_definition():
    logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    expected = -np.log(np.exp([2.0, 0.0]) / np.exp(np.array([[2, 1, 0], [0, 0, 0]])).sum(1))
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_margin_sign_matches_misclassification():
    logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    labels = jnp.array([0, 0])
    np.testing.assert_allclose(losses.margin(logits, labels), [-1.0, 5.0])


def test_dlr_and_targeted_dlr_closed_form():
    logits = jnp.array([[4.0, 3.0, 1.0, 0.0]])
    y, t = jnp.array([0]), jnp.array([2])
    np.testing.assert_allclose(losses.dlr(logits, y), [-(4.0 - 3.0) / (4.0 - 1.0)], rtol=1e-6)
    np.testing.assert_allclose(
        losses.targeted_dlr(logits, (y, t)), [-(4.0 - 1.0) / (4.0 - 0.5)], rtol=1e-6
    )
    # DLR is invariant to shifting and positive scaling of the logits.
    np.testing.assert_allclose(losses.dlr(3 * logits + 7, y), losses.dlr(logits, y), rtol=1e-5)


def test_entropy_and_boosted_ce():
    uniform = jnp.zeros((1, 4))
    np.testing.assert_allclose(losses.entropy(uniform), [np.log(4)], rtol=1e-6)
    logits = jnp.array([[1.0, 2.0, 0.0]])
    p = jax.nn.softmax(logits)[0]
    expected = -np.log(p[0]) - np.log(1 - p[1])
    np.testing.assert_allclose(
        losses.boosted_cross_entropy(logits, jnp.array([0])), [expected], rtol=1e-5
    )


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid losses: .*ce.*margin"):
        losses.get_loss("hinge")
