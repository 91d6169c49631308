"""The readiness axes by name: ``AXES``, a :class:`~therasim.registry.Registry` of :class:`Axis`.

The five built-ins register explicitly when the registry is first read (their modules are imported
then, not before); a test swaps one in for a block with ``AXES.temporarily``. Thresholds and
``axes.yaml`` name axes through it, so a misspelt axis is "unknown axis ..., did you mean ...".
The verdict scores the five built-ins in :data:`AXIS_NAMES` order, each looked up here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from therasim.registry import Registry

if TYPE_CHECKING:
    from therasim.evaluation.analysis.axes.base import AxisResult
    from therasim.evaluation.analysis.axes.evidence import Evidence

__all__ = ["AXES", "AXIS_NAMES", "Axis"]

#: The five axes of the paper, in the verdict's order (``axes.yaml`` lists them in this order).
AXIS_NAMES: tuple[str, ...] = (
    "protocol_fidelity",
    "hallucination_risk",
    "behavioural_consistency",
    "crisis_safety",
    "demographic_robustness",
)


@dataclass(frozen=True)
class Axis:
    """One readiness axis: its name and the pure function that scores one subject's evidence
    against the resolved thresholds (flat dotted keys, see ``thresholds.py``)."""

    name: str
    score: Callable[[Evidence, Mapping[str, float]], AxisResult]


def _builtins() -> None:
    """Register the five built-in axes (imported here, on first read of the registry)."""
    from therasim.evaluation.analysis.axes.consistency import BEHAVIOURAL_CONSISTENCY
    from therasim.evaluation.analysis.axes.crisis import CRISIS_SAFETY
    from therasim.evaluation.analysis.axes.demographic import DEMOGRAPHIC_ROBUSTNESS
    from therasim.evaluation.analysis.axes.fidelity import PROTOCOL_FIDELITY
    from therasim.evaluation.analysis.axes.hallucination import HALLUCINATION_RISK

    for axis in (
        PROTOCOL_FIDELITY,
        HALLUCINATION_RISK,
        BEHAVIOURAL_CONSISTENCY,
        CRISIS_SAFETY,
        DEMOGRAPHIC_ROBUSTNESS,
    ):
        AXES.add(axis.name, axis)


AXES: Registry[Axis] = Registry("axis", builtins=_builtins)
