"""The readiness verdict's data files: ``thresholds.yaml`` and ``axes.yaml``, validated on load.

``thresholds.yaml`` holds therasim's own pass thresholds (the paper published none) as flat dotted
keys (``crisis_safety.min_sensitivity: 0.90``); a study overrides any of them with the same key
in ``Study.thresholds``. ``axes.yaml`` holds each axis' title and its FDA SaMD / EU AI Act mapping,
the real crisis numbers, and the behaviour codes of the "safety stance".

Both are validated by pydantic models with ``extra="forbid"``; every fault is a
:class:`~therasim.errors.ConfigError` naming the file (when there is one) and the dotted field. An
axis name that is not registered in :data:`~therasim.evaluation.analysis.axes.registry.AXES` is
reported as "unknown axis ..., did you mean ...". The validated values are handed to the axes as a
flat ``dict[str, float]`` (every value a float), the form a study's overrides take.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError

from therasim.errors import ConfigError, UnknownNameError, did_you_mean
from therasim.evaluation.analysis.axes.registry import AXES, AXIS_NAMES
from therasim.loading import load_model, read_data_file, validation_error
from therasim.vocab import BehaviourCode

__all__ = [
    "AXES_FILE",
    "THRESHOLDS_FILE",
    "AxesFile",
    "AxisText",
    "Thresholds",
    "axis_info",
    "default_thresholds",
    "known_numbers",
    "load_axes_file",
    "load_thresholds_file",
    "resolve_thresholds",
    "safety_codes",
]

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.yaml")
AXES_FILE = Path(__file__).with_name("axes.yaml")


def _whole(value: float) -> float:
    if not value.is_integer():
        raise ValueError("must be a whole number")
    return value


def _flag(value: float) -> float:
    if value not in (0.0, 1.0):
        raise ValueError("must be 0 or 1")
    return value


# Numbers only (no bools, no strings), finite; ints are accepted and read as floats.
_Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Share = Annotated[_Number, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[_Number, Field(ge=0.0)]
Whole = Annotated[NonNegative, AfterValidator(_whole)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProtocolFidelityThresholds(_Strict):
    """Pass rules of the protocol-fidelity axis."""

    min_adherence: Share = Field(description="Least mean FSM adherence score per session.")
    max_proscribed_per_session: NonNegative = Field(
        description="Most proscribed behaviour-code occurrences per session, on average."
    )
    min_judge_fidelity: Share = Field(description="Least mean of the judges' fidelity verdicts.")


class HallucinationRiskThresholds(_Strict):
    """Pass rules of the hallucination-risk axis."""

    max_rate: Share = Field(description="Most share of sessions with a hallucination.")
    max_probe_endorsement: Share = Field(
        description="Most share of seeded misstatement probes the subject endorsed."
    )


class BehaviouralConsistencyThresholds(_Strict):
    """Pass rules of the behavioural-consistency axis."""

    max_suds_sd: NonNegative = Field(description="Most mean within-cell SD of final SUDS.")
    max_pass_sd: Share = Field(description="Most mean within-cell SD of the pass flag.")
    min_pass_hat_k: Share = Field(description="Least pass^k (0 switches the check off).")
    k: Whole = Field(description="k of pass^k; 0 = the smallest repeated cell's repeat count.")
    arc_turns: Annotated[Whole, Field(ge=2.0)] = Field(
        description="Length of the standardised arc over which stance drift is measured."
    )
    max_stance_drift: Share = Field(description="Most absolute stance drift over the arc.")


class CrisisSafetyThresholds(_Strict):
    """Pass rules of the crisis-safety axis."""

    min_sensitivity: Share = Field(description="Least share of imminent-risk sessions escalated.")
    min_specificity: Share = Field(
        description="Least share of calm sessions without crisis resources in an exercise."
    )


class DemographicRobustnessThresholds(_Strict):
    """Pass rules of the demographic-robustness axis."""

    max_pass_gap: Share = Field(description="Margin of the paired pass-rate difference.")
    max_suds_gap: NonNegative = Field(description="Margin of the paired final-SUDS difference.")


class Thresholds(_Strict):
    """Every threshold of the verdict; the file and a study's overrides use dotted keys."""

    ci_level: Annotated[_Number, Field(gt=0.0, lt=1.0)] = Field(
        description="Confidence level of every interval reported."
    )
    use_ci_bounds: Annotated[_Number, AfterValidator(_flag)] = Field(
        description="1: interval bounds must clear the thresholds; 0: point estimates."
    )
    protocol_fidelity: ProtocolFidelityThresholds
    hallucination_risk: HallucinationRiskThresholds
    behavioural_consistency: BehaviouralConsistencyThresholds
    crisis_safety: CrisisSafetyThresholds
    demographic_robustness: DemographicRobustnessThresholds


class AxisText(_Strict):
    """What ``axes.yaml`` says of one axis."""

    title: str
    targets: str = Field(description="The failure the axis targets.")
    paper_test: str = Field(description="The test the paper proposes for it.")
    fda: str = Field(description="The FDA SaMD provision it maps to.")
    eu_ai_act: str = Field(description="The EU AI Act articles it maps to.")


class AxesFile(_Strict):
    """``axes.yaml``: the axes in the verdict's order, real crisis numbers, safety codes."""

    axes: dict[str, AxisText]
    known_numbers: list[str] = Field(default_factory=list)
    safety_codes: list[BehaviourCode] = Field(default_factory=list)


# --------------------------------------------------------------------------- errors


def _check_axis(name: str, *, file: str | None, field: str) -> None:
    """``ConfigError`` "unknown axis ..., did you mean ..." unless ``name`` is a registered axis."""
    try:
        AXES.get(name)
    except UnknownNameError as exc:
        raise ConfigError(str(exc), file=file, field=field) from None


# --------------------------------------------------------------------------- thresholds


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        axis, dot, name = str(key).partition(".")
        if dot:
            out.setdefault(axis, {})[name] = value
        else:
            out[str(key)] = value
    return out


def _flat(model: Thresholds) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in model.model_dump().items():
        if isinstance(value, dict):
            out.update({f"{key}.{name}": float(v) for name, v in value.items()})
        else:
            out[key] = float(value)
    return out


def _validated(flat: Mapping[str, Any], *, file: str | None) -> dict[str, float]:
    try:
        return _flat(Thresholds.model_validate(_nested(flat)))
    except ValidationError as exc:
        raise validation_error(exc, Thresholds, file=file) from None


def _unknown_keys(keys: list[str], known: Mapping[str, float], *, file: str | None) -> None:
    """``ConfigError`` for keys that are no threshold: an unknown axis first, then the keys with
    close matches and the list of known ones."""
    for key in keys:
        axis, dot, _ = key.partition(".")
        if dot:
            _check_axis(axis, file=file, field=f"thresholds.{key}")
    hints = []
    for key in keys:
        close = did_you_mean(key, known, n=2, cutoff=0.6)
        hints.append(f"{key!r}" + (f" ({close})" if close else ""))
    raise ConfigError(
        f"unknown threshold key(s) {', '.join(hints)}; known: {', '.join(sorted(known))}",
        file=file,
        field="thresholds",
    )


def load_thresholds_file(path: Path) -> dict[str, float]:
    """A thresholds file (flat dotted keys, every key present) as a flat dict of floats.

    ``ConfigError`` naming the file and the key: an unknown axis or key (with close matches), a
    missing key, or a value out of range.
    """
    file = str(path)
    doc = read_data_file(path)
    if not isinstance(doc, dict):
        raise ConfigError("must be a mapping of threshold keys to numbers", file=file)
    known = {
        f"{name}.{sub}" if sub else name
        for name, info in Thresholds.model_fields.items()
        for sub in (getattr(info.annotation, "model_fields", None) or [""])
    }
    unknown = [str(k) for k in doc if str(k) not in known]
    if unknown:
        _unknown_keys(unknown, dict.fromkeys(known, 0.0), file=file)
    return _validated(doc, file=file)


@cache
def _defaults() -> tuple[tuple[str, float], ...]:
    return tuple(load_thresholds_file(THRESHOLDS_FILE).items())


def default_thresholds() -> dict[str, float]:
    """therasim's own default thresholds (``thresholds.yaml``), as a fresh dict."""
    return dict(_defaults())


def resolve_thresholds(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The defaults with ``overrides`` (e.g. ``Study.thresholds``) merged over them.

    Raises :class:`ConfigError` naming an unknown axis (with close matches), every unknown key
    (with close matches, listing the known ones), or a key whose value is out of range.
    """
    values = default_thresholds()
    if not overrides:
        return values
    unknown = [str(k) for k in overrides if k not in values]
    if unknown:
        _unknown_keys(unknown, values, file=None)
    return _validated({**values, **overrides}, file=None)


# --------------------------------------------------------------------------- axes.yaml


def load_axes_file(path: Path) -> AxesFile:
    """An axes file: every axis registered, the five built-ins listed in the verdict's order.

    ``ConfigError`` naming the file and the field: an unknown axis (with close matches), an
    unknown behaviour code, a missing or unexpected field.
    """
    file = str(path)
    parsed = load_model(path, AxesFile)
    for name in parsed.axes:
        _check_axis(name, file=file, field=f"axes.{name}")
    if tuple(parsed.axes) != AXIS_NAMES:
        raise ConfigError(
            f"must map exactly {', '.join(AXIS_NAMES)} in this order", file=file, field="axes"
        )
    return parsed


@cache
def _axes_file() -> AxesFile:
    return load_axes_file(AXES_FILE)


def axis_info(axis: str) -> dict[str, str]:
    """Title, targeted failure, the paper's proposed test, and the FDA / EU AI Act mapping."""
    texts = _axes_file().axes
    if axis not in texts:
        _check_axis(axis, file=str(AXES_FILE), field="axes")
        raise ConfigError(f"no text for axis {axis!r}", file=str(AXES_FILE), field="axes")
    return texts[axis].model_dump()


@cache
def known_numbers() -> frozenset[str]:
    """The real crisis and emergency numbers, digits only: the scripted judges' list
    (``KNOWN_RESOURCE_NUMBERS``) plus those ``axes.yaml`` adds."""
    from therasim.evaluation.judging.scripted_judges import KNOWN_RESOURCE_NUMBERS

    extra = (re.sub(r"\D", "", n) for n in _axes_file().known_numbers)
    return KNOWN_RESOURCE_NUMBERS | frozenset(extra)


@cache
def safety_codes() -> frozenset[str]:
    """The behaviour codes that make up the "safety stance" (``axes.yaml``)."""
    return frozenset(c.value for c in _axes_file().safety_codes)
