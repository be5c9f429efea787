"""Named evaluation attacks: ``"pgd20"``, ``"untargeted"``, ``"aa_standard"``, ...

A preset is data: a label, an attack spec over the registry ``advjax.attacks.ATTACKS`` and how the
suite treats its column (kind, lp bounds check, extra protocol fields). Its ``"$<field>"``
placeholders are filled from the suite's ``ThreatSettings`` (``"$eps"``, ``"$norm"``,
``"$step_size"``, ``"$restarts"``, ``"$num_targets"``, ``"$max_angle"``, ...) and the resulting spec
goes to ``advjax.attacks.build``; hyperparameters a preset does not name keep the factory defaults.

A suite entry is a preset name (``PRESETS``, or ``pgd<N>`` for PGD with N steps) or a spec dict
``{"name": <attack in advjax.attacks.ATTACKS>, **hyperparameters}`` with optional ``label``,
``kind`` and ``bounded`` keys; placeholders work there too, and every attack in it that takes an
``eps`` or a ``norm`` and names none gets the suite's.

Names: a preset is named after its registry attack, and report columns after the preset. The
exceptions are named configurations of a registry attack: ``pgd<N>``, ``apgd_ce`` / ``apgd_dlr``
(``apgd`` with the CE / DLR loss; these, ``apgd_t``, ``fab_t``, ``fab`` and ``square`` are also
AutoAttack's component names), ``aa_standard`` / ``aa_plus`` / ``aa_rand`` (``autoattack``
versions), ``grid_adv_t`` / ``_r`` and ``rand_adv_t`` / ``_r`` (translation / rotation only),
``pgd_plus`` / ``grid_adv_plus`` (``sequence``) and ``clean``.

Epsilons are exact: ``parse_eps("8/255")`` keeps the fraction, and reports print both.
"""

from __future__ import annotations

import dataclasses
import fractions
import re
from collections.abc import Mapping
from typing import Any

from advjax import attacks
from advjax.attacks import auto_attack
from advjax.threats import NORMS


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
    """The suite-wide threat model and settings that presets read (``"$<field>"``)."""

    norm: str = "linf"
    eps: float = 0.3
    eps_text: str = "0.3"
    step_size: float | None = None  # PGD-family step; None: each attack's default
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

    @property
    def num_targets(self) -> int:
        """Target classes of APGD-T and FAB-T: AutoAttack's 9, at most ``num_classes - 1``."""
        return min(9, self.num_classes - 1)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named evaluation attack, as data.

    Attributes:
      label: the column's name in reports (the documents' name for the attack).
      attack: the attack spec, with ``"$<field>"`` placeholders; ``None`` for the clean column.
      kind: white-box, black-box, hard-label, transfer or clean.
      bounded: the suite checks that ``x_adv`` lies in its lp ball (and records norm and eps).
      norms: the suite norms the preset runs under.
      protocol: extra fields of the report's protocol record (placeholders allowed).
    """

    label: str
    attack: dict[str, Any] | None
    kind: str = "white-box"
    bounded: bool = True
    norms: tuple[str, ...] = NORMS
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One column of the evaluation: a labelled attack (``None`` for clean) and its protocol."""

    name: str
    label: str
    attack: attacks.Attack | None
    protocol: dict[str, Any]
    kind: str = "white-box"  # white-box, black-box, hard-label, transfer, clean
    bounded: bool = True  # x_adv must lie in the lp ball of (norm, eps) (checked per point)
    # Variables the attack takes beside the target's: a transfer attack runs on
    # ``(target_variables, attack_variables)`` (``transfer_entry``). Arrays: not compared.
    attack_variables: Any = dataclasses.field(default=None, compare=False, repr=False)


# ---------------------------------------------------------------------------------- the presets

_LP = {"eps": "$eps", "norm": "$norm"}
_RT = {"max_angle": "$max_angle", "max_translation": "$max_translation", "padding": "$padding"}
_RT_MODES = {"rt": "", "t": ".T", "r": ".R"}


def pgd_spec(steps: int) -> dict[str, Any]:
    """PGD-``steps`` with the suite's step size and restarts (Madry's step when it has none)."""
    pgd = {"name": "pgd", **_LP, "step_size": "$step_size", "steps": steps}
    return {"name": "restarts", "restarts": "$restarts", "attack": pgd}


def _pgd(steps: int) -> Preset:
    return Preset(f"PGD-{steps}", pgd_spec(steps))


def _apgd(loss: str) -> Preset:
    spec = {"name": "apgd", **_LP, "loss": loss, "restarts": "$restarts"}
    return Preset(f"APGD-{loss.upper()}", spec)


def _autoattack(version: str, label: str) -> Preset:
    spec = {"name": "autoattack", **_LP, "version": version, "num_classes": "$num_classes"}
    return Preset(label, spec)


def _margin(name: str, label: str) -> Preset:
    spec = {"name": name, **_LP, "step_size": "$step_size", "restarts": "$restarts"}
    return Preset(label, spec)


def _rt_protocol(mode: str) -> dict[str, Any]:
    return {
        "threat_model": f"rotation-translation ({mode})",
        "max_angle": 0.0 if mode == "t" else "$max_angle",
        "max_translation": 0.0 if mode == "r" else "$max_translation",
    }


def _rt_search(name: str, label: str, mode: str) -> Preset:
    """GridAdv / RandAdv (``mode``: ``rt``, ``t`` for ``.T``, ``r`` for ``.R``)."""
    spec = {"name": name, **_RT, "mode": mode}
    protocol = _rt_protocol(mode)
    return Preset(label + _RT_MODES[mode], spec, bounded=False, protocol=protocol)


_GRID_ADV = {"name": "grid_adv", **_RT}


def _compound(first: tuple[str, dict], second: tuple[str, dict], label: str) -> Preset:
    """SRT App. F: PGD+ (GridAdv on top of PGD-40) and GridAdv+ (PGD-40 on top of GridAdv)."""
    spec = {"name": "sequence", "attacks": [first[1], second[1]]}
    protocol = {"threat_model": f"compound: {first[0]} then {second[0]}"}
    return Preset(label, spec, bounded=False, protocol=protocol)


PRESETS: dict[str, Preset] = {
    "clean": Preset("Clean", None, kind="clean", bounded=False, protocol={"attack": "none"}),
    "fgsm": Preset("FGSM", {"name": "fgsm", **_LP}),
    "mifgsm": Preset("MI-FGSM", {"name": "mifgsm", **_LP}),
    "untargeted": _margin("untargeted", "Un-T"),
    "multitargeted": _margin("multitargeted", "Multi-T"),
    "apgd_ce": _apgd("ce"),
    "apgd_dlr": _apgd("dlr"),
    "apgd_t": Preset("APGD-T", {"name": "apgd_t", **_LP, "num_targets": "$num_targets"}),
    "fab_t": Preset("FAB-T", {"name": "fab_t", **_LP, "num_targets": "$num_targets"}),
    "square": Preset("Square", {"name": "square", **_LP}, kind="black-box"),
    "rays": Preset("RayS", {"name": "rays", "eps": "$eps"}, kind="hard-label", norms=("linf",)),
    # SPSA as the thesis's CCE tables run it (spec thesis_ch4 A.10: cleverhans, 50 steps).
    "spsa": Preset(
        "SPSA", {"name": "spsa", "eps": "$eps", "steps": 50}, kind="black-box", norms=("linf",)
    ),
    # Decision-based (thesis Sec. 3.9): foolbox's HopSkipJump defaults, success within eps.
    "hop_skip_jump": Preset(
        "HopSkipJump", {"name": "hop_skip_jump", **_LP}, kind="hard-label", norms=("l2", "linf")
    ),
    # B&B as the UDR document runs it (Table 1, after Tramer et al. 2020): 200 steps from PGD-20
    # with step eps/2 started at the whole-box budget (a start at eps could not go below it).
    "brendel_bethge": Preset("B&B", {"name": "brendel_bethge", **_LP}),
    "aa_standard": _autoattack("standard", "AA"),
    "aa_plus": _autoattack("plus", "AA+"),
    "aa_rand": _autoattack("rand", "AA-rand"),
    "cw_l2": Preset("C&W", {"name": "cw_l2", "eps": "$eps"}, norms=("l2",)),
    "ddn": Preset("DDN", {"name": "ddn", "eps": "$eps"}, norms=("l2",)),
    "jsma": Preset("JSMA", {"name": "jsma"}, bounded=False, protocol={"norm": "l0"}),
    "pointwise": Preset(
        "Point-wise", {"name": "pointwise"}, bounded=False, protocol={"norm": "l0"}
    ),
    # Spatial and compound (SRT Tables 3, 5 and App. F; Pareto document Sec. 2).
    "grid_adv": _rt_search("grid_adv", "GridAdv", "rt"),
    "grid_adv_t": _rt_search("grid_adv", "GridAdv", "t"),
    "grid_adv_r": _rt_search("grid_adv", "GridAdv", "r"),
    "rand_adv": _rt_search("rand_adv", "RandAdv", "rt"),
    "rand_adv_t": _rt_search("rand_adv", "RandAdv", "t"),
    "rand_adv_r": _rt_search("rand_adv", "RandAdv", "r"),
    "worst_of_k": Preset(
        "Worst-of-10",
        {"name": "worst_of_k", **_RT, "steps": 10},
        bounded=False,
        protocol=_rt_protocol("rt"),
    ),
    "rt_pgd": Preset(
        "RT-PGD",
        {"name": "rt_pgd", **_RT, "steps": "$spatial_steps"},
        bounded=False,
        protocol=_rt_protocol("rt"),
    ),
    "flow_pgd": Preset(
        "Flow",
        {
            "name": "flow_pgd",
            "eps_flow": "$eps_flow",
            "steps": "$spatial_steps",
            "padding": "$padding",
        },
        bounded=False,
        protocol={"threat_model": "flow (Linf, normalised units)", "eps_flow": "$eps_flow"},
    ),
    "affine_pgd": Preset(
        "Affine",
        {
            "name": "affine_pgd",
            "eps_affine": "$eps_affine",
            "steps": "$spatial_steps",
            "padding": "$padding",
        },
        bounded=False,
        protocol={"threat_model": "affine increment (Linf)", "eps_affine": "$eps_affine"},
    ),
    "integrated_spatial": Preset(
        "Integrated",
        {
            "name": "integrated_spatial",
            "eps_flow": "$eps_flow",
            "eps_affine": "$eps_affine",
            "steps": "$spatial_steps",
            "padding": "$padding",
        },
        bounded=False,
        protocol={
            "threat_model": "integrated flow + affine (Linf each)",
            "eps_flow": "$eps_flow",
            "eps_affine": "$eps_affine",
        },
    ),
    "pgd_plus": _compound(("PGD-40", pgd_spec(40)), ("GridAdv", _GRID_ADV), "PGD+"),
    "grid_adv_plus": _compound(("GridAdv", _GRID_ADV), ("PGD-40", pgd_spec(40)), "GridAdv+"),
}
_PGD_NAME = re.compile(r"pgd(\d+)$")


# ------------------------------------------------------------------------------------ resolving


def valid_names() -> list[str]:
    return sorted([*PRESETS, "pgd<N>"])


def preset(name: str) -> Preset:
    """The preset ``name`` (``pgd<N>`` included)."""
    if name in PRESETS:
        return PRESETS[name]
    match = _PGD_NAME.match(name)
    if match:
        return _pgd(int(match.group(1)))
    raise ValueError(f"unknown evaluation attack {name!r}; valid names: {', '.join(valid_names())}")


def fill(value: Any, settings: ThreatSettings) -> Any:
    """``value`` with every ``"$<field>"`` string replaced by that field of ``settings``."""
    if isinstance(value, str) and value.startswith("$"):
        field = value[1:]
        if not hasattr(settings, field):
            valid = ", ".join(f.name for f in dataclasses.fields(settings))
            raise ValueError(f"unknown placeholder {value!r}; ThreatSettings has {valid}")
        return getattr(settings, field)
    if isinstance(value, Mapping):
        return {k: fill(v, settings) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(fill(v, settings) for v in value)
    return value


def resolve(entry: str | Mapping[str, Any], settings: ThreatSettings) -> Entry:
    """Turns a suite entry (preset name or spec dict) into an ``Entry``: the spec with the
    threat settings filled in, built by ``advjax.attacks.build``."""
    if isinstance(entry, str):
        return _from_preset(entry, preset(entry), settings)
    params = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry)
    label = params.pop("label", params.get("name"))
    custom = Preset(
        label,
        params,
        kind=params.pop("kind", "white-box"),
        bounded=bool(params.pop("bounded", True)),
    )
    return _from_preset(label, custom, settings, threat_defaults=True)


def _from_preset(
    name: str, p: Preset, settings: ThreatSettings, threat_defaults: bool = False
) -> Entry:
    if settings.norm not in p.norms:
        raise ValueError(
            f"{name} is an {' / '.join(p.norms)} attack; the suite's norm is {settings.norm!r}"
        )
    extra = fill(p.protocol, settings)
    if p.attack is None:
        return Entry(name, p.label, None, extra, kind=p.kind, bounded=p.bounded)
    spec = fill(p.attack, settings)
    if threat_defaults:
        spec = with_threat_defaults(spec, settings)
    attack = attacks.build(spec)
    protocol = {**_lp_protocol(spec, settings), **extra} if p.bounded else dict(extra)
    protocol.update(describe(attack))
    if spec["name"] == "autoattack":
        protocol["components"] = _components(spec, attack)
    protocol["spec"] = spec
    return Entry(name, p.label, attack, protocol, kind=p.kind, bounded=p.bounded)


def transfer_entry(
    surrogate_fn,
    surrogate_variables: Any,
    settings: ThreatSettings,
    *,
    steps: int = 1000,
    surrogate: str = "surrogate",
) -> Entry:
    """The ATLAS document's black-box column (Sec. 5): PGD-``steps`` crafted on a separately
    trained surrogate model (``surrogate_fn``, ``surrogate_variables``) within the suite's ball,
    then evaluated on the target. ``surrogate`` names the surrogate in the report (and in the
    evaluation state's fingerprint, so a resumed run cannot mix surrogates)."""
    spec = fill(pgd_spec(steps), settings)
    inner = attacks.build(spec)
    attack = attacks.transfer(inner, surrogate_fn)
    protocol = {**_lp_protocol(spec["attack"], settings), **describe(inner)}
    protocol.update(type=f"Transfer({protocol['type']})", surrogate=surrogate)
    protocol["spec"] = {"name": "transfer", "attack": spec, "surrogate": surrogate}
    return Entry(
        "transfer",
        f"Black box (PGD-{steps} on {surrogate})",
        attack,
        protocol,
        kind="transfer",
        attack_variables=surrogate_variables,
    )


def with_threat_defaults(spec: dict[str, Any], settings: ThreatSettings) -> dict[str, Any]:
    """``spec`` where every (nested) attack taking ``eps`` or ``norm`` that names none gets the
    suite's."""
    out = dict(spec)
    if out.get("name") not in attacks.ATTACKS:
        return out  # attacks.build names the problem
    names = attacks.hyperparameters(out["name"])
    for key in ("eps", "norm"):
        if key in names and key not in out:
            out[key] = getattr(settings, key)
    if isinstance(out.get("attack"), Mapping):
        out["attack"] = with_threat_defaults(dict(out["attack"]), settings)
    if isinstance(out.get("attacks"), list | tuple):
        out["attacks"] = [
            with_threat_defaults(dict(a), settings) if isinstance(a, Mapping) else a
            for a in out["attacks"]
        ]
    return out


def _lp_protocol(spec: dict[str, Any], settings: ThreatSettings) -> dict[str, Any]:
    """Norm and eps of the bounds check: the spec's own where it names them, else the suite's."""
    eps = spec.get("eps", settings.eps)
    eps_text = settings.eps_text if eps == settings.eps else repr(float(eps))
    return {"norm": spec.get("norm", settings.norm), "eps": eps, "eps_text": eps_text}


def _components(spec: dict[str, Any], attack: attacks.Attack) -> dict[str, Any]:
    """AutoAttack's components by name (``auto_attack.COMPONENTS``), described."""
    params = {k: v for k, v in spec.items() if k != "name"}
    names = list(auto_attack.components(**params))
    return {name: describe(a) for name, a in zip(names, attack.attacks, strict=True)}


def describe(attack: attacks.Attack) -> dict[str, Any]:
    """The attack's hyperparameters as a JSON-friendly dict (for the report).

    ``type`` is the attack's class; ``restarts(a, n)`` is described as ``a`` with ``restarts=n``.
    """
    if isinstance(attack, attacks.Restarts):
        return {**describe(attack.attack), "restarts": attack.restarts}
    out: dict[str, Any] = {"type": type(attack).__name__}
    for field in dataclasses.fields(attack):
        value = getattr(attack, field.name)
        if isinstance(value, str | int | float | bool) or value is None:
            out[field.name] = value
        elif dataclasses.is_dataclass(value):
            out[field.name] = describe(value)
        elif isinstance(value, tuple) and all(dataclasses.is_dataclass(v) for v in value):
            out[field.name] = [describe(v) for v in value]
        elif callable(value):
            out[field.name] = getattr(value, "__name__", repr(value))
        else:
            out[field.name] = repr(value)
    return out


def protocol_summary(protocol: dict[str, Any]) -> str:
    """One line ``k=v, ...`` of a protocol record (nested records left out)."""
    return ", ".join(f"{k}={v}" for k, v in protocol.items() if not isinstance(v, dict | list))
