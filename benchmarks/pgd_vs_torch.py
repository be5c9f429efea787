"""Times Linf PGD (eps 0.3, step 0.01, 20 steps) on the 4-conv MNIST CNN against eager PyTorch.

advjax variants and the eager PyTorch loop (``benchmarks/torch_port.py``) run in one process on the
same weights, images, batch and CPU threads; each timing is the median of ``--repeats`` calls after
compilation and a warm-up call (``block_until_ready``), and the table gives advjax / PyTorch.

    python benchmarks/pgd_vs_torch.py                          # default variants, all CPUs
    python benchmarks/pgd_vs_torch.py --malloc tuned           # glibc malloc kept from unmapping
    python benchmarks/pgd_vs_torch.py --threads 1 --variants scan,unrolled,torch

Variants (``--variants``, comma-separated):

* ``scan``: ``attacks.pgd(..., unroll=1)``: the steps in an XLA while loop.
* ``scan_u5``: ``unroll=5`` (still a while loop, of 4 trips).
* ``unrolled``: ``unroll=True``: no loop, 20 copies of the step.
* ``scan_canon`` / ``unrolled_canon``: the same model with a custom-VJP convolution whose input
  gradient is a conv in canonical NHWC/HWIO form (see ``canonical_conv``).
* ``scan_canon_rpool`` / ``unrolled_rpool``: also max-pooling written as reshape + max (same
  forward; the gradient avoids XLA's select-and-scatter expansion).
* ``torch``: eager PyTorch loop, weights frozen (input gradient only); ``torch_paramgrad``: the
  same with ``requires_grad=True`` weights, as torchattacks leaves them.

Why the variants (details and numbers in results/benchmark_pgd.md):

* XLA:CPU rewrites convolutions into the canonical form its fast paths need (NHWC input, HWIO
  kernel: YNNPACK fusion or Eigen) only in the entry computation
  (``xla/service/cpu/conv_canonicalization.cc``). The input gradient of a conv that JAX emits has
  kernel dims ``01oi``, so inside a while-loop body it stays on the naive emitted loop nest
  (~0.6 s per call for conv2 at batch 128). Unrolling, or a canonical-form VJP, avoids that.
* ``nn.max_pool``'s gradient (select-and-scatter) is expanded by XLA:CPU into full-size s32 iota
  index arrays, a variadic reduce-window and a scatter; unrolled, those iotas are not shared and
  the temp buffer grows by ~55 MiB per step (1.1 GiB for 20 steps). Reshape + max avoids it.
* At batch 128 YNNPACK's conv2 forward allocates an 81 MiB im2col buffer per call, above glibc's
  32 MiB mmap ceiling, so every call mmaps, page-faults and munmaps it (as it does the unrolled
  program's temp buffer). ``--malloc tuned`` (``mallopt``: one arena, no mmap chunks, no trimming)
  or ``--xla_flags=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``
  (convolutions on Eigen, no im2col) removes those page faults; the table counts them per call.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_VARIANTS = "unrolled,scan,scan_canon_rpool,torch"
ALL_VARIANTS = (
    "scan",
    "scan_u5",
    "unrolled",
    "scan_canon",
    "unrolled_canon",
    "scan_canon_rpool",
    "unrolled_rpool",
    "torch",
    "torch_paramgrad",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant (median)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--step_size", type=float, default=0.01)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for XLA and PyTorch (CPU affinity); 0 = all available",
    )
    p.add_argument(
        "--data_dir",
        default=str(DEFAULT_DATA_DIR),
        help="MNIST folder (synthetic images if missing)",
    )
    p.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-separated subset of {','.join(ALL_VARIANTS)}",
    )
    p.add_argument(
        "--malloc",
        choices=("glibc", "tuned"),
        default="tuned",
        help="tuned (default, as launch/*.py): advjax.host.keep_freed_memory() first; "
        "glibc: the C library's defaults",
    )
    p.add_argument(
        "--xla_tuning",
        choices=("advjax", "none"),
        default="advjax",
        help="advjax (default, as launch/*.py): advjax.host.tune_xla_cpu() adds its XLA:CPU "
        "flag; none: XLA's defaults",
    )
    p.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax loads")
    p.add_argument(
        "--max_seconds",
        type=float,
        default=30.0,
        help="cut a variant's repeats so that its timed calls take about this long",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(ALL_VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(ALL_VARIANTS)}")
    return args


def configure_process(args: argparse.Namespace) -> dict:
    """CPU affinity, malloc and XLA flags: must run before jax and torch are imported."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.threads and args.threads < len(cpus):
        cpus = cpus[: args.threads]
        os.sched_setaffinity(0, cpus)  # XLA sizes its thread pool from the affinity mask
    if args.malloc == "tuned":
        sys.path.insert(0, str(REPO))
        from advjax.host import keep_freed_memory  # as the launch scripts do

        if not keep_freed_memory():
            raise RuntimeError("mallopt failed (not glibc?); rerun with --malloc glibc")
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    if args.xla_tuning == "advjax":
        sys.path.insert(0, str(REPO))
        from advjax.host import tune_xla_cpu  # as the launch scripts do

        tune_xla_cpu()
    return {"cpus": cpus}


def canonical_conv():
    """``conv_general_dilated`` for ``flax.linen.Conv`` whose VJP uses canonical convolutions.

    Stride 1, no dilation, one feature group, NHWC/HWIO. The input gradient is computed as a
    convolution of the padded cotangent with the spatially flipped kernel transposed to HWIO, i.e.
    already in the form XLA:CPU needs, so it stays on the fast path inside while loops too. (The
    weight gradient is the ordinary one.) Forward-mode differentiation is not supported.
    """
    import jax
    import jax.numpy as jnp

    dn = ("NHWC", "HWIO", "NHWC")

    def conv(x, w, pads):
        return jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dn)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def conv_pads(x, w, pads):
        return conv(x, w, pads)

    def fwd(x, w, pads):
        return conv(x, w, pads), (x, w)

    def bwd(pads, res, g):
        x, w = res
        kh, kw = w.shape[:2]
        w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
        t_pads = (
            (kh - 1 - pads[0][0], kh - 1 - pads[0][1]),
            (kw - 1 - pads[1][0], kw - 1 - pads[1][1]),
        )
        dx = conv(g, w_t, t_pads)
        dw = jax.vjp(lambda k: conv(x, k, pads), w)[1](g)[0]
        return dx, dw

    conv_pads.defvjp(fwd, bwd)

    def conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        precision=None,
        **_,
    ):
        simple = (
            tuple(window_strides) == (1, 1)
            and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
            and feature_group_count == 1
        )
        if not simple:
            raise NotImplementedError("canonical_conv: stride 1, no dilation, no groups only")
        if isinstance(padding, str):
            padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        return conv_pads(lhs, rhs, pads)

    return conv_general_dilated


def make_variant_model(canonical: bool, reshape_pool: bool):
    """``MnistCNN4`` with the same parameter tree, optionally with the two changes above."""
    import flax.linen as nn

    conv_fn = canonical_conv() if canonical else None

    def pool(x):
        if reshape_pool:
            b, h, w, c = x.shape
            return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    class VariantCNN4(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            def conv(features, name):
                kwargs = {"conv_general_dilated": conv_fn} if conv_fn else {}
                return nn.Conv(features, (3, 3), padding="VALID", name=name, **kwargs)

            x = nn.relu(conv(32, "conv1")(x))
            x = pool(nn.relu(conv(32, "conv2")(x)))
            x = nn.relu(conv(64, "conv3")(x))
            x = pool(nn.relu(conv(64, "conv4")(x)))
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(200, name="fc1")(x))
            x = nn.relu(nn.Dense(200, name="fc2")(x))
            return nn.Dense(10, name="fc3")(x)

    return VariantCNN4()


def load_batch(args):
    import numpy as np

    from advjax.data import load_dataset

    try:
        ds = load_dataset("mnist", "test", data_dir=args.data_dir, source="local")
        source = f"MNIST test ({args.data_dir})"
    except (FileNotFoundError, ValueError, OSError) as err:
        ds = load_dataset("mnist", "test", source="synthetic", num_examples=args.batch)
        source = f"synthetic ({type(err).__name__})"
    images = ds.images[: args.batch].astype(np.float32) / 255.0
    labels = ds.labels[: args.batch].astype(np.int32)
    if len(images) < args.batch:  # tile small datasets up to the batch size
        reps = -(-args.batch // len(images))
        images = np.concatenate([images] * reps)[: args.batch]
        labels = np.concatenate([labels] * reps)[: args.batch]
    return images, labels, source


def timed(fn, repeats: int, max_seconds: float) -> tuple[list[float], float]:
    """(timed seconds, minor page faults per timed call): one warm-up call, then up to
    ``repeats`` calls (fewer when the warm-up call says they would take over ``max_seconds``)."""
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    n = max(1, min(repeats, int(max_seconds / max(warm, 1e-6))))
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n
    return times, faults


def main(argv=None) -> None:
    args = parse_args(argv)
    proc = configure_process(args)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_port import from_flax, nhwc_to_nchw, torch_pgd

    from advjax import attacks
    from advjax.models.functional import init_variables, make_model_fn
    from advjax.models.mnist import MnistCNN4

    threads = len(proc["cpus"])
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    variants = args.variants.split(",")

    images, labels, source = load_batch(args)
    model = MnistCNN4()
    variables = init_variables(model, jax.random.key(args.seed), (28, 28, 1))
    x, y = jnp.asarray(images), jnp.asarray(labels)
    key = jax.random.key(args.seed + 1)

    print(
        f"PGD-{args.steps} Linf eps {args.eps} step {args.step_size}, batch {args.batch}, "
        f"MnistCNN4 (random init), data: {source}"
    )
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}; "
        f"CPUs {proc['cpus']} -> XLA threads {threads}, torch.get_num_threads() "
        f"{torch.get_num_threads()}, torch.get_num_interop_threads() "
        f"{torch.get_num_interop_threads()}"
    )
    print(
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; malloc: {args.malloc}; "
        f"xla_tuning: {args.xla_tuning}; "
        f"loadavg before: {' '.join(f'{a:.2f}' for a in os.getloadavg())}"
    )
    print(
        "advjax variants: attacks.pgd(..., keep_best=False) jitted with model_fn static; "
        "torch: eager loop, last iterate (torchattacks PGD)"
    )

    rows = []
    for name in variants:
        if name.startswith("torch"):
            tmodel = from_flax(variables, model)
            if name == "torch_paramgrad":
                tmodel.requires_grad_(True)
            xt, yt = nhwc_to_nchw(images), torch.as_tensor(labels).long()
            times, faults = timed(
                lambda m=tmodel, xt=xt, yt=yt: torch_pgd(
                    m, xt, yt, args.eps, args.step_size, args.steps
                ),
                args.repeats,
                args.max_seconds,
            )
            rows.append((name, float("nan"), faults, times))
        else:
            unroll = 5 if name == "scan_u5" else (1 if name.startswith("scan") else True)
            canonical = "canon" in name
            rpool = "rpool" in name
            fmodel = make_variant_model(canonical, rpool) if canonical or rpool else model
            model_fn = make_model_fn(fmodel)
            attack = attacks.pgd(
                args.eps, args.step_size, args.steps, keep_best=False, unroll=unroll
            )
            start = time.perf_counter()
            compiled = (
                jax.jit(attack, static_argnums=0).lower(model_fn, variables, x, y, key).compile()
            )
            compile_s = time.perf_counter() - start
            times, faults = timed(
                lambda c=compiled: c(variables, x, y, key).block_until_ready(),
                args.repeats,
                args.max_seconds,
            )
            rows.append((name, compile_s, faults, times))
        med = statistics.median(rows[-1][3])
        print(f"  {name:18s} median {med * 1e3:9.1f} ms over {len(rows[-1][3])} calls", flush=True)

    ref = {r[0]: statistics.median(r[3]) for r in rows}.get("torch")
    print()
    print("| variant | compile s | median ms | min ms | calls | page faults / call | vs torch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, compile_s, faults, times in rows:
        med, best = statistics.median(times), min(times)
        ratio = f"{med / ref:.2f}x" if ref else "n/a"
        comp = "-" if np.isnan(compile_s) else f"{compile_s:.1f}"
        print(
            f"| {name} | {comp} | {med * 1e3:.0f} | {best * 1e3:.0f} | {len(times)} "
            f"| {faults:.0f} | {ratio} |"
        )
    print(f"loadavg after: {' '.join(f'{a:.2f}' for a in os.getloadavg())}")


if __name__ == "__main__":
    main()
