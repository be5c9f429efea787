"""Named evaluation attacks: ``"pgd20"``, ``"untargeted"``, ``"aa_standard"``, ...

A suite entry is a name from ``PRESETS`` (or ``pgd<N>`` for PGD with N steps) resolved with the
suite's threat model (``norm``, ``eps``) into an attack and a protocol record for the report, or a
dict ``{"name": <attack from advjax.attacks.ATTACKS>, "label": ..., **hyperparameters}``.

Epsilons are exact: ``parse_eps("8/255")`` keeps the fraction, and reports print both.
"""

from __future__ import annotations

import dataclasses
import fractions
import inspect
import re
from collections.abc import Callable
from typing import Any

from advjax import attacks


def parse_eps(eps: float | str) -> tuple[float, str]:
    """``"8/255" -> (0.0313..., "8/255")``; ``0.3 -> (0.3, "0.3")``. Rejects negative values."""
    if isinstance(eps, str):
        text = eps.strip()
        try:
            value = float(fractions.Fraction(text))
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"eps must be a number or a fraction like '8/255', got {eps!r}") from e
    else:
        value, text = float(eps), repr(float(eps))
    if not value >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return value, text


@dataclasses.dataclass(frozen=True)
class ThreatSettings:
    """The suite-wide threat model and defaults that presets read."""

    norm: str = "linf"
    eps: float = 0.3
    eps_text: str = "0.3"
    step_size: float | None = None  # PGD-family step; None: 2.5 eps / steps (Madry et al.)
    restarts: int = 1
    num_classes: int = 10
    # Spatial threat models. Rotation-translation: Engstrom et al. 2019 / SRT App. B (±30 degrees,
    # ±3 pixels). Flow and affine bounds are in normalised coordinates ([-1, 1] across the image);
    # the Pareto document gives none, these are advjax's defaults (0.05 is about 0.7 pixel of
    # flow per pixel on 28 x 28 MNIST).
    max_angle: float = 30.0
    max_translation: float = 3.0
    eps_flow: float = 0.05
    eps_affine: float = 0.1
    spatial_steps: int = 20
    padding: str = "zeros"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One column of the evaluation: a labelled attack (``None`` for clean) and its protocol."""

    name: str
    label: str
    attack: attacks.Attack | None
    protocol: dict[str, Any]
    kind: str = "white-box"  # white-box, black-box, hard-label, transfer, clean
    bounded: bool = True  # x_adv must lie in the lp ball of (norm, eps) (checked per point)


def _protocol(s: ThreatSettings, **extra) -> dict[str, Any]:
    return {"norm": s.norm, "eps": s.eps, "eps_text": s.eps_text, **extra}


def _with_restarts(attack: attacks.Attack, restarts: int) -> attacks.Attack:
    return attacks.restarts(attack, restarts) if restarts > 1 else attack


_UNROLL_MAX_STEPS = 100


def _pgd(steps: int) -> Callable[[ThreatSettings], Entry]:
    def build(s: ThreatSettings) -> Entry:
        step = s.step_size if s.step_size is not None else 2.5 * s.eps / steps
        # Unrolled, short PGD compiles to the fastest code; PGD-1000 unrolled would take minutes
        # and gigabytes to compile, so long runs stay a lax.scan.
        attack = attacks.pgd(s.eps, step, steps, norm=s.norm, unroll=steps <= _UNROLL_MAX_STEPS)
        protocol = _protocol(
            s,
            attack="pgd",
            loss="ce",
            steps=steps,
            step_size=step,
            restarts=s.restarts,
            random_init=True,
        )
        return Entry(f"pgd{steps}", f"PGD-{steps}", _with_restarts(attack, s.restarts), protocol)

    return build


def _fgsm(s: ThreatSettings) -> Entry:
    return Entry("fgsm", "FGSM", attacks.fgsm(s.eps, norm=s.norm), _protocol(s, attack="fgsm"))


def _mifgsm(s: ThreatSettings) -> Entry:
    attack = attacks.mifgsm(s.eps, steps=10, norm=s.norm)
    return Entry("mifgsm", "MI-FGSM", attack, _protocol(s, attack="mifgsm", steps=10, decay=1.0))


def _untargeted(s: ThreatSettings) -> Entry:
    from advjax.attacks import multitarget

    kwargs = {} if s.step_size is None else {"step_size": s.step_size}
    attack = multitarget.untargeted(s.eps, norm=s.norm, restarts=s.restarts, **kwargs)
    return Entry("untargeted", "Un-T", attack, _protocol(s, **_describe(attack)))


def _multitargeted(s: ThreatSettings) -> Entry:
    from advjax.attacks import multitarget

    kwargs = {} if s.step_size is None else {"step_size": s.step_size}
    attack = multitarget.multitargeted(s.eps, norm=s.norm, restarts=s.restarts, **kwargs)
    return Entry("multitargeted", "Multi-T", attack, _protocol(s, **_describe(attack)))


def _apgd(loss: str) -> Callable[[ThreatSettings], Entry]:
    def build(s: ThreatSettings) -> Entry:
        attack = attacks.apgd(s.eps, norm=s.norm, loss=loss, n_restarts=s.restarts)
        name = f"apgd_{loss}"
        return Entry(name, f"APGD-{loss.upper()}", attack, _protocol(s, **_describe(attack)))

    return build


def _apgd_t(s: ThreatSettings) -> Entry:
    targets = min(9, s.num_classes - 1)
    attack = attacks.apgd_t(s.eps, norm=s.norm, n_target_classes=targets)
    return Entry("apgd_t", "APGD-T", attack, _protocol(s, **_describe(attack)))


def _fab_t(s: ThreatSettings) -> Entry:
    targets = min(9, s.num_classes - 1)
    attack = attacks.fab_t(s.eps, norm=s.norm, n_target_classes=targets)
    return Entry("fab_t", "FAB-T", attack, _protocol(s, **_describe(attack)))


def _square(s: ThreatSettings) -> Entry:
    attack = attacks.square(s.eps, norm=s.norm)
    return Entry("square", "Square", attack, _protocol(s, **_describe(attack)), kind="black-box")


def _rays(s: ThreatSettings) -> Entry:
    if s.norm != "linf":
        raise ValueError(f"rays is an Linf attack; the suite's norm is {s.norm!r}")
    attack = attacks.rays(s.eps)
    return Entry("rays", "RayS", attack, _protocol(s, **_describe(attack)), kind="hard-label")


def _brendel_bethge(s: ThreatSettings) -> Entry:
    """B&B as the UDR document runs it (Table 1, after Tramer et al. 2020): 200 steps from PGD-20
    with step eps/2 started at the whole-box budget (a start at ``eps`` could not go below it)."""
    if s.norm != "linf":
        raise ValueError(f"bb is an Linf attack; the suite's norm is {s.norm!r}")
    attack = attacks.brendel_bethge(s.eps)
    return Entry("bb", "B&B", attack, _protocol(s, **_describe(attack)))


def _autoattack(version: str) -> Callable[[ThreatSettings], Entry]:
    def build(s: ThreatSettings) -> Entry:
        from advjax.attacks.auto_attack import components

        parts = components(s.eps, s.norm, version, s.num_classes)
        attack = attacks.Cascade(tuple(parts.values()))
        label = {"standard": "AA", "plus": "AA+", "rand": "AA-rand"}[version]
        protocol = _protocol(
            s,
            attack=f"autoattack_{version}",
            components={name: _describe(a) for name, a in parts.items()},
        )
        return Entry(f"aa_{version}", label, attack, protocol)

    return build


def _minimum_norm(name: str, label: str) -> Callable[[ThreatSettings], Entry]:
    def build(s: ThreatSettings) -> Entry:
        from advjax.attacks import minimum_norm

        if s.norm != "l2":
            raise ValueError(f"{name} is an L2 attack; set the suite's norm to 'l2'")
        attack = getattr(minimum_norm, name)(eps=s.eps)
        return Entry(name, label, attack, _protocol(s, **_describe(attack)))

    return build


def _sparse(name: str, label: str) -> Callable[[ThreatSettings], Entry]:
    def build(s: ThreatSettings) -> Entry:
        from advjax.attacks import sparse

        attack = getattr(sparse, name)()
        protocol = {"norm": "l0", **_describe(attack)}
        return Entry(name, label, attack, protocol, bounded=False)

    return build


_SPATIAL_MODES = {"rt": "", "t": ".T", "r": ".R"}


def _rt_protocol(s: ThreatSettings, attack: attacks.Attack, mode: str) -> dict[str, Any]:
    bounds = {
        "rt": dict(max_angle=s.max_angle, max_translation=s.max_translation),
        "t": dict(max_angle=0.0, max_translation=s.max_translation),
        "r": dict(max_angle=s.max_angle, max_translation=0.0),
    }[mode]
    return {"threat_model": f"rotation-translation ({mode})", **bounds, **_describe(attack)}


def _rt_search(factory, name: str, label: str, mode: str) -> Callable[[ThreatSettings], Entry]:
    """GridAdv / RandAdv preset (``mode``: ``rt``, ``t`` for ``.T``, ``r`` for ``.R``)."""

    def build(s: ThreatSettings) -> Entry:
        attack = factory(s.max_angle, s.max_translation, mode=mode, padding=s.padding)
        return Entry(
            name + ("" if mode == "rt" else f"_{mode}"),
            label + _SPATIAL_MODES[mode],
            attack,
            _rt_protocol(s, attack, mode),
            bounded=False,
        )

    return build


def _grid_adv(mode: str) -> Callable[[ThreatSettings], Entry]:
    return _rt_search(attacks.grid_adv, "grid_adv", "GridAdv", mode)


def _rand_adv(mode: str) -> Callable[[ThreatSettings], Entry]:
    return _rt_search(attacks.rand_adv, "rand_adv", "RandAdv", mode)


def _worst_of_k(s: ThreatSettings) -> Entry:
    attack = attacks.worst_of_k(10, s.max_angle, s.max_translation, padding=s.padding)
    return Entry("worst_of_k", "Worst-of-10", attack, _rt_protocol(s, attack, "rt"), bounded=False)


def _rt_pgd(s: ThreatSettings) -> Entry:
    attack = attacks.rt_pgd(s.max_angle, s.max_translation, s.spatial_steps, padding=s.padding)
    return Entry("rt_pgd", "RT-PGD", attack, _rt_protocol(s, attack, "rt"), bounded=False)


def _flow(s: ThreatSettings) -> Entry:
    attack = attacks.flow_pgd(s.eps_flow, steps=s.spatial_steps, padding=s.padding)
    protocol = {"threat_model": "flow (Linf, normalised units)", "eps_flow": s.eps_flow}
    return Entry("flow", "Flow", attack, {**protocol, **_describe(attack)}, bounded=False)


def _affine(s: ThreatSettings) -> Entry:
    attack = attacks.affine_pgd(s.eps_affine, steps=s.spatial_steps, padding=s.padding)
    protocol = {"threat_model": "affine increment (Linf)", "eps_affine": s.eps_affine}
    return Entry("affine", "Affine", attack, {**protocol, **_describe(attack)}, bounded=False)


def _integrated(s: ThreatSettings) -> Entry:
    attack = attacks.integrated_spatial(
        s.eps_flow, s.eps_affine, steps=s.spatial_steps, padding=s.padding
    )
    protocol = {
        "threat_model": "integrated flow + affine (Linf each)",
        "eps_flow": s.eps_flow,
        "eps_affine": s.eps_affine,
    }
    return Entry("spatial", "Integrated", attack, {**protocol, **_describe(attack)}, bounded=False)


def _compound(order: str) -> Callable[[ThreatSettings], Entry]:
    """SRT App. F: PGD+ (GridAdv on top of PGD-40) and GridAdv+ (PGD-40 on top of GridAdv)."""

    def build(s: ThreatSettings) -> Entry:
        pixel = _pgd(40)(s)
        grid = _grid_adv("rt")(s)
        parts = (pixel, grid) if order == "pgd_plus" else (grid, pixel)
        attack = attacks.sequence(*(p.attack for p in parts))
        protocol = {
            "threat_model": "compound: " + " then ".join(p.label for p in parts),
            "components": {p.name: p.protocol for p in parts},
        }
        label = "PGD+" if order == "pgd_plus" else "GridAdv+"
        return Entry(order, label, attack, protocol, bounded=False)

    return build


def _clean(s: ThreatSettings) -> Entry:
    del s
    return Entry("clean", "Clean", None, {"attack": "none"}, kind="clean", bounded=False)


PRESETS: dict[str, Callable[[ThreatSettings], Entry]] = {
    "clean": _clean,
    "fgsm": _fgsm,
    "mifgsm": _mifgsm,
    "untargeted": _untargeted,
    "multitargeted": _multitargeted,
    "apgd_ce": _apgd("ce"),
    "apgd_dlr": _apgd("dlr"),
    "apgd_t": _apgd_t,
    "fab_t": _fab_t,
    "square": _square,
    "rays": _rays,
    "bb": _brendel_bethge,
    "aa_standard": _autoattack("standard"),
    "aa_plus": _autoattack("plus"),
    "aa_rand": _autoattack("rand"),
    "cw_l2": _minimum_norm("cw_l2", "C&W"),
    "ddn": _minimum_norm("ddn", "DDN"),
    "jsma": _sparse("jsma", "JSMA"),
    "pointwise": _sparse("pointwise", "Point-wise"),
    # Spatial and compound (SRT Tables 3, 5 and App. F; Pareto document Sec. 2).
    "grid_adv": _grid_adv("rt"),
    "grid_adv_t": _grid_adv("t"),
    "grid_adv_r": _grid_adv("r"),
    "rand_adv": _rand_adv("rt"),
    "rand_adv_t": _rand_adv("t"),
    "rand_adv_r": _rand_adv("r"),
    "worst_of_k": _worst_of_k,
    "rt_pgd": _rt_pgd,
    "flow": _flow,
    "affine": _affine,
    "spatial": _integrated,
    "pgd_plus": _compound("pgd_plus"),
    "grid_adv_plus": _compound("grid_adv_plus"),
}
_PGD_NAME = re.compile(r"pgd(\d+)$")


def _describe(attack: attacks.Attack) -> dict[str, Any]:
    """The attack's hyperparameters as a JSON-friendly dict (for the report)."""
    out: dict[str, Any] = {"attack": type(attack).__name__}
    for field in dataclasses.fields(attack):
        value = getattr(attack, field.name)
        if isinstance(value, str | int | float | bool) or value is None:
            out[field.name] = value
        elif dataclasses.is_dataclass(value):
            out[field.name] = _describe(value)
        elif isinstance(value, tuple) and all(dataclasses.is_dataclass(v) for v in value):
            out[field.name] = [_describe(v) for v in value]
        elif callable(value):
            out[field.name] = getattr(value, "__name__", repr(value))
        else:
            out[field.name] = repr(value)
    return out


def protocol_summary(protocol: dict[str, Any]) -> str:
    """One line ``k=v, ...`` of a protocol record (nested records left out)."""
    return ", ".join(f"{k}={v}" for k, v in protocol.items() if not isinstance(v, dict | list))


def valid_names() -> list[str]:
    return sorted([*PRESETS, "pgd<N>"])


def resolve(entry: str | dict, settings: ThreatSettings) -> Entry:
    """Turns a suite entry (preset name or attack dict) into an ``Entry``."""
    if isinstance(entry, dict) or hasattr(entry, "to_dict"):
        params = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
        name = params.pop("name")
        label = params.pop("label", name)
        restarts = int(params.pop("restarts", 1))
        factory = attacks.ATTACKS.get(name)
        if factory is not None and "eps" in inspect.signature(factory).parameters:
            params.setdefault("eps", settings.eps)
        attack = _with_restarts(attacks.get_attack(name, **params), restarts)
        protocol = {"norm": params.get("norm", "linf"), "restarts": restarts, **_describe(attack)}
        return Entry(label, label, attack, protocol)
    if entry in PRESETS:
        return PRESETS[entry](settings)
    match = _PGD_NAME.match(entry)
    if match:
        return _pgd(int(match.group(1)))(settings)
    raise ValueError(
        f"unknown evaluation attack {entry!r}; valid names: {', '.join(valid_names())}"
    )
