"""Peer parity with torchattacks on the same weights and the same MNIST test points.

A 4-conv MNIST CNN is trained here for 300 steps (natural, about 98% clean) and ported to PyTorch
(``benchmarks/torch_port.py``); PGD-40 and APGD-CE (100 iterations) run on both sides at Linf
eps 0.1, where some but not all points stay robust. advjax's robust accuracy must agree with
torchattacks' and never be weaker by more than the tolerance. AutoAttack standard (torchattacks'
APGD, APGD-T and FAB iterations set to 100, as in the reference) takes about 15 CPU-minutes per
side, so it runs only with ``ADVJAX_SLOW_TESTS=1``.

The issue's figure (within 0.5 points on 1,000 points) is measured on an advjax fast-AT model by
``benchmarks/parity_torchattacks.py`` and recorded in ``results/parity_torchattacks.md``; here,
on 200 points, one point is 0.5 percentage points, so the tolerance is two points (1.0 pp):
random starts alone move robust accuracy by that much between two runs of the same attack.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")

from advjax import losses  # noqa: E402
from advjax.data import Dataset, load_dataset  # noqa: E402
from advjax.eval import ThreatSettings, evaluate_suite  # noqa: E402
from advjax.models import get_model, init_variables, make_model_fn  # noqa: E402

PORT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_port.py"
EPS, STEP, N_POINTS, TOLERANCE_POINTS = 0.1, 0.01, 200, 2
MODEL = "mnist_fast_at"  # the smallest zoo net: the comparison, not the model, is under test


def _port_module():
    spec = importlib.util.spec_from_file_location("advjax_bench_torch_port", PORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trained(mnist_dir):
    train = load_dataset("mnist", "train", mnist_dir)
    test = load_dataset("mnist", "test", mnist_dir)
    model = get_model(MODEL)
    model_fn = make_model_fn(model)
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    tx = optax.adam(1e-3)
    opt_state = tx.init(variables)

    @jax.jit
    def step(variables, opt_state, x, y):
        def loss(v):
            return jnp.mean(losses.cross_entropy(model_fn(v, x), y))

        grads = jax.grad(loss)(variables)
        updates, opt_state = tx.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state

    rng = np.random.default_rng(0)
    for _ in range(300):
        idx = rng.integers(0, len(train), 128)
        x = jnp.asarray(train.images[idx], jnp.float32) / 255.0
        variables, opt_state = step(variables, opt_state, x, jnp.asarray(train.labels[idx]))
    points = Dataset(test.images[:N_POINTS], test.labels[:N_POINTS], 10, "mnist")
    return model_fn, variables, points


def _torch_robust(twin, attack, x, y):
    port = _port_module()
    xb, yb = port.nhwc_to_nchw(x), torch.from_numpy(y.astype(np.int64))
    adv = attack(xb, yb)
    assert float((adv - xb).detach().abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        return ((twin(xb).argmax(1) == yb) & (twin(adv).argmax(1) == yb)).numpy()


def _compare(trained, names):
    model_fn, variables, points = trained
    torch.manual_seed(0)
    torch.set_num_threads(1)
    twin = _port_module().port(MODEL, jax.device_get(variables))
    x = points.images.astype(np.float32) / 255.0
    y = points.labels
    settings = ThreatSettings(norm="linf", eps=EPS, eps_text=repr(EPS), step_size=STEP)
    ours = evaluate_suite(
        model_fn,
        variables,
        points,
        names,
        settings=settings,
        batch_size=N_POINTS,
        key=jax.random.key(0),
        progress=False,
    )
    peers = {
        "pgd40": lambda: torchattacks.PGD(twin, eps=EPS, alpha=STEP, steps=40, random_start=True),
        "apgd_ce": lambda: torchattacks.APGD(twin, eps=EPS, steps=100, loss="ce", seed=0),
        "aa_standard": lambda: _torch_autoattack(twin),
    }
    clean = float(ours.correct["clean"].mean())
    assert clean > 0.9
    report: dict[str, tuple[int, int]] = {}
    for name in names:
        peer = int(_torch_robust(twin, peers[name](), x, y).sum())
        report[name] = (int(ours.correct[name].sum()), peer)  # robust points out of N_POINTS
    for name, (mine, peer) in report.items():
        assert abs(mine - peer) <= TOLERANCE_POINTS, (name, report)  # so never weaker by more
    return clean, report


def _torch_autoattack(twin):
    aa = torchattacks.AutoAttack(twin, norm="Linf", eps=EPS, version="standard", seed=0)
    for part in aa._autoattack.attacks:
        if isinstance(part, torchattacks.APGD | torchattacks.APGDT | torchattacks.FAB):
            part.steps = 100
    return aa


def test_pgd40_and_apgd_ce_agree_with_torchattacks(trained):
    clean, report = _compare(trained, ["pgd40", "apgd_ce"])
    # Not a vacuous comparison: the attacks break some points but not all.
    assert 0.1 * N_POINTS < report["pgd40"][0] < (clean - 0.1) * N_POINTS, report
    assert report["apgd_ce"][0] <= report["pgd40"][0] + TOLERANCE_POINTS, report


@pytest.mark.skipif(
    not os.environ.get("ADVJAX_SLOW_TESTS"), reason="about 30 CPU-minutes; ADVJAX_SLOW_TESTS=1"
)
def test_autoattack_standard_agrees_with_torchattacks(trained):
    _, report = _compare(trained, ["apgd_ce", "aa_standard"])
    assert report["aa_standard"][0] <= report["apgd_ce"][0], report
