"""Every ``configs/mnist.py`` variant keeps its loss and gradient norm across refactors.

The values in ``tests/data/defense_pins.json`` were computed by the defenses as they stood before
the core was redesigned around terms (issue 19): one train step of each variant's own config
(model, defense, optimiser) on a fixed batch of 16 synthetic images (half of them unlabeled for the
semi-supervised variants), from a fixed initialisation and key, at a step in the middle of the
epsilon warm-up and at one after it. On the CPU model that computed them (``_machine``) they must
match to 1e-6; elsewhere to 1e-4, since XLA's CPU code generation differs between processors
(float summation order, which a one-step FGSM adversary's sign can amplify). Regenerate only on
purpose: ``ADVJAX_REGENERATE_PINS=1 python -m pytest tests/test_defense_pins.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from advjax.data import load_dataset
from advjax.train import make_mesh, replicate, shard_batch
from configs import mnist
from tests.pins import build_step

PINS = Path(__file__).parent / "data" / "defense_pins.json"
STEPS_PER_EPOCH = 10  # so that 3 warm-up epochs are 30 steps and ATLAS's 15 are 150
STEPS = (20, 100_000)  # mid warm-up, and after it
REGENERATE = bool(os.environ.get("ADVJAX_REGENERATE_PINS"))
PINNED = tuple(json.loads(PINS.read_text())["variants"]) if PINS.exists() else ()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _batch():
    ds = load_dataset("synthetic", "train", num_examples=16)
    images = ds.images.astype(np.float32) / np.float32(255.0)
    labeled = np.arange(16) % 2 == 0
    return {
        "image": images[None],
        "label": ds.labels[None].astype(np.int32),
        "labeled": labeled[None],
    }


def _measure(variant: str) -> dict[str, float]:
    config = mnist.get_config(variant)
    mesh = make_mesh(jax.devices()[:1])
    state, step_fn = build_step(config, mesh, STEPS_PER_EPOCH)
    state = jax.device_get(state)  # host copies: the step donates its input
    batch = _batch()
    if config.defense.name not in ("rt", "srt", "fast_srt"):
        batch.pop("labeled")
    batch = shard_batch(batch, mesh)
    out = {}
    for step in STEPS:
        s = replicate(state.replace(step=np.asarray(step, np.int32)), mesh)
        _, metrics = step_fn(s, batch)
        out[f"loss@{step}"] = float(metrics["loss"])
        out[f"grad_norm@{step}"] = float(metrics["grad_norm"])
    return out


@pytest.fixture(scope="module")
def pins():
    if REGENERATE:
        return {"_machine": _cpu_model(), "variants": {}}
    return json.loads(PINS.read_text())


_measured: dict[str, dict[str, float]] = {}


@pytest.mark.parametrize("variant", PINNED if not REGENERATE else mnist.VARIANTS)
def test_variant_matches_its_pinned_loss_and_gradient(variant, pins):
    measured = _measure(variant)
    _measured[variant] = measured
    if REGENERATE:
        PINS.parent.mkdir(exist_ok=True)
        existing = json.loads(PINS.read_text()) if PINS.exists() else pins
        existing["_machine"] = _cpu_model()
        existing["variants"][variant] = measured
        PINS.write_text(json.dumps(existing, indent=1, sort_keys=True) + "\n")
        return
    assert variant in mnist.VARIANTS, f"pinned variant {variant} is gone from configs/mnist.py"
    rtol = 1e-6 if pins["_machine"] == _cpu_model() else 1e-4
    for name, value in pins["variants"][variant].items():
        np.testing.assert_allclose(measured[name], value, rtol=rtol, err_msg=f"{variant} {name}")
