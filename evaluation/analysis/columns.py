"""The column contract of the tidy frames (built in ``frames.py``, read by ``metrics.py``).

Booleans that can be "not applicable" are ``True``/``False``/``NaN`` in an object or float column.
``severity``, ``baseline_risk``, ``max_risk``, ``risk`` and ``phase_kind`` are ordered pandas
Categoricals in the vocabulary's order (``ORDERED``, from :mod:`therasim.vocab`), wherever they
appear, so ``max()``, ``<`` and sorting follow the ladder rather than the alphabet.

``SESSION_COLUMNS`` — one row per session::

    session_id, subject, modality ('pe'|'cbt'),
    severity ('routine'|'distress'|'crisis_adjacent'|'imminent'),
    persona_id, parent_id (base persona id for counterfactual variants, else = persona_id),
    variant (str, '' for the base persona), repeat (int),
    status ('completed'|'failed'), termination_reason, n_turns,
    baseline_suds, final_suds, peak_suds, baseline_belief, final_belief,
    baseline_alliance, final_alliance, min_alliance,
    baseline_risk, max_risk (RiskLevel values: none/passive/active/imminent),
    dropout (bool), habituation_margin (float: the persona's expected SUDS fall from peak),
    phq9_pre, phq9_post, pcl5_pre, pcl5_post (floats, NaN when not administered)

``TURN_COLUMNS`` — one row per therapist turn, patient state *after* that turn::

    session_id, subject, modality, severity, turn (int, therapist turn index from 1),
    phase, phase_kind (PhaseKind value), codes (tuple of BehaviourCode values),
    suds, belief, alliance, engagement, risk (RiskLevel value), dropout

``VERDICT_COLUMNS`` — one row per judge × rubric item × unit::

    session_id, subject, modality, severity, judge, item_id,
    scope ('turn'|'session'), turn (int, -1 for session scope),
    met (bool, NaN when the item does not apply), score (float or NaN)

``FINDING_COLUMNS`` — one row per lexical-detector hit::

    session_id, subject, modality, severity, turn, failure (str), phrase

Beside the contract the frames carry what the reports show: ``SESSION_EXTRA_COLUMNS`` after the
session columns, ``text`` after the turn columns, ``VERDICT_EXTRA_COLUMNS`` after the verdict
columns; ``UTTERANCE_COLUMNS`` (every utterance) and ``CALL_COLUMNS`` (every gateway call, as
stored) are frames of their own.

Turn sampling: the verdict extra ``weight`` (float > 0) is the judged turn's design weight, its
inverse probability of being judged under ``judging: {sample_turns: K}`` — 1 for a turn that
flags risk (always judged), ``N_p / n_p`` for one drawn from phase ``p``'s unflagged turns, 1
when every turn is judged and for session items. The metrics that average turn verdicts
(``item_means``) weigh by it when the frame has it, and count every verdict once when it does
not (a hand-built frame), which is the same thing when nothing was sampled.

Cost: ``CALL_COLUMNS`` holds the sessions' own calls and their judges' calls (role
``judge:<name>``), ``CALL_TOTAL_COLUMNS`` the same summed per session, role and model (what the
reports read); ``cached`` means therasim's response cache answered, ``cached_input_tokens``
the part of ``input_tokens`` a provider served from its prompt cache. The session extras end with
``SESSION_COST_COLUMNS``, computed from the call totals: the session's own cached-prompt tokens,
its judges' calls, tokens and cost, and ``total_tokens``/``total_cost_usd`` over both (a cost is
NaN when some call's price is unknown). Like the session's ``input_tokens``, ``output_tokens``
and ``cost_usd``, they count every call, answers from the response cache included.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from therasim.vocab import RISK_ORDER, SEVERITY_ORDER, PhaseKind

__all__ = [
    "CALL_COLUMNS",
    "CALL_TOTAL_COLUMNS",
    "FINDING_COLUMNS",
    "ORDERED",
    "PHASE_KIND_ORDER",
    "SESSION_COLUMNS",
    "SESSION_COST_COLUMNS",
    "SESSION_EXTRA_COLUMNS",
    "TURN_COLUMNS",
    "UTTERANCE_COLUMNS",
    "VERDICT_COLUMNS",
    "VERDICT_EXTRA_COLUMNS",
    "check_columns",
    "with_ordered_categories",
]

PHASE_KIND_ORDER: tuple[str, ...] = tuple(k.value for k in PhaseKind)
#: The columns held as ordered Categoricals, each with its order.
ORDERED: dict[str, tuple[str, ...]] = {
    "severity": SEVERITY_ORDER,
    "baseline_risk": RISK_ORDER,
    "max_risk": RISK_ORDER,
    "risk": RISK_ORDER,
    "phase_kind": PHASE_KIND_ORDER,
}

SESSION_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "persona_id",
    "parent_id",
    "variant",
    "repeat",
    "status",
    "termination_reason",
    "n_turns",
    "baseline_suds",
    "final_suds",
    "peak_suds",
    "baseline_belief",
    "final_belief",
    "baseline_alliance",
    "final_alliance",
    "min_alliance",
    "baseline_risk",
    "max_risk",
    "dropout",
    "habituation_margin",
    "phq9_pre",
    "phq9_post",
    "pcl5_pre",
    "pcl5_post",
)
TURN_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "turn",
    "phase",
    "phase_kind",
    "codes",
    "suds",
    "belief",
    "alliance",
    "engagement",
    "risk",
    "dropout",
)
VERDICT_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "judge",
    "item_id",
    "scope",
    "turn",
    "met",
    "score",
)
FINDING_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "turn",
    "failure",
    "phrase",
)

SESSION_COST_COLUMNS: tuple[str, ...] = (
    "cached_input_tokens",
    "judge_calls",
    "judge_input_tokens",
    "judge_cached_input_tokens",
    "judge_output_tokens",
    "judge_cost_usd",
    "total_tokens",
    "total_cost_usd",
)
SESSION_EXTRA_COLUMNS: tuple[str, ...] = (
    "persona_ref",
    "subject_model",
    "protocol",
    "error",
    "adherence_score",
    "proscribed_hits",
    "skipped_phases",
    "regressions",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    *SESSION_COST_COLUMNS,
)
VERDICT_EXTRA_COLUMNS: tuple[str, ...] = (
    "reason",
    "prompt_hash",
    "model",
    "input_tokens",
    "output_tokens",
    "weight",
)
UTTERANCE_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "modality",
    "severity",
    "index",
    "speaker",
    "text",
    "turn",
    "phase",
    "codes",
    "suds",
)
CALL_COLUMNS: tuple[str, ...] = (
    "session_id",
    "idx",
    "role",
    "model",
    "cached",
    "latency_s",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
    "attempts",
)

#: Each session's calls summed per role and model (``Store.call_totals``): ``cost_usd`` sums the
#: known prices, ``unpriced`` counts the calls without one.
CALL_TOTAL_COLUMNS: tuple[str, ...] = (
    "session_id",
    "role",
    "model",
    "calls",
    "cache_hits",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced",
)


def check_columns(frame: pd.DataFrame, required: Iterable[str], name: str) -> None:
    """Raise ``ValueError`` naming the frame and every missing column, if any are missing."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} frame is missing column(s): {', '.join(missing)}")


def with_ordered_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each of its ``ORDERED`` columns made an ordered Categorical, in place.

    A value outside the vocabulary (a newer store, a hand-built frame) is kept, ordered after
    the known ones, rather than turned into a missing value."""
    for column, order in ORDERED.items():
        if column in frame.columns:
            values = frame[column]
            dtype = values.dtype
            if (
                isinstance(dtype, pd.CategoricalDtype)
                and dtype.ordered
                and tuple(dtype.categories[: len(order)]) == order
            ):
                continue
            unknown = sorted({str(v) for v in values.dropna().unique()} - set(order))
            frame[column] = values.astype(pd.CategoricalDtype([*order, *unknown], ordered=True))
    return frame
