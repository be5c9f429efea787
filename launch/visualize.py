"""Writes a PNG grid of clean vs adversarial test images, one row per attack (SRT Figure 1).

    python -m launch.visualize --workdir=workdirs/mnist_natural \
        --attacks=rand_adv,grid_adv,grid_adv_t,grid_adv_r,flow_pgd,affine_pgd,integrated_spatial \
        --num_examples=8

Row 1 is the clean images; each further row is one attack's adversarial examples on the same
images (attack names from ``advjax.eval.presets``, resolved with the config's ``evaluate`` threat
model). Writes ``<output>/adversarial_examples.png`` and ``adversarial_examples.md``, which names
the rows and gives the label and the model's prediction for every image.
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from advjax.analysis import image_grid, write_png
from advjax.eval import presets
from advjax.experiment import load_config, load_split, restore_variables, threat_settings
from advjax.models import make_model_fn
from launch import console

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).")
_ATTACKS = flags.DEFINE_string(
    "attacks",
    "rand_adv,grid_adv,flow_pgd,affine_pgd,integrated_spatial",
    "Comma-separated attack names (presets).",
)
_NUM_EXAMPLES = flags.DEFINE_integer(
    "num_examples", 8, "Images per row (the first test images).", lower_bound=1
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "best, latest or a step (default: config).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override the config's data.data_dir.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (default: --workdir).")
_SCALE = flags.DEFINE_integer("scale", 3, "Pixel repetition factor of the PNG.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the attacks' randomness.")


def adversarial_rows(model_fn, variables, x, y, entries, key):
    """``(rows, predictions)``: clean images first, then each entry's adversarial examples."""
    keys = jax.random.split(key, x.shape[0])
    rows, predictions = [x], [jnp.argmax(model_fn(variables, x), -1)]
    for entry in entries:
        attack = jax.jit(entry.attack, static_argnums=0)
        x_adv = attack(model_fn, variables, x, y, keys)
        rows.append(x_adv)
        predictions.append(jnp.argmax(model_fn(variables, x_adv), -1))
    return [np.asarray(r) for r in rows], [np.asarray(p) for p in predictions]


def caption(labels, entries, predictions, png_name: str) -> str:
    lines = [
        f"![clean vs adversarial examples]({png_name})",
        "",
        "| row | attack | protocol | predictions (label -> prediction) |",
        "| --- | --- | --- | --- |",
    ]
    names = [("Clean", "no attack")] + [
        (e.label, presets.protocol_summary(e.protocol)) for e in entries
    ]
    for i, ((label, protocol), pred) in enumerate(zip(names, predictions, strict=True)):
        cells = " ".join(
            f"{int(t)}->{int(p)}" + ("" if int(t) == int(p) else "*")
            for t, p in zip(labels, pred, strict=True)
        )
        lines.append(f"| {i + 1} | {label} | {protocol} | {cells} |")
    lines += ["", "`*`: misclassified."]
    return "\n".join(lines) + "\n"


def visualize(
    workdir,
    attack_names,
    num_examples=8,
    checkpoint=None,
    data_dir=None,
    output=None,
    scale=3,
    seed=0,
) -> str:
    config = load_config(workdir)
    test = load_split(config, "test", data_dir)
    test = test.take(np.arange(min(num_examples, len(test))))
    model, variables, _ = restore_variables(
        config, workdir, checkpoint or config.evaluate.get("checkpoint", "best"), test.image_shape
    )
    settings = threat_settings(config.evaluate, test.num_classes)
    entries = [presets.resolve(name, settings) for name in attack_names if name != "clean"]
    x = jnp.asarray(test.images, jnp.float32) / 255.0
    y = jnp.asarray(test.labels)
    rows, predictions = adversarial_rows(
        make_model_fn(model), variables, x, y, entries, jax.random.key(seed)
    )
    out = output or workdir
    os.makedirs(out, exist_ok=True)
    png = os.path.join(out, "adversarial_examples.png")
    write_png(png, image_grid(rows, pad=2, scale=scale))
    with open(os.path.join(out, "adversarial_examples.md"), "w") as f:
        f.write(caption(np.asarray(y), entries, predictions, os.path.basename(png)))
    return png


def main(argv):
    console.configure()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    names = [a.strip() for a in _ATTACKS.value.split(",") if a.strip()]
    png = visualize(
        _WORKDIR.value,
        names,
        _NUM_EXAMPLES.value,
        _CHECKPOINT.value,
        _DATA_DIR.value,
        _OUTPUT.value,
        _SCALE.value,
        _SEED.value,
    )
    print(f"wrote {png}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    console.run(main)
