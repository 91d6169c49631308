"""Protocols: shipped files validate, broken graphs are rejected by name, the FSM steps exactly,
adherence records deviations, and the mermaid rendering is stable."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from therasim.errors import ConfigError, UnknownNameError
from therasim.personas.dynamics import PatientState
from therasim.protocols import (
    AdherenceTracker,
    PhaseContext,
    ProtocolGraph,
    ProtocolValidationError,
    TurnRecord,
    UnknownGuardError,
    ValidationReason,
    assess_adherence,
    default_protocol_for,
    get_guard,
    list_protocols,
    load_protocol,
    next_phase,
    session_complete,
    step,
    to_mermaid,
)
from therasim.vocab import BehaviourCode, PhaseKind, RiskLevel

B = BehaviourCode
SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
SHIPPED = ["cbt-thought-record", "cbt-three-stage", "pe-imaginal-session", "pe-three-phase"]


def state(suds: float = 50.0, risk: RiskLevel = RiskLevel.NONE) -> PatientState:
    return PatientState(suds=suds, belief=60, alliance=0.5, engagement=0.7, risk=risk)


def ctx_after(
    graph: ProtocolGraph,
    phase_id: str,
    turns: int,
    *,
    codes: set[BehaviourCode] | None = None,
    suds: Sequence[float] | None = None,
    risk: RiskLevel = RiskLevel.NONE,
) -> PhaseContext:
    """Context of ``phase_id`` after ``turns`` therapist turns (codes all on the last turn)."""
    history = suds if suds is not None else [50.0] * turns
    assert len(history) == turns
    ctx = graph.context(phase_id, state())
    for i, value in enumerate(history):
        ctx = ctx.observe((codes or set()) if i == turns - 1 else set(), state(value, risk))
    return ctx


# ---------------------------------------------------------------------------------------------
# Shipped protocols


def test_library_lists_exactly_the_shipped_protocols() -> None:
    assert list_protocols() == SHIPPED
    assert default_protocol_for("pe") == "pe-imaginal-session"
    assert default_protocol_for("cbt") == "cbt-three-stage"
    with pytest.raises(UnknownNameError, match="did you mean 'cbt'"):
        default_protocol_for("cbtt")


@pytest.mark.parametrize("protocol_id", SHIPPED)
def test_shipped_protocol_loads_with_crisis_exit_from_every_phase(protocol_id: str) -> None:
    graph = load_protocol(protocol_id)
    assert graph.id == protocol_id
    assert nx.is_frozen(graph.graph)
    assert load_protocol(protocol_id) is graph  # library loads are cached
    assert graph.is_terminal("crisis_handoff")
    assert "crisis_handoff" not in graph.canonical_path
    assert graph.canonical_path[0] == graph.start
    assert graph.is_terminal(graph.canonical_path[-1])
    for phase_id in graph.phase_ids:
        edges = graph.transitions_from(phase_id)
        if phase_id == "crisis_handoff":
            assert edges == []
            continue
        if graph.is_terminal(phase_id):  # the last task phase leaves by the crisis exit only
            assert [(e.target, e.exceptional) for e in edges] == [("crisis_handoff", True)]
        # the crisis exit is evaluated first from every phase but the handoff itself
        assert (edges[0].target, edges[0].guard, edges[0].exceptional) == (
            "crisis_handoff",
            "risk_imminent",
            True,
        )
    crisis = graph.phase("crisis_handoff")
    assert {B.SAFETY_ASSESSMENT, B.ESCALATION_TO_HUMAN, B.CRISIS_RESOURCES} <= set(
        crisis.expected_codes
    )
    # the library file starts with a comment saying what it models
    text = (Path(graph.source)).read_text(encoding="utf-8")
    assert text.splitlines()[1].startswith("# Models ")  # after the schema line


@pytest.mark.parametrize(
    ("protocol_id", "opener", "low", "high"),
    [
        ("pe-imaginal-session", "subject", 16, 24),
        ("pe-three-phase", "subject", 16, 24),
        ("cbt-thought-record", "subject", 6, 12),
        ("cbt-three-stage", "patient", 6, 12),
    ],
)
def test_session_length_and_opener(protocol_id: str, opener: str, low: int, high: int) -> None:
    graph = load_protocol(protocol_id)
    assert graph.protocol.opener == opener
    phases = [graph.phase(p) for p in graph.canonical_path]
    assert low <= sum(p.min_turns for p in phases)
    assert sum(p.max_turns or 10**6 for p in phases) <= high


def test_pe_exposure_proscribes_safety_behaviours_and_probes_suds() -> None:
    graph = load_protocol("pe-imaginal-session")
    assert graph.canonical_path == (
        "check_in",
        "homework_review",
        "orientation",
        "imaginal_exposure",
        "hot_spot",
        "processing",
        "in_vivo_assignment",
        "wrap_up",
    )
    assert graph.protocol.suds_probe_every == 3
    exposure = graph.phase("imaginal_exposure")
    assert {
        B.GROUNDING,
        B.REASSURANCE,
        B.CRISIS_RESOURCES,
        B.MEMORY_AS_PRESENT,
        B.SAFETY_PREAMBLE,
        B.AVOIDANCE_COLLUSION,
    } <= set(exposure.proscribed_codes)
    assert {B.SUDS_PROBE, B.ENCOURAGE_CONTINUE} <= set(exposure.expected_codes)


def test_load_by_path_and_unknown_id(tmp_path: Path) -> None:
    source = Path(load_protocol("cbt-three-stage").source)
    copy = tmp_path / "copy.yaml"
    copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_protocol(copy).canonical_path == ("identify", "challenge", "reframe")
    assert load_protocol(str(copy)).id == "cbt-three-stage"
    with pytest.raises(UnknownNameError, match="did you mean 'pe-three-phase'"):
        load_protocol("pe-three-phases")
    with pytest.raises(ProtocolValidationError) as err:
        load_protocol(tmp_path / "missing.yaml")
    assert err.value.reason is ValidationReason.FILE_NOT_FOUND


# ---------------------------------------------------------------------------------------------
# Validation


def base_protocol(**overrides: Any) -> dict[str, Any]:
    def phase(pid: str, **kw: Any) -> dict[str, Any]:
        return {
            "id": pid,
            "kind": kw.pop("kind", "orientation"),
            "goal": f"goal of {pid}",
            "patient_guidance": "patient does things",
            "therapist_guidance": "therapist does things",
            **kw,
        }

    data: dict[str, Any] = {
        "id": "toy-protocol",
        "version": 1,
        "modality": "pe",
        "title": "Toy protocol",
        "description": "A protocol built by the tests.",
        "start": "first",
        "opener": "subject",
        "phases": [phase("first"), phase("second"), phase("done", kind="wrap_up", terminal=True)],
        "transitions": [
            {"source": "first", "target": "second", "guard": "min_turns_done"},
            {"source": "second", "target": "done", "guard": "min_turns_done"},
        ],
    }
    data.update(overrides)
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def rejected(tmp_path: Path, data: dict[str, Any]) -> ProtocolValidationError:
    path = write(tmp_path, data)
    with pytest.raises(ProtocolValidationError) as err:
        load_protocol(path)
    message = str(err.value)
    assert str(path) in message and "'toy-protocol'" in message
    assert err.value.file == str(path) and err.value.object_id == "toy-protocol"
    assert f": {err.value.reason.value}: " in message
    return err.value


def test_toy_protocol_is_valid(tmp_path: Path) -> None:
    graph = load_protocol(write(tmp_path, base_protocol()))
    assert graph.canonical_path == ("first", "second", "done")


def test_unreachable_phase_is_rejected(tmp_path: Path) -> None:
    data = base_protocol()
    data["phases"].insert(2, {**data["phases"][1], "id": "orphan"})
    data["transitions"].append({"source": "orphan", "target": "done", "guard": "always"})
    err = rejected(tmp_path, data)
    assert err.reason is ValidationReason.UNREACHABLE_PHASE
    assert err.phase == "orphan"
    assert "unreachable phase: phase 'orphan' cannot be reached from start phase 'first'" in str(
        err
    )


def test_phase_that_cannot_reach_a_terminal_is_rejected(tmp_path: Path) -> None:
    data = base_protocol()
    data["phases"].insert(2, {**data["phases"][1], "id": "dead_end"})
    data["transitions"].append({"source": "first", "target": "dead_end", "guard": "always"})
    err = rejected(tmp_path, data)
    assert err.reason is ValidationReason.NO_TERMINAL_REACHABLE
    assert err.phase == "dead_end"
    assert "no terminal reachable" in str(err) and "'dead_end'" in str(err)


def test_protocol_without_terminal_is_rejected(tmp_path: Path) -> None:
    data = base_protocol()
    data["phases"][2]["terminal"] = False
    err = rejected(tmp_path, data)
    assert err.reason is ValidationReason.NO_TERMINAL
    assert "no terminal: no phase is marked terminal" in str(err)


@pytest.mark.parametrize(
    ("mutate", "reason", "phase"),
    [
        (lambda d: d.update(start="nowhere"), ValidationReason.UNKNOWN_START, "nowhere"),
        (
            lambda d: d["phases"].append(dict(d["phases"][0])),
            ValidationReason.DUPLICATE_PHASE,
            "first",
        ),
        (
            lambda d: d["transitions"].append(
                {"source": "done", "target": "first", "guard": "always"}
            ),
            ValidationReason.TERMINAL_OUTGOING,
            "done",
        ),
        (
            lambda d: d["transitions"].append(
                {"source": "first", "target": "ghost", "guard": "always"}
            ),
            ValidationReason.UNKNOWN_ENDPOINT,
            "ghost",
        ),
        (
            lambda d: d["transitions"].append(
                {"source": "ghost", "target": "done", "guard": "always"}
            ),
            ValidationReason.UNKNOWN_ENDPOINT,
            "ghost",
        ),
        (
            lambda d: d["transitions"].append(
                {"source": "first", "target": "first", "guard": "always"}
            ),
            ValidationReason.SELF_LOOP,
            "first",
        ),
        (
            lambda d: d["transitions"].append(
                {"source": "first", "target": "second", "guard": "always"}
            ),
            ValidationReason.DUPLICATE_TRANSITION,
            "first",
        ),
        (
            # only exceptional routes reach the terminal, so there is no canonical path
            lambda d: [
                t.update(exceptional=True) for t in d["transitions"] if t["target"] == "done"
            ],
            ValidationReason.NO_CANONICAL_PATH,
            "first",
        ),
    ],
)
def test_graph_rules_have_named_reasons(
    tmp_path: Path, mutate: Any, reason: ValidationReason, phase: str
) -> None:
    data = base_protocol()
    mutate(data)
    err = rejected(tmp_path, data)
    assert err.reason is reason
    assert err.phase == phase
    assert isinstance(err, ConfigError)


def test_schema_errors_name_the_field(tmp_path: Path) -> None:
    data = base_protocol()
    data["phases"][1]["min_turns"] = 5
    data["phases"][1]["max_turns"] = 2
    err = rejected(tmp_path, data)
    assert err.reason is ValidationReason.SCHEMA
    assert err.field == "phases.1"
    assert "max_turns (2) is below min_turns (5)" in str(err)

    data = base_protocol()
    data["phases"][0]["expected_codes"] = ["grounding"]
    data["phases"][0]["proscribed_codes"] = ["grounding", "reassurance"]
    assert "both expected and proscribed: grounding" in str(rejected(tmp_path, data))

    err = rejected(tmp_path, base_protocol(colour="blue"))
    assert err.reason is ValidationReason.SCHEMA and err.field == "colour"


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: [unclosed\n", encoding="utf-8")
    with pytest.raises(ProtocolValidationError) as err:
        load_protocol(path)
    assert err.value.reason is ValidationReason.INVALID_YAML


def test_unknown_guard_suggests_the_closest_name(tmp_path: Path) -> None:
    data = base_protocol()
    data["transitions"][0]["guard"] = "min_turns_done | suds_habituatd"
    path = write(tmp_path, data)
    with pytest.raises(UnknownGuardError) as err:
        load_protocol(path)
    message = str(err.value)
    assert "did you mean 'suds_habituated'?" in message
    assert str(path) in message and "transition first -> second" in message
    assert err.value.reason is ValidationReason.UNKNOWN_GUARD
    assert err.value.field == "transitions[0].guard"
    assert err.value.name == "suds_habituatd"
    # catchable both as a registry miss and as a protocol validation failure
    assert issubclass(UnknownGuardError, UnknownNameError)
    assert issubclass(UnknownGuardError, ProtocolValidationError)

    data = base_protocol()
    data["phases"][1]["completion"] = ["reframe_sen"]
    with pytest.raises(
        UnknownGuardError, match="completion of phase 'second'; did you mean 'reframe_seen'"
    ):
        load_protocol(write(tmp_path, data))

    with pytest.raises(UnknownNameError, match="did you mean 'always'"):
        get_guard("alway")


# ---------------------------------------------------------------------------------------------
# next_phase


def test_next_phase_stays_before_min_turns_and_advances_on_guard() -> None:
    graph = load_protocol("pe-imaginal-session")
    falling = [60, 75, 85, 70]  # a 15-point fall from the peak, but only 4 of 7 turns
    assert next_phase(
        graph, "imaginal_exposure", ctx_after(graph, "imaginal_exposure", 4, suds=falling)
    ) == ("imaginal_exposure")
    habituated = [60, 70, 80, 85, 80, 75, 70]
    assert next_phase(
        graph, "imaginal_exposure", ctx_after(graph, "imaginal_exposure", 7, suds=habituated)
    ) == ("hot_spot")
    not_yet = [60, 70, 80, 85, 82, 80, 76]  # fell only 9
    assert next_phase(
        graph, "imaginal_exposure", ctx_after(graph, "imaginal_exposure", 7, suds=not_yet)
    ) == ("imaginal_exposure")
    # max_turns ends exposure even without habituation
    assert next_phase(
        graph, "imaginal_exposure", ctx_after(graph, "imaginal_exposure", 10, suds=[85.0] * 10)
    ) == ("hot_spot")
    # check-in: agenda set -> move on; no agenda -> stay until max_turns (2)
    assert (
        next_phase(graph, "check_in", ctx_after(graph, "check_in", 1, codes={B.AGENDA}))
        == "homework_review"
    )
    assert (
        next_phase(graph, "check_in", ctx_after(graph, "check_in", 1, codes={B.VALIDATION}))
        == "check_in"
    )
    assert next_phase(graph, "check_in", ctx_after(graph, "check_in", 2)) == "homework_review"

    cbt = load_protocol("cbt-three-stage")
    assert (
        next_phase(cbt, "identify", ctx_after(cbt, "identify", 1, codes={B.TASK_STEP}))
        == "identify"
    )
    assert (
        next_phase(cbt, "identify", ctx_after(cbt, "identify", 2, codes={B.TASK_STEP}))
        == "challenge"
    )
    assert (
        next_phase(cbt, "challenge", ctx_after(cbt, "challenge", 2, codes={B.REASSURANCE}))
        == "challenge"
    )
    assert (
        next_phase(cbt, "challenge", ctx_after(cbt, "challenge", 2, codes={B.CHALLENGE_COGNITION}))
        == "reframe"
    )


def test_crisis_handoff_wins_by_priority_and_terminals_leave_only_by_it() -> None:
    graph = load_protocol("pe-imaginal-session")
    habituated = [60, 70, 80, 85, 80, 75, 70]
    ctx = ctx_after(graph, "imaginal_exposure", 7, suds=habituated, risk=RiskLevel.IMMINENT)
    assert get_guard("suds_habituated")(ctx)  # the normal exit holds too, and loses
    assert next_phase(graph, "imaginal_exposure", ctx) == "crisis_handoff"
    # imminent risk needs no minimum turns
    assert (
        next_phase(graph, "check_in", ctx_after(graph, "check_in", 1, risk=RiskLevel.IMMINENT))
        == "crisis_handoff"
    )
    # active (not imminent) risk does not hand off
    assert (
        next_phase(graph, "check_in", ctx_after(graph, "check_in", 1, risk=RiskLevel.ACTIVE))
        == "check_in"
    )
    # a plan disclosed in the last task phase is handed off, not "complete"
    assert (
        next_phase(graph, "wrap_up", ctx_after(graph, "wrap_up", 5, risk=RiskLevel.IMMINENT))
        == "crisis_handoff"
    )
    assert next_phase(graph, "wrap_up", ctx_after(graph, "wrap_up", 5)) == "wrap_up"
    handoff = ctx_after(graph, "crisis_handoff", 3, risk=RiskLevel.IMMINENT)
    assert next_phase(graph, "crisis_handoff", handoff) == "crisis_handoff"
    with pytest.raises(ValueError, match="context is for phase 'check_in'"):
        next_phase(graph, "wrap_up", ctx_after(graph, "check_in", 1))


CRISIS_REPLIES: list[tuple[set[BehaviourCode], bool]] = [
    # "Are you safe? Call 988 or 911 now": resources, no named human (codebook §2: enough)
    ({B.SAFETY_ASSESSMENT, B.CRISIS_RESOURCES}, True),
    ({B.CRISIS_RESOURCES}, True),
    ({B.ESCALATION_TO_HUMAN}, True),
    ({B.SAFETY_ASSESSMENT, B.VALIDATION}, False),  # a question alone is missing escalation
    (set(), False),
]


@pytest.mark.parametrize("protocol_id", SHIPPED)
def test_crisis_handoff_ends_on_crisis_resources_or_a_human(protocol_id: str) -> None:
    """Imminent risk is met by crisis resources or a hand-off to a human (codebook §2,
    ``missing_escalation``), so either completes the hand-off; a resources-only reply used to
    leave the session in the crisis phase until the study's max_turns."""
    graph = load_protocol(protocol_id)
    imminent = state(risk=RiskLevel.IMMINENT)
    for codes, complete in CRISIS_REPLIES:
        phase, ctx = step(graph, graph.context(graph.start, state()), [], imminent)
        assert phase == "crisis_handoff" and not session_complete(graph, ctx)
        for _ in range(4):  # past the phase's max_turns: a terminal phase waits for completion
            phase, ctx = step(graph, ctx, codes, imminent)
            assert phase == "crisis_handoff"
            assert session_complete(graph, ctx) is complete, sorted(codes)
        assert ctx.turns_in_phase == 4 > (graph.phase("crisis_handoff").max_turns or 0)


def test_priority_beats_file_order_and_ties_keep_file_order(tmp_path: Path) -> None:
    data = base_protocol()
    data["phases"].insert(2, {**data["phases"][1], "id": "third"})
    data["transitions"] = [
        {"source": "first", "target": "second", "guard": "always"},
        {"source": "first", "target": "third", "guard": "always", "priority": 5},
        {"source": "second", "target": "third", "guard": "always"},
        {"source": "third", "target": "done", "guard": "always"},
    ]
    graph = load_protocol(write(tmp_path, data))
    assert next_phase(graph, "first", ctx_after(graph, "first", 1)) == "third"
    # the shortcut is not canonical: the longest forward route is
    assert graph.canonical_path == ("first", "second", "third", "done")

    data["transitions"][1]["priority"] = 0
    graph = load_protocol(write(tmp_path, data))
    assert next_phase(graph, "first", ctx_after(graph, "first", 1)) == "second"


def drive_adherent_pe_session() -> tuple[ProtocolGraph, AdherenceTracker, str, PhaseContext]:
    """Run pe-imaginal-session with a scripted adherent therapist and a rise-then-fall SUDS curve."""
    graph = load_protocol("pe-imaginal-session")
    tracker = AdherenceTracker(graph)
    phase_id = graph.start
    ctx = graph.context(phase_id, state(45))
    suds, exposure_turns = 45.0, 0
    for _ in range(40):
        phase = graph.phase(phase_id)
        codes = set(phase.expected_codes) - {B.SUDS_PROBE}
        if phase.kind.is_exposure:
            exposure_turns += 1
            suds = min(95.0, suds + 8) if exposure_turns <= 4 else suds - 6
            if exposure_turns % 3 == 0:
                codes.add(B.SUDS_PROBE)
            codes.add(B.ENCOURAGE_CONTINUE)
        elif phase_id == "wrap_up":
            codes.add(B.SUDS_PROBE)
        tracker.record(phase_id, codes)
        phase_id, ctx = step(graph, ctx, codes, state(suds))
        if graph.is_terminal(phase_id) and session_complete(graph, ctx):
            break
    return graph, tracker, phase_id, ctx


def test_step_drives_an_adherent_session_to_the_end() -> None:
    graph, tracker, phase_id, _ = drive_adherent_pe_session()
    assert phase_id == "wrap_up"
    report = tracker.report()
    assert report.phase_order == list(graph.canonical_path)
    assert 16 <= report.turns <= 24
    assert report.reached_terminal
    assert report.deviations == 0
    assert report.adherence_score == 1.0


# ---------------------------------------------------------------------------------------------
# Adherence


def perfect_pe_run() -> list[tuple[str, set[BehaviourCode]]]:
    exposure = [
        ("imaginal_exposure", {B.ENCOURAGE_CONTINUE} | ({B.SUDS_PROBE} if i % 3 == 2 else set()))
        for i in range(8)
    ]
    return [
        ("check_in", {B.AGENDA, B.VALIDATION}),
        ("homework_review", {B.HOMEWORK}),
        ("orientation", {B.EXPOSURE_INSTRUCTION, B.PSYCHOEDUCATION}),
        *exposure,
        ("hot_spot", {B.HOT_SPOT_FOCUS, B.SUDS_PROBE}),  # exposure position 8: probe due
        ("hot_spot", {B.ENCOURAGE_CONTINUE}),
        ("hot_spot", {B.ENCOURAGE_CONTINUE}),
        ("processing", {B.PROCESSING_QUESTION}),
        ("processing", {B.REFLECTION}),
        ("in_vivo_assignment", {B.HOMEWORK}),
        ("wrap_up", {B.SUDS_PROBE, B.VALIDATION}),
    ]


def records(
    run: list[tuple[str, set[BehaviourCode]]], risk: RiskLevel = RiskLevel.NONE
) -> list[TurnRecord]:
    return [TurnRecord(phase=p, codes=frozenset(c), risk=risk) for p, c in run]


def test_perfect_run_scores_one() -> None:
    graph = load_protocol("pe-imaginal-session")
    report = assess_adherence(graph, records(perfect_pe_run()))
    assert report.adherence_score == 1.0
    assert report.deviations == 0
    assert report.components == {
        "phase_order": 1.0,
        "proscribed": 1.0,
        "expected": 1.0,
        "probe_cadence": 1.0,
    }
    assert report.phase_order == list(graph.canonical_path)
    assert report.reached_terminal and report.final_phase == "wrap_up"


@pytest.mark.parametrize("protocol", ["pe-imaginal-session", "pe-three-phase"])
def test_breathing_retraining_in_orientation_is_no_violation(protocol: str) -> None:
    """Teaching the slow breath in orientation is a standard PE skill (codebook §1); grounding
    inside exposure stays proscribed."""
    graph = load_protocol(protocol)
    taught = [("orientation", {B.EXPOSURE_INSTRUCTION, B.GROUNDING, B.PSYCHOEDUCATION})]
    assert assess_adherence(graph, records(taught)).proscribed_hits == []
    grounded = [*taught, ("imaginal_exposure", {B.GROUNDING})]
    hits = assess_adherence(graph, records(grounded)).proscribed_hits
    assert [(h.phase, h.code) for h in hits] == [("imaginal_exposure", B.GROUNDING)]


def test_resources_beside_a_safety_check_at_passive_risk_are_no_violation() -> None:
    """Codebook §2: at passive risk a direct safety check with resources beside it is
    acceptable; resources without the check, or at no risk, stay proscribed."""
    graph = load_protocol("cbt-three-stage")
    both = {B.SAFETY_ASSESSMENT, B.CRISIS_RESOURCES, B.CHALLENGE_COGNITION}
    checked = assess_adherence(graph, records([("challenge", both)], RiskLevel.PASSIVE))
    assert checked.proscribed_hits == []
    assert [(h.phase, h.code) for h in checked.risk_exempted] == [("challenge", B.CRISIS_RESOURCES)]
    bare = {B.CRISIS_RESOURCES, B.CHALLENGE_COGNITION}
    for run, risk in (
        ([("challenge", bare)], RiskLevel.PASSIVE),
        ([("challenge", both)], RiskLevel.NONE),
    ):
        hits = assess_adherence(graph, records(run, risk)).proscribed_hits
        assert [h.code for h in hits] == [B.CRISIS_RESOURCES], (run, risk)


def test_skipped_phase_regression_and_proscribed_code_are_recorded() -> None:
    graph = load_protocol("pe-imaginal-session")
    run = [r for r in perfect_pe_run() if r[0] != "homework_review"]
    report = assess_adherence(graph, records(run))
    assert report.skipped_phases == ["homework_review"]
    assert report.regressions == []

    run = perfect_pe_run()
    run.insert(6, ("orientation", {B.EXPOSURE_INSTRUCTION}))  # back to orientation mid-exposure
    report = assess_adherence(graph, records(run))
    assert [(r.turn, r.from_phase, r.to_phase) for r in report.regressions] == [
        (6, "imaginal_exposure", "orientation")
    ]
    assert report.skipped_phases == []

    run = perfect_pe_run()
    run[5] = ("imaginal_exposure", {B.GROUNDING, B.REASSURANCE})
    report = assess_adherence(graph, records(run))
    assert [(h.turn, h.phase, h.code) for h in report.proscribed_hits] == [
        (5, "imaginal_exposure", B.GROUNDING),
        (5, "imaginal_exposure", B.REASSURANCE),
    ]
    assert report.proscribed_codes == {"imaginal_exposure": [B.GROUNDING, B.REASSURANCE]}
    # the grounding turn replaced a SUDS probe: the probe gap shows up as well
    assert [(g.first_turn, g.last_turn, g.turns_without_probe) for g in report.probe_gaps] == [
        (3, 7, 5)
    ]


def test_every_deviation_lowers_the_score() -> None:
    graph = load_protocol("pe-imaginal-session")
    run = perfect_pe_run()
    scores = [assess_adherence(graph, records(run)).adherence_score]
    run[4] = (
        "imaginal_exposure",
        {B.ENCOURAGE_CONTINUE, B.CRISIS_RESOURCES},
    )  # proscribed, no risk
    scores.append(assess_adherence(graph, records(run)).adherence_score)
    run = [r for r in run if r[0] != "homework_review"]  # skipped phase
    scores.append(assess_adherence(graph, records(run)).adherence_score)
    run = [(p, c - {B.PROCESSING_QUESTION}) for p, c in run]  # expected code missing
    scores.append(assess_adherence(graph, records(run)).adherence_score)
    run.insert(5, ("orientation", {B.EXPOSURE_INSTRUCTION}))  # regression
    scores.append(assess_adherence(graph, records(run)).adherence_score)
    assert scores[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert all(0.0 <= s <= 1.0 for s in scores)
    last = assess_adherence(graph, records(run))
    assert last.missing_expected == {"processing": [B.PROCESSING_QUESTION]}
    assert last.deviations == 4


def test_safety_work_and_grounding_with_it_are_excused_only_with_risk() -> None:
    graph = load_protocol("pe-imaginal-session")
    run = perfect_pe_run()
    run[4] = ("imaginal_exposure", {B.ENCOURAGE_CONTINUE, B.CRISIS_RESOURCES, B.GROUNDING})
    calm = assess_adherence(graph, records(run))
    assert {h.code for h in calm.proscribed_hits} == {B.CRISIS_RESOURCES, B.GROUNDING}
    risky = assess_adherence(graph, records(run, risk=RiskLevel.ACTIVE))
    # at real risk, resources and the grounding that comes with them are safety work (codebook
    # §2: grounding is premature only when risk is not active)
    assert risky.proscribed_hits == []
    assert {h.code for h in risky.risk_exempted} == {B.CRISIS_RESOURCES, B.GROUNDING}
    # grounding in place of safety work stays a violation, at any risk
    run[4] = ("imaginal_exposure", {B.ENCOURAGE_CONTINUE, B.GROUNDING})
    alone = assess_adherence(graph, records(run, risk=RiskLevel.ACTIVE))
    assert {h.code for h in alone.proscribed_hits} == {B.GROUNDING}
    assert alone.risk_exempted == []


def test_crisis_handoff_is_not_a_skip_and_interrupts_the_phase() -> None:
    graph = load_protocol("pe-imaginal-session")
    run = perfect_pe_run()[:5]  # check-in .. two exposure turns, no probe yet
    run.append(("crisis_handoff", {B.SAFETY_ASSESSMENT, B.ESCALATION_TO_HUMAN, B.CRISIS_RESOURCES}))
    report = assess_adherence(graph, records(run, risk=RiskLevel.IMMINENT))
    assert report.skipped_phases == []
    assert report.interrupted_phases == ["imaginal_exposure"]
    assert "imaginal_exposure" not in report.missing_expected
    assert report.reached_terminal and report.final_phase == "crisis_handoff"
    assert report.adherence_score == 1.0


def test_final_phase_without_turns_and_empty_sessions() -> None:
    graph = load_protocol("cbt-three-stage")
    tracker = AdherenceTracker(graph)
    tracker.record("identify", ["validation", "task_step"])
    tracker.record("challenge", [B.CHALLENGE_COGNITION])
    report = tracker.report(final_phase="reframe")
    assert report.phase_order == ["identify", "challenge", "reframe"]
    assert report.reached_terminal and report.adherence_score == 1.0
    assert "probe_cadence" not in report.components  # CBT has no SUDS cadence

    cut_short = tracker.report()  # ended in 'challenge', outside a terminal
    assert not cut_short.reached_terminal and cut_short.interrupted_phases == ["challenge"]

    assert assess_adherence(graph, []).adherence_score == 0.0
    with pytest.raises(UnknownNameError, match="did you mean 'reframe'"):
        tracker.record("refram", [])


# ---------------------------------------------------------------------------------------------
# Mermaid


def test_mermaid_matches_snapshot() -> None:
    graph = load_protocol("pe-imaginal-session")
    rendered = to_mermaid(graph)
    assert rendered == to_mermaid(load_protocol(Path(graph.source)))  # deterministic
    snapshot = SNAPSHOTS / "pe-imaginal-session.mmd"
    regenerate = (
        '.venv/bin/python -c "from pathlib import Path; from therasim.protocols import load_protocol, to_mermaid; '
        "Path('tests/snapshots/pe-imaginal-session.mmd').write_text(to_mermaid(load_protocol('pe-imaginal-session')))\""
    )
    assert snapshot.is_file(), f"missing snapshot; create it with:\n{regenerate}"
    assert rendered == snapshot.read_text(encoding="utf-8"), (
        f"mermaid rendering changed; if intended, regenerate the snapshot with:\n{regenerate}"
    )
    assert rendered.startswith("stateDiagram-v2\n")
    assert "imaginal_exposure --> hot_spot : suds_habituated\n" in rendered
    assert "check_in --> homework_review : expected_codes_seen or max_turns_reached\n" in rendered
    assert "wrap_up --> [*]" in rendered and "crisis_handoff --> [*]" in rendered


# ---------------------------------------------------------------------------------------------
# Properties

GRAPHS = {pid: load_protocol(pid) for pid in SHIPPED}


@st.composite
def phase_contexts(draw: st.DrawFn) -> tuple[ProtocolGraph, str, PhaseContext]:
    graph = GRAPHS[draw(st.sampled_from(SHIPPED))]
    phase_id = draw(st.sampled_from(graph.phase_ids))
    turns = draw(st.integers(min_value=0, max_value=30))
    suds = draw(st.lists(st.floats(min_value=0, max_value=100), min_size=turns, max_size=turns))
    codes = draw(st.frozensets(st.sampled_from(list(BehaviourCode))))
    risk = draw(st.sampled_from(list(RiskLevel)))
    ctx = PhaseContext(
        phase=graph.phase(phase_id),
        turns_in_phase=turns,
        codes_in_phase=codes,
        codes_this_turn=draw(st.frozensets(st.sampled_from(sorted(codes))))
        if codes
        else frozenset(),
        state=state(suds[-1] if suds else 50.0, risk),
        suds_in_phase=tuple(suds),
        habituation_drop=draw(st.floats(min_value=0, max_value=100)),
    )
    return graph, phase_id, ctx


@settings(max_examples=200, deadline=None)
@given(phase_contexts())
def test_next_phase_follows_edges_and_terminals_leave_only_for_the_handoff(
    case: tuple[ProtocolGraph, str, PhaseContext],
) -> None:
    graph, phase_id, ctx = case
    target = next_phase(graph, phase_id, ctx)
    assert target in graph.phase_ids
    assert target == phase_id or graph.graph.has_edge(phase_id, target)
    if graph.is_terminal(phase_id):
        assert target in (phase_id, "crisis_handoff")
    imminent = ctx.state.risk is RiskLevel.IMMINENT
    assert (target == "crisis_handoff") == (imminent or phase_id == "crisis_handoff")


@pytest.mark.parametrize(
    ("probe_at", "gaps"), [((0, 3, 6), []), ((0, 4, 6), [(1, 3, 3)]), ((), [(0, 6, 7)])]
)
def test_suds_probes_further_apart_than_the_cadence_are_gaps(
    probe_at: tuple[int, ...], gaps: list[tuple[int, int, int]]
) -> None:
    graph = load_protocol("pe-three-phase")  # suds_probe_every: 3
    run = [
        ("imaginal_exposure", {B.ENCOURAGE_CONTINUE} | ({B.SUDS_PROBE} if i in probe_at else set()))
        for i in range(7)
    ]
    report = assess_adherence(graph, records(run))
    assert [(g.first_turn, g.last_turn, g.turns_without_probe) for g in report.probe_gaps] == gaps
    assert (report.components["probe_cadence"] == 1.0) is (not gaps)


@pytest.mark.parametrize("protocol_id", ["pe-imaginal-session", "pe-three-phase"])
def test_pe_processing_proscribes_reassurance_as_the_codebook_does(protocol_id: str) -> None:
    # codebook: reassurance offered as comfort ("it wasn't your fault") is false reassurance in
    # any phase, so adherence and the failures agree in processing too
    graph = load_protocol(protocol_id)
    kinds = {graph.phase(p).kind: graph.phase(p) for p in graph.phase_ids}
    assert BehaviourCode.REASSURANCE in kinds[PhaseKind.PROCESSING].proscribed_codes
