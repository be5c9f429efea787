"""Converts a PyTorch checkpoint into an advjax saved model.

    python -m launch.convert --torch_checkpoint=model.pt --arch=wrn-28-10 --output=DIR
    python -m launch.convert --torch_checkpoint=model.pt --arch=preact_resnet18 --output=DIR
        --mean=0.4914,0.4822,0.4465 --std=0.2471,0.2435,0.2616 [--preact_shortcut]

``--arch`` is one of ``wide_resnet`` (depth and width read from the checkpoint), ``wrn-<depth>-
<width>`` (e.g. ``wrn-28-10``, ``wrn-34-10``), ``preact_resnet18``, ``resnet18``, ``mnist_cnn4``,
``mnist_small`` or ``mnist_fast_at``; the PyTorch definitions and key names each one reads are in
``advjax/models/torch_import.py``. ``--mean``/``--std`` give the input normalisation of checkpoints
that expect standardised inputs (default: none, or the checkpoint's own ``mu``/``sigma`` buffers);
the saved model takes images in [0, 1]. ``--preact_shortcut`` is for ``preact_resnet18``
checkpoints whose projection shortcut reads ``relu(bn1(x))`` (RobustBench ``PreActBlockV2``).

Writes ``DIR/model.json`` and ``DIR/variables.msgpack`` (``advjax.models.saved_model``; loading
needs no PyTorch) and prints the model and its parameter count. Reading the ``.pt`` file needs
PyTorch (``pip install torch``).
"""

from __future__ import annotations

from advjax import host

host.configure()  # malloc and XLA:CPU settings, before JAX starts; see advjax/host.py

# ruff: noqa: E402
import hashlib
from pathlib import Path

from absl import app, flags

from advjax.models import param_count
from advjax.models.saved_model import model_spec, save_model
from advjax.models.torch_import import arch_names, convert_state_dict, load_torch_state_dict
from launch import console

_FLAGS: dict[str, flags.FlagHolder] = {}


def define_flags() -> None:
    """The command's flags, defined when it runs (``python -m launch.convert``): importing the
    module defines none, so ``--output`` cannot clash with ``launch.evaluate``'s in one process."""
    _FLAGS.update(
        torch_checkpoint=flags.DEFINE_string(
            "torch_checkpoint", None, "PyTorch checkpoint (.pt / .pth)."
        ),
        arch=flags.DEFINE_string("arch", None, f"Architecture: {', '.join(arch_names())}."),
        output=flags.DEFINE_string("output", None, "Directory of the saved model."),
        mean=flags.DEFINE_list("mean", None, "Per-channel input mean, comma-separated."),
        std=flags.DEFINE_list("std", None, "Per-channel input std, comma-separated."),
        preact_shortcut=flags.DEFINE_boolean(
            "preact_shortcut", None, "preact_resnet18: the projection shortcut reads relu(bn1(x))."
        ),
    )
    flags.mark_flags_as_required(["torch_checkpoint", "arch", "output"])


def _floats(name: str, values: list[str] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be comma-separated numbers, got {values}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.configure()
    value = {name: holder.value for name, holder in _FLAGS.items()}
    source = Path(value["torch_checkpoint"])
    kwargs = {}
    if value["preact_shortcut"] is not None:
        kwargs["preact_shortcut"] = value["preact_shortcut"]
    model, variables = convert_state_dict(
        value["arch"],
        load_torch_state_dict(source),
        mean=_floats("mean", value["mean"]),
        std=_floats("std", value["std"]),
        **kwargs,
    )
    name, model_kwargs = model_spec(model)
    provenance = {"source": source.name, "source_sha256": _sha256(source), "arch": value["arch"]}
    output = save_model(value["output"], name, model_kwargs, variables, provenance=provenance)
    described = ", ".join(f"{k}={v}" for k, v in model_kwargs.items())
    print(f"{name}({described})")
    print(f"parameters: {param_count(variables['params']):,}")
    print(f"wrote {output}")


if __name__ == "__main__":
    define_flags()
    console.run(main)
