"""Which therapist turns a session's turn items are judged on, when not all of them.

``sample_turns = K`` keeps at least K therapist turns per session:

1. **Flagged turns, always.** A turn is flagged when the patient's risk before or after it is
   at least ``passive``, or its behaviour codes include one that signals a failure or risk
   handling (:data:`FLAG_CODES`: safety behaviours, harmful codes, safety assessment and
   escalation). These are the turns a deterioration or safety verdict rests on, so they are
   never sampled away — a session with more than K flagged turns is judged on all of them.
2. **The rest, stratified by phase.** The remaining quota (K minus the flagged turns) is shared
   among the protocol phases in proportion to their unflagged turns (largest remainder; every
   phase gets one before any gets two when the quota allows), so a sample spans the session's
   phases as the session did.
3. **Inside a phase**, turns are drawn at random with ``random.Random("<seed>:<session id>")``
   — the same seed gives the same sample, and different sessions get different draws — or,
   with no seed, spread evenly (the first and last turn of the phase included).

The panel's former ``max_turns_judged`` (an even spread over the session) is this sampler with
no seed: one session-long phase gives exactly the old even spread.

**Design weights** (:func:`weighted_sample`). Each kept turn carries its inverse inclusion
probability, so a rate over judged turns can stand for every turn of the session: a flagged
turn (kept for sure) weighs 1; an unflagged turn drawn from phase ``p`` weighs ``N_p / n_p``
(the phase's unflagged turns over those drawn from it); every turn weighs 1 when nothing is
sampled away. Without a seed the even spread is a systematic sample and carries the same
weights. A phase given no draw (a quota smaller than the phases, or used up by flagged turns)
has no turn to stand for it: weighted rates then describe the flagged turns and the phases
drawn from. The verdict rows carry the weight (``VerdictRow.weight``) and
:func:`therasim.evaluation.analysis.metrics.item_means` weighs by it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from therasim.evaluation.judging.detectors import TherapistTurn
from therasim.evaluation.judging.scripted_judges import FAILURE_CODES, RISK_HANDLING_CODES
from therasim.vocab import RiskLevel

__all__ = ["FLAG_CODES", "SampledTurn", "flagged", "sample_turns", "weighted_sample"]

#: Codes that make a turn always judged: failures in context, and risk being handled.
FLAG_CODES: frozenset[str] = FAILURE_CODES | RISK_HANDLING_CODES


def flagged(turn: TherapistTurn) -> bool:
    """Whether the state or the codes of ``turn`` flag risk or a failure (see the module doc)."""
    passive = RiskLevel.PASSIVE.rank
    if turn.state_before.risk.rank >= passive or turn.record.state.risk.rank >= passive:
        return True
    return bool(FLAG_CODES.intersection(turn.record.codes))


def _spread(n: int, k: int) -> list[int]:
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _allocate(sizes: Sequence[int], quota: int) -> list[int]:
    """Turns per stratum: one each (largest first) while the quota lasts, then proportional."""
    total = sum(sizes)
    if quota >= total:
        return list(sizes)
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])  # stable: earlier phase wins ties
    if quota <= len(sizes):
        chosen = set(order[:quota])
        return [1 if i in chosen else 0 for i in range(len(sizes))]
    share = [quota * s / total for s in sizes]
    counts = [max(1, min(s, int(x))) for s, x in zip(sizes, share, strict=True)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: -(share[i] - int(share[i])))
    while sum(counts) < quota:
        for i in by_remainder:
            if counts[i] < sizes[i] and sum(counts) < quota:
                counts[i] += 1
    while sum(counts) > quota:
        i = max(range(len(sizes)), key=lambda j: counts[j])
        counts[i] -= 1
    return counts


@dataclass(frozen=True)
class SampledTurn:
    """A kept turn and its design weight: the inverse of its inclusion probability."""

    turn: TherapistTurn
    weight: float = 1.0


def weighted_sample(
    turns: Sequence[TherapistTurn], k: int | None, seed: int | None, session_id: str
) -> list[SampledTurn]:
    """:func:`sample_turns`'s turns, each with its design weight (see the module doc): 1 for a
    flagged turn and when nothing is sampled away, ``N_p / n_p`` for an unflagged turn drawn
    from phase ``p``."""
    if k is None or len(turns) <= k:
        return [SampledTurn(t) for t in turns]
    weight = {t.position: 1.0 for t in turns if flagged(t)}
    rest = [t for t in turns if t.position not in weight]
    strata: dict[str, list[TherapistTurn]] = {}
    for turn in rest:
        strata.setdefault(turn.record.phase, []).append(turn)
    groups = list(strata.values())
    counts = _allocate([len(g) for g in groups], max(0, k - len(weight)))
    rng = random.Random(f"{seed}:{session_id}") if seed is not None else None
    for group, n in zip(groups, counts, strict=True):
        picked = rng.sample(group, n) if rng else [group[i] for i in _spread(len(group), n)]
        weight.update((t.position, len(group) / n) for t in picked)
    return [SampledTurn(t, weight[t.position]) for t in turns if t.position in weight]


def sample_turns(
    turns: Sequence[TherapistTurn], k: int | None, seed: int | None, session_id: str
) -> list[TherapistTurn]:
    """The turns to judge, in session order (all of them when ``k`` is None or large enough)."""
    return [s.turn for s in weighted_sample(turns, k, seed, session_id)]
