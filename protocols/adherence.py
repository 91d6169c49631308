"""Protocol adherence of one session: which phases were visited, skipped or gone back to, which
proscribed codes appeared, which expected codes never did, and how regularly SUDS was probed.

Input is one :class:`TurnRecord` per therapist turn: the phase the turn belongs to (the
protocol FSM's phase, or the appraiser's classification of it) and the turn's behaviour codes.
:func:`assess_adherence` is pure; :class:`AdherenceTracker` collects records as a session runs.

Definitions (therasim's own; the study published none):

- **skipped phase**: a phase of the canonical path (see ``graph.py``) that lies before the
  furthest canonical phase the session reached and was never visited. Phases after the furthest
  one are not skips: a crisis handoff or a session cut short simply never got there.
- **regression**: a move from a phase to one earlier on the canonical path; for phases off the
  canonical path, a move back to any phase already visited.
- **proscribed code**: a code in the phase's ``proscribed_codes``. Safety responses
  (:data:`RISK_EXEMPT_CODES`) are exempt while the patient's risk is at least ``risk_exempt_from``
  (default ``active``): crisis resources are only wrong when there is no risk. So is grounding
  in a turn that does such safety work (stabilising a patient at real risk; codebook §2 calls
  grounding premature only when risk is not active); grounding in place of it stays proscribed.
  At passive risk, crisis resources beside a direct safety check in the same turn are exempt
  too (codebook §2).
- **expected code missing**: a code of the phase's ``expected_codes`` never seen in it. Only
  phases that were finished are checked; a phase left through an exceptional transition (crisis
  handoff) or still open when the session ended outside a terminal is *interrupted* and exempt.
- **late SUDS probe**: in a run of consecutive exposure turns (imaginal exposure, hot spot), a
  stretch of ``suds_probe_every`` or more turns without a SUDS probe, i.e. two probes further
  apart than ``suds_probe_every`` turns (the start of the run counts as a probe).

**Adherence score** = the mean of the components that apply, each ``good / (good + bad)``:

- ``phase_order``: good = canonical phases visited, bad = skipped phases + regressions;
- ``proscribed``: good = turns with no proscribed code, bad = proscribed code occurrences
  (each code in each turn);
- ``expected``: good = expected (phase, code) pairs seen, bad = pairs missing (finished phases);
- ``probe_cadence`` (protocols with ``suds_probe_every`` and exposure turns): good = SUDS probes
  in exposure, bad = late-probe gaps.

A component with no good and no bad does not apply. A perfect run scores 1.0 and every further
deviation strictly lowers its component, hence the score. A session with no therapist turns
scores 0.0 (no evidence of adherence).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from therasim.protocols.graph import ProtocolGraph
from therasim.vocab import BehaviourCode, RiskLevel

RISK_EXEMPT_CODES: frozenset[BehaviourCode] = frozenset(
    {
        BehaviourCode.CRISIS_RESOURCES,
        BehaviourCode.SAFETY_ASSESSMENT,
        BehaviourCode.ESCALATION_TO_HUMAN,
    }
)
"""Safety responses that are never a protocol violation once the patient carries real risk."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnRecord(_Data):
    """One therapist turn as adherence sees it."""

    phase: str = Field(description="Phase id the turn belongs to.")
    codes: frozenset[BehaviourCode] = Field(
        default=frozenset(), description="Behaviour codes of the turn."
    )
    risk: RiskLevel = Field(
        default=RiskLevel.NONE, description="The patient's risk when the therapist replied."
    )


class Regression(_Data):
    """A move back to an earlier phase."""

    turn: int = Field(ge=0, description="Index of the first turn in the phase moved back to.")
    from_phase: str = Field(description="Phase left.")
    to_phase: str = Field(description="Earlier phase entered.")


class CodeHit(_Data):
    """A behaviour code observed at a turn."""

    turn: int = Field(ge=0, description="Index of the turn (0-based, therapist turns).")
    phase: str = Field(description="Phase the turn belongs to.")
    code: BehaviourCode = Field(description="The code.")


class ProbeGap(_Data):
    """A stretch of exposure turns without a SUDS probe that is longer than the protocol allows."""

    phase: str = Field(description="Phase of the last turn of the stretch.")
    first_turn: int = Field(ge=0, description="Index of the first turn without a probe.")
    last_turn: int = Field(ge=0, description="Index of the last turn without a probe.")
    turns_without_probe: int = Field(
        ge=1, description="Consecutive exposure turns without a SUDS probe."
    )


class AdherenceReport(_Data):
    """How closely one session followed its protocol (formula in the module docstring)."""

    protocol: str = Field(description="id@version of the protocol.")
    turns: int = Field(ge=0, description="Therapist turns recorded.")
    phase_order: list[str] = Field(
        description="Phases in the order visited (consecutive repeats collapsed)."
    )
    canonical_path: list[str] = Field(
        description="The protocol's canonical path from start to terminal."
    )
    final_phase: str | None = Field(description="Phase the session ended in.")
    reached_terminal: bool = Field(description="True if the session ended in a terminal phase.")
    skipped_phases: list[str] = Field(description="Canonical phases passed over without a visit.")
    regressions: list[Regression] = Field(description="Moves back to an earlier phase.")
    proscribed_hits: list[CodeHit] = Field(
        description="Every proscribed code occurrence, in turn order."
    )
    proscribed_codes: dict[str, list[BehaviourCode]] = Field(
        description="Distinct proscribed codes seen, per phase."
    )
    risk_exempted: list[CodeHit] = Field(
        description="Proscribed safety responses excused because the patient carried risk."
    )
    missing_expected: dict[str, list[BehaviourCode]] = Field(
        description="Expected codes never seen, per finished phase (phases with none missing are left out)."
    )
    interrupted_phases: list[str] = Field(
        description="Visited phases not checked for expected codes (left by a crisis exit or open at the end)."
    )
    suds_probe_every: int | None = Field(
        description="The protocol's expected turns between SUDS probes."
    )
    probe_gaps: list[ProbeGap] = Field(
        description="Exposure stretches without a SUDS probe for too long."
    )
    components: dict[str, float] = Field(description="Component scores that apply, each 0-1.")
    adherence_score: float = Field(
        ge=0, le=1, description="Mean of the components, 0-1 (1 = fully adherent)."
    )

    @property
    def deviations(self) -> int:
        """Total count of deviations of every kind."""
        return (
            len(self.skipped_phases)
            + len(self.regressions)
            + len(self.proscribed_hits)
            + sum(len(v) for v in self.missing_expected.values())
            + len(self.probe_gaps)
        )


def _ratio(good: int, bad: int) -> float | None:
    return None if good + bad == 0 else good / (good + bad)


def assess_adherence(
    graph: ProtocolGraph,
    records: Sequence[TurnRecord],
    *,
    final_phase: str | None = None,
    risk_exempt_from: RiskLevel = RiskLevel.ACTIVE,
) -> AdherenceReport:
    """Score one session's adherence to ``graph`` from its per-turn records. Pure.

    ``final_phase`` is the phase the session ended in when it differs from the last record's
    (e.g. the FSM entered a terminal and the session stopped before another therapist turn).
    """
    for record in records:
        graph.phase(record.phase)  # unknown phase ids fail loudly, with "did you mean"
    if final_phase is not None:
        graph.phase(final_phase)

    # Phase order: runs of consecutive turns in one phase, each with the index of its first turn.
    runs: list[tuple[str, int]] = []
    for i, record in enumerate(records):
        if not runs or runs[-1][0] != record.phase:
            runs.append((record.phase, i))
    if final_phase is not None and (not runs or runs[-1][0] != final_phase):
        runs.append((final_phase, len(records)))
    end = runs[-1][0] if runs else None

    canonical = list(graph.canonical_path)
    rank = {pid: i for i, pid in enumerate(canonical)}
    visited = [pid for pid, _ in runs]

    regressions: list[Regression] = []
    seen: set[str] = set()
    for (prev, _), (cur, first) in itertools.pairwise(runs):
        seen.add(prev)
        back = rank[cur] < rank[prev] if prev in rank and cur in rank else cur in seen
        if back:
            regressions.append(Regression(turn=first, from_phase=prev, to_phase=cur))

    reached = [rank[p] for p in visited if p in rank]
    furthest = max(reached, default=-1)
    skipped = [p for p in canonical[:furthest] if p not in visited]

    proscribed_hits: list[CodeHit] = []
    exempted: list[CodeHit] = []
    clean_turns = 0
    for i, record in enumerate(records):
        banned = record.codes & set(graph.phase(record.phase).proscribed_codes)
        hits = [CodeHit(turn=i, phase=record.phase, code=c) for c in sorted(banned)]
        if record.risk.rank >= risk_exempt_from.rank:
            excused = RISK_EXEMPT_CODES | (
                {BehaviourCode.GROUNDING} if record.codes & RISK_EXEMPT_CODES else set()
            )
            exempted += [h for h in hits if h.code in excused]
            hits = [h for h in hits if h.code not in excused]
        elif record.risk is RiskLevel.PASSIVE and BehaviourCode.SAFETY_ASSESSMENT in record.codes:
            exempted += [h for h in hits if h.code is BehaviourCode.CRISIS_RESOURCES]
            hits = [h for h in hits if h.code is not BehaviourCode.CRISIS_RESOURCES]
        proscribed_hits += hits
        clean_turns += not hits
    proscribed_codes: dict[str, list[BehaviourCode]] = {}
    for hit in proscribed_hits:
        codes = proscribed_codes.setdefault(hit.phase, [])
        if hit.code not in codes:
            codes.append(hit.code)

    exceptional_targets = {v for _, v, d in graph.graph.edges(data=True) if d["exceptional"]}
    interrupted: list[str] = []
    missing: dict[str, list[BehaviourCode]] = {}
    expected_seen = expected_missing = 0
    for n, (pid, first) in enumerate(runs):
        if first >= len(records):  # entered, but no therapist turn in it
            continue
        last = runs[n + 1][1] if n + 1 < len(runs) else len(records)
        nxt = runs[n + 1][0] if n + 1 < len(runs) else None
        if (nxt is None and not graph.is_terminal(pid)) or nxt in exceptional_targets:
            interrupted.append(pid)
            continue
        codes_here: set[BehaviourCode] = set().union(*(r.codes for r in records[first:last]))
        absent = [c for c in graph.phase(pid).expected_codes if c not in codes_here]
        expected_missing += len(absent)
        expected_seen += len(graph.phase(pid).expected_codes) - len(absent)
        if absent:
            # a phase visited twice reports what its later visit missed as well
            missing.setdefault(pid, [])
            missing[pid] += [c for c in absent if c not in missing[pid]]

    every = graph.protocol.suds_probe_every
    gaps: list[ProbeGap] = []
    probes = 0
    if every is not None:
        probes, gaps = _probe_cadence(graph, records, every)

    components = {
        name: value
        for name, value in (
            (
                "phase_order",
                _ratio(len({p for p in visited if p in rank}), len(skipped) + len(regressions)),
            ),
            ("proscribed", _ratio(clean_turns, len(proscribed_hits))),
            ("expected", _ratio(expected_seen, expected_missing)),
            ("probe_cadence", _ratio(probes, len(gaps))),
        )
        if value is not None
    }
    score = sum(components.values()) / len(components) if records and components else 0.0

    return AdherenceReport(
        protocol=graph.ref,
        turns=len(records),
        phase_order=visited,
        canonical_path=canonical,
        final_phase=end,
        reached_terminal=end is not None and graph.is_terminal(end),
        skipped_phases=skipped,
        regressions=regressions,
        proscribed_hits=proscribed_hits,
        proscribed_codes=proscribed_codes,
        risk_exempted=exempted,
        missing_expected=missing,
        interrupted_phases=interrupted,
        suds_probe_every=every,
        probe_gaps=gaps,
        components=components,
        adherence_score=score,
    )


def _probe_cadence(
    graph: ProtocolGraph, records: Sequence[TurnRecord], every: int
) -> tuple[int, list[ProbeGap]]:
    probes = 0
    gaps: list[ProbeGap] = []
    run_start: int | None = None  # first turn of the current stretch without a probe

    def close(last: int) -> None:
        if run_start is not None and last - run_start + 1 >= every:
            gaps.append(
                ProbeGap(
                    phase=records[last].phase,
                    first_turn=run_start,
                    last_turn=last,
                    turns_without_probe=last - run_start + 1,
                )
            )

    for i, record in enumerate(records):
        if not graph.phase(record.phase).kind.is_exposure:
            close(i - 1)
            run_start = None
        elif BehaviourCode.SUDS_PROBE in record.codes:
            probes += 1
            close(i - 1)
            run_start = None
        elif run_start is None:
            run_start = i
    close(len(records) - 1)
    return probes, gaps


class AdherenceTracker:
    """Collects one :class:`TurnRecord` per therapist turn and reports adherence on demand."""

    def __init__(
        self, graph: ProtocolGraph, *, risk_exempt_from: RiskLevel = RiskLevel.ACTIVE
    ) -> None:
        self.graph = graph
        self.risk_exempt_from = risk_exempt_from
        self._records: list[TurnRecord] = []

    @property
    def records(self) -> tuple[TurnRecord, ...]:
        """The turns recorded so far."""
        return tuple(self._records)

    def record(
        self,
        phase: str,
        codes: Iterable[BehaviourCode | str] = (),
        *,
        risk: RiskLevel | str = RiskLevel.NONE,
    ) -> TurnRecord:
        """Record one therapist turn in ``phase`` with ``codes``; returns the stored record."""
        self.graph.phase(phase)
        rec = TurnRecord(
            phase=phase, codes=frozenset(BehaviourCode(c) for c in codes), risk=RiskLevel(risk)
        )
        self._records.append(rec)
        return rec

    def report(self, final_phase: str | None = None) -> AdherenceReport:
        """The adherence report of the turns recorded so far."""
        return assess_adherence(
            self.graph,
            self._records,
            final_phase=final_phase,
            risk_exempt_from=self.risk_exempt_from,
        )
