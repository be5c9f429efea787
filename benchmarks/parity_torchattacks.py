"""Peer parity: advjax vs torchattacks on the same MNIST model weights and test points.

    python benchmarks/parity_torchattacks.py --workdir=workdirs/mnist_fast_at \\
        --num_examples=1000 --output=results/parity_torchattacks

Restores an advjax MNIST checkpoint (``mnist_small`` or ``mnist_cnn4``), ports the weights to
PyTorch (``benchmarks/torch_port.py``, same logits to float precision), and measures robust
accuracy (correct on the clean point and at the attack's output) on the first N test images under

* PGD-40 (Linf, eps 0.3, step 0.01, uniform random start): advjax ``pgd40`` vs torchattacks ``PGD``;
* APGD-CE (100 iterations, 1 restart): advjax ``apgd_ce`` vs torchattacks ``APGD(steps=100)``;
* AutoAttack standard: advjax ``aa_standard`` vs torchattacks ``AutoAttack`` with the iterations of
  its APGD, APGD-T and FAB set to 100 (torchattacks defaults to 10; the reference uses 100).

Writes ``<output>.md`` and ``<output>.json``. The issue's target: every advjax number within 0.5
points of the peer's, and never weaker (higher) by more than that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from advjax import host  # noqa: E402

host.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ATTACKS = ("pgd40", "apgd_ce", "aa_standard")
LABELS = {"pgd40": "PGD-40", "apgd_ce": "APGD-CE", "aa_standard": "AutoAttack (standard)"}


def torch_attack(name: str, model, eps: float, step: float, seed: int):
    import torchattacks

    if name == "pgd40":
        return torchattacks.PGD(model, eps=eps, alpha=step, steps=40, random_start=True)
    if name == "apgd_ce":
        return torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed
        )
    if name == "aa_standard":
        attack = torchattacks.AutoAttack(
            model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed
        )
        for part in attack._autoattack.attacks:
            if isinstance(part, torchattacks.APGD | torchattacks.APGDT | torchattacks.FAB):
                part.steps = 100  # the reference's n_iter (torchattacks issue #196)
        return attack
    raise ValueError(name)


def load_model(workdir: str, checkpoint: str, num_examples: int, data_dir):
    """The workdir's config, ``model_fn``, variables and checkpoint info, and the first
    ``num_examples`` test points; imports no PyTorch."""
    from advjax.experiment import load_config, load_split, restore_variables
    from advjax.models import make_model_fn

    config = load_config(workdir)
    test = load_split(config, "test", data_dir)
    test = test.take(np.arange(min(num_examples, len(test))))
    model, variables, ckpt = restore_variables(config, workdir, checkpoint, test.image_shape)
    return config, make_model_fn(model), variables, ckpt, test


def load_model_and_twin(workdir: str, checkpoint: str, num_examples: int, data_dir):
    """``load_model``'s results and the model's PyTorch twin (same weights, ``torch_port``):
    config, model_fn, variables, checkpoint info, twin, test points."""
    import torch_port

    config, model_fn, variables, ckpt, test = load_model(
        workdir, checkpoint, num_examples, data_dir
    )
    twin = torch_port.port(config.model.name, jax.device_get(variables))
    return config, model_fn, variables, ckpt, twin, test


def torch_robust(model, attack, x: np.ndarray, y: np.ndarray, batch: int) -> np.ndarray:
    import torch
    from torch_port import nhwc_to_nchw

    out = []
    for i in range(0, len(y), batch):
        xb, yb = nhwc_to_nchw(x[i : i + batch]), torch.from_numpy(y[i : i + batch]).long()
        with torch.no_grad():
            clean = model(xb).argmax(1) == yb
        adv = attack(xb, yb)
        if float((adv - xb).detach().abs().max()) > attack.eps + 1e-5:
            raise RuntimeError("torchattacks returned a point outside the eps ball")
        with torch.no_grad():
            out.append((clean & (model(adv).argmax(1) == yb)).numpy())
    return np.concatenate(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="advjax training workdir (MNIST)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--num_examples", type=int, default=1000)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--step_size", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write <output>.md and <output>.json")
    args = p.parse_args(argv)

    import torch
    import torch_port

    from advjax.eval import ThreatSettings, evaluate_suite

    torch.manual_seed(args.seed)
    config, model_fn, variables, ckpt, twin, test = load_model_and_twin(
        args.workdir, args.checkpoint, args.num_examples, args.data_dir
    )
    x = test.images.astype(np.float32) / 255.0
    y = test.labels.astype(np.int64)
    logits_gap = float(
        np.abs(
            np.asarray(model_fn(variables, jnp.asarray(x[:64])))
            - twin(torch_port.nhwc_to_nchw(x[:64])).numpy()
        ).max()
    )
    names = [a for a in args.attacks.split(",") if a]
    settings = ThreatSettings(
        norm="linf", eps=args.eps, eps_text=repr(args.eps), step_size=args.step_size
    )

    rows = {}
    start = time.time()
    ours = evaluate_suite(
        model_fn,
        variables,
        test,
        names,
        settings=settings,
        batch_size=args.batch,
        key=jax.random.key(args.seed),
        progress=True,
    )
    advjax_time = time.time() - start
    rows["clean"] = {"advjax": float(ours.correct["clean"].mean())}
    for name in names:
        t0 = time.time()
        peer = torch_robust(
            twin, torch_attack(name, twin, args.eps, args.step_size, args.seed), x, y, args.batch
        )
        rows[name] = {
            "advjax": float(ours.correct[name].mean()),
            "torchattacks": float(peer.mean()),
            "torchattacks_time_s": time.time() - t0,
            "advjax_only_breaks": int(np.sum(peer & ~ours.correct[name])),
            "torchattacks_only_breaks": int(np.sum(ours.correct[name] & ~peer)),
        }
        print(name, rows[name], flush=True)
    result = {
        "workdir": args.workdir,
        "model": config.model.name,
        "defense": config.defense.name,
        "checkpoint": ckpt,
        "num_examples": len(test),
        "eps": args.eps,
        "step_size": args.step_size,
        "seed": args.seed,
        "max_logit_gap_jax_vs_torch": logits_gap,
        "advjax_suite_time_s": advjax_time,
        "rows": rows,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "torchattacks": __import__("torchattacks").__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    table = markdown(result, names)
    print(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2))
        Path(f"{args.output}.md").write_text(table)
    return result


def markdown(result: dict, names: list[str]) -> str:
    lines = [
        "| attack | advjax robust acc. | torchattacks robust acc. | advjax - peer (points) | "
        "broken only by advjax | broken only by peer |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        r = result["rows"][name]
        diff = 100 * (r["advjax"] - r["torchattacks"])
        lines.append(
            f"| {LABELS.get(name, name)} | {100 * r['advjax']:.2f}% | "
            f"{100 * r['torchattacks']:.2f}% | {diff:+.2f} | {r['advjax_only_breaks']} | "
            f"{r['torchattacks_only_breaks']} |"
        )
    clean = 100 * result["rows"]["clean"]["advjax"]
    lines.append("")
    lines.append(
        f"{result['num_examples']} MNIST test images, `{result['model']}` "
        f"({result['defense']}, checkpoint {result['checkpoint']}), clean accuracy {clean:.2f}%, "
        f"Linf eps {result['eps']}; max |logit difference| JAX vs PyTorch "
        f"{result['max_logit_gap_jax_vs_torch']:.2e}."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
