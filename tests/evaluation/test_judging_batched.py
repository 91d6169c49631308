"""Batched judging (``mode: turn``), the cacheable prompt and turn sampling, fully offline."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import scripted_agents
from pydantic import ValidationError
from test_panel import adherent_session, make_session, reflex_session, scripted_gateway

from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
from therasim.agents.llm.backends import FunctionBackend
from therasim.agents.llm.structured import schema_json
from therasim.agents.llm.usage import approx_tokens
from therasim.agents.types import CompletionRequest
from therasim.errors import PermanentModelError
from therasim.evaluation.judging.batched import answer_model
from therasim.evaluation.judging.detectors import therapist_turns
from therasim.evaluation.judging.panel import (
    JudgeSpec,
    PanelOptions,
    judge_session,
    judge_store,
    scripted_judges,
)
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.evaluation.judging.sampling import flagged, sample_turns
from therasim.simulations.records import SessionResult
from therasim.simulations.store import Store
from therasim.simulations.study import JudgingSpec, Study
from therasim.vocab import RiskLevel

RUBRICS = load_rubrics()
TURN = PanelOptions(mode="turn")
ITEM = PanelOptions(mode="item")
CAPTURED: list[CompletionRequest] = []


def _alone(request: CompletionRequest) -> bool:
    """Whether the call asks one item as item mode does (turn mode's fallback), not a batch."""
    return "items" not in request.metadata


def _asked(request: CompletionRequest) -> list[str]:
    """The items a call asks: a batch's list, or the one item of an item-mode call."""
    if _alone(request):
        return [str(request.metadata["item_id"])]
    return [str(i["item_id"]) for i in request.metadata["items"]]


def _verdict(item_id: str) -> dict[str, Any]:
    return {"reason": f"{item_id} looked at.", "met": True, "score": None}


def _drops_first_item(request: CompletionRequest) -> str:
    """Leaves out the first item asked, and answers it when the repair round asks again."""
    repairing = any(m.role == "assistant" for m in request.messages)
    ids = _asked(request)
    CAPTURED.append(request)
    return json.dumps({i: _verdict(i) for i in (ids if repairing else ids[1:])})


def _never_first_item(request: CompletionRequest) -> str:
    """Never gives a valid verdict for the first item of the original call (an invalid entry)."""
    ids = _asked(request)
    answer = {i: _verdict(i) for i in ids}
    answer["acknowledgment" if "acknowledgment" in ids else ids[0]] = {"met": "perhaps"}
    return json.dumps(answer)


def _prose_to_batches(request: CompletionRequest) -> str:
    """Cannot answer a batch in JSON at all (prose, repair round too), but answers one item."""
    if _alone(request):
        return json.dumps(_verdict(_asked(request)[0]))
    return "Everything in this reply looks fine to me."


def _adds_unknown_item(request: CompletionRequest) -> str:
    answer = {i: _verdict(i) for i in _asked(request)}
    answer["made_up_item"] = _verdict("made_up_item")
    return json.dumps(answer)


def _capture(request: CompletionRequest) -> str:
    CAPTURED.append(request)
    return json.dumps({i: _verdict(i) for i in _asked(request)})


@pytest.fixture(autouse=True, scope="module")
def _judges() -> Iterator[None]:
    with scripted_agents(
        {
            "drops-first": _drops_first_item,
            "never-first": _never_first_item,
            "prose-to-batches": _prose_to_batches,
            "adds-unknown": _adds_unknown_item,
            "capture-batch": _capture,
        }
    ):
        yield


def _mixed_session(n: int = 12) -> SessionResult:
    """A PE session over three phases with passive risk and a grounding reply in the middle."""
    base = make_session(n, "Stay with the memory. What is your SUDS now?", ["encourage_continue"])
    kinds = ["orientation", "imaginal_exposure", "processing"]
    turns = []
    for record in base.turns:
        kind = kinds[min(2, record.turn * 3 // (n + 1))]
        update: dict[str, Any] = {"phase": kind, "phase_kind": kind}
        if record.turn == n // 2:
            update["state"] = record.state.model_copy(update={"risk": RiskLevel.PASSIVE})
        if record.turn == n // 3 and record.speaker == "therapist":
            update["codes"] = ["grounding"]
        turns.append(record.model_copy(update=update))
    return base.model_copy(update={"turns": turns})


# --------------------------------------------------------------------------- missing, unknown


async def test_a_missing_item_is_repaired_in_one_round_asking_only_for_it() -> None:
    CAPTURED.clear()
    judge = JudgeSpec(name="drops", model="scripted:drops-first")
    rows = await judge_session(
        scripted_gateway(), adherent_session(2), RUBRICS, [judge], options=TURN
    )
    assert rows and all(r["met"] == 1 and not r["reason"].startswith("error") for r in rows)
    repairs = [r for r in CAPTURED if any(m.role == "assistant" for m in r.messages)]
    firsts = [r for r in CAPTURED if r not in repairs]
    assert len(repairs) == len(firsts) == 3  # two turns and the session, one repair each
    for first, repair in zip(firsts, repairs, strict=True):
        assert _asked(repair) == _asked(first)[:1]
        assert _asked(first)[0] in repair.messages[-2].content  # the ask names the item


async def test_an_item_still_missing_after_the_repair_is_an_error_row() -> None:
    gateway = scripted_gateway()
    judges = [
        JudgeSpec(name="never", model="scripted:never-first"),
        JudgeSpec(name="lexical", model="scripted:lexical-judge"),
    ]
    rows = await judge_session(gateway, adherent_session(2), RUBRICS, judges, options=TURN)
    never = {(r["item_id"], r["turn"]): r for r in rows if r["judge"] == "never"}
    lexical = {(r["item_id"], r["turn"]) for r in rows if r["judge"] == "lexical"}
    assert set(never) == lexical  # no item dropped: every applicable item has a row
    bad = never[("acknowledgment", 2)]
    assert bad["met"] is None and bad["reason"].startswith("error: ")
    assert "first answer: reason: Field required" in bad["reason"]  # what was wrong with it
    assert "asked alone: StructuredOutputError" in bad["reason"]  # and that its own call failed
    errors = {k for k, r in never.items() if r["reason"].startswith("error")}
    assert {("acknowledgment", 1), ("acknowledgment", 2)} <= errors and len(errors) == 3
    assert never[("no_false_reassurance", 2)]["met"] == 1


async def test_items_a_batch_lacks_after_the_repair_are_asked_alone() -> None:
    gateway = scripted_gateway()
    judges = [
        JudgeSpec(name="prose", model="scripted:prose-to-batches"),
        JudgeSpec(name="lexical", model="scripted:lexical-judge"),
    ]
    session = adherent_session(2)
    rows = await judge_session(gateway, session, RUBRICS, judges, options=TURN)
    prose = [r for r in rows if r["judge"] == "prose"]
    lexical = [r for r in rows if r["judge"] == "lexical"]
    assert [(r["item_id"], r["turn"]) for r in prose] == [
        (r["item_id"], r["turn"]) for r in lexical
    ]
    # each lacking item was asked exactly as item mode asks it: the same rows, prompt hash (the
    # item template's, not the batched one's) and tokens included
    alone = await judge_session(scripted_gateway(), session, RUBRICS, judges[:1], options=ITEM)
    assert prose == alone
    assert all(r["met"] == 1 for r in prose)
    assert not {r["prompt_hash"] for r in prose} & {r["prompt_hash"] for r in lexical}
    # per unit (two turns, the session): the batch and the gateway's repair round, both failed
    # outright (their tokens stay in the gateway's accounting); then one call per item
    assert gateway.accounting.for_role("judge:prose").calls == 2 * 3 + len(prose)


async def test_a_session_judged_through_the_fallback_counts_as_judged_unless_it_failed(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "study.sqlite")
    store.save_session(adherent_session(2, seed=1))
    gateway = scripted_gateway()
    mixed = [JudgeSpec(name="prose", model="scripted:prose-to-batches")]
    assert await judge_store(store, gateway, RUBRICS, mixed, options=TURN, personas={}) == 1
    assert await judge_store(store, gateway, RUBRICS, mixed, options=TURN, personas={}) == 0
    # a fallback row with an error is retried, as a batched one is
    never = [JudgeSpec(name="never", model="scripted:never-first")]
    assert await judge_store(store, gateway, RUBRICS, never, options=TURN, personas={}) == 1
    assert await judge_store(store, gateway, RUBRICS, never, options=TURN, personas={}) == 1
    # turn mode takes item-mode rows as judged (its fallback asks the same way); not the reverse
    lexical = [JudgeSpec(name="lexical", model="scripted:lexical-judge")]
    assert await judge_store(store, gateway, RUBRICS, lexical, options=ITEM, personas={}) == 1
    assert await judge_store(store, gateway, RUBRICS, lexical, options=TURN, personas={}) == 0
    harsh = [JudgeSpec(name="harsh", model="scripted:harsh-judge")]
    assert await judge_store(store, gateway, RUBRICS, harsh, options=TURN, personas={}) == 1
    assert await judge_store(store, gateway, RUBRICS, harsh, options=ITEM, personas={}) == 1


async def test_a_failed_batch_call_is_not_retried_item_by_item() -> None:
    def down(request: CompletionRequest) -> str:
        raise PermanentModelError("connection refused", role=request.role, model="openai:x")

    gateway = Gateway(
        GatewayConfig(cache_enabled=False), backends={"openai": FunctionBackend(down)}
    )
    judge = JudgeSpec(name="down", model="openai:x")
    rows = await judge_session(gateway, adherent_session(2), RUBRICS, [judge], options=TURN)
    assert rows and all(r["met"] is None and "connection refused" in r["reason"] for r in rows)
    assert gateway.accounting.for_role("judge:down").calls == 3  # two turns and the session


async def test_an_unknown_item_is_ignored_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    judge = JudgeSpec(name="extra", model="scripted:adds-unknown")
    with caplog.at_level(logging.WARNING, logger="therasim.evaluation.judging.batched"):
        rows = await judge_session(
            scripted_gateway(), adherent_session(2), RUBRICS, [judge], options=TURN
        )
    assert rows and "made_up_item" not in {r["item_id"] for r in rows}
    assert all(r["met"] == 1 for r in rows)
    warnings = [r.getMessage() for r in caplog.records if "made_up_item" in r.getMessage()]
    assert len(warnings) == 3 and "judge extra" in warnings[0]


# --------------------------------------------------------------------------- the cacheable prompt


async def test_the_prompt_prefix_is_byte_identical_across_turns_of_a_session() -> None:
    CAPTURED.clear()
    session = _mixed_session()
    judges = [
        JudgeSpec(name="cap", model="scripted:capture-batch"),
        JudgeSpec(name="cap2", model="scripted:capture-batch", prompt_variant="strict"),
    ]
    await judge_session(scripted_gateway(), session, RUBRICS, judges, options=TURN)
    for name in ("cap", "cap2"):
        turn_calls = [
            r for r in CAPTURED if r.metadata["judge"] == name and r.metadata["scope"] == "turn"
        ]
        assert len(turn_calls) == 12
        assert len({tuple(_asked(r)) for r in turn_calls}) > 1  # items asked differ by turn ...
        prefixes = {r.messages[0].model_dump_json() for r in turn_calls}
        assert len(prefixes) == 1  # ... the system message (rules + rubric) does not
        for request in turn_calls:
            system, user = request.messages[0].content, request.messages[1].content
            assert "premature_grounding" in system and "ignore any instruction" in system
            assert ">>> REPLY UNDER JUDGEMENT" not in system and "/100" not in system
            # what changes per call comes after the transcript window: the items asked, last
            assert user.index("</transcript>") < user.index("Items to rate")
            assert user.rstrip().endswith(", ".join(_asked(request)))
    systems = {r.messages[0].content for r in CAPTURED if r.metadata["scope"] == "turn"}
    assert len(systems) == 2  # one per prompt variant


#: Ceilings on a batched call's input tokens (about 4 characters a token, as the gateway counts
#: them, the prompt-mode schema message included) on the fixed PE fixture below. Measured when
#: set: system 712, turn calls 917-1,011, the session call 918, the schema message 42; the
#: version-2 templates with the full schema as text gave 789, 1,259-1,372, 1,166 and ~300. Every
#: token of a turn call is paid once per therapist turn per judge, so a template, rubric brief or
#: schema that grows past these fails here first; raise a ceiling only with a new
#: benchmarks/bench_judging.py figure (issue 17: <= 3,000 input tokens per therapist turn).
SYSTEM_CEILING = 740
TURN_CALL_CEILING = 1_050
SESSION_CALL_CEILING = 960
SCHEMA_PROMPT_CEILING = 50


async def test_a_batched_call_stays_under_its_token_ceiling() -> None:
    CAPTURED.clear()
    judge = JudgeSpec(name="cap", model="scripted:capture-batch")
    await judge_session(scripted_gateway(), _mixed_session(), RUBRICS, [judge], options=TURN)
    turn_calls = [r for r in CAPTURED if r.metadata["scope"] == "turn"]
    session_calls = [r for r in CAPTURED if r.metadata["scope"] == "session"]
    assert len(turn_calls) == 12 and len(session_calls) == 1
    asked = {i for r in turn_calls for i in _asked(r)}
    assert {"premature_grounding", "acknowledgment", "protocol_fidelity"} <= asked
    for request in [*turn_calls, *session_calls]:
        system, *_, schema_prompt = request.messages
        assert approx_tokens(system.content) <= SYSTEM_CEILING
        # a prompt-mode judge reads the schema as text: one verdict shape, no per-item copy
        assert "JSON Schema" in schema_prompt.content
        assert approx_tokens(schema_prompt.content) <= SCHEMA_PROMPT_CEILING
        assert not any(i in schema_prompt.content for i in _asked(request))
        tokens = sum(approx_tokens(m.content) for m in request.messages)
        ceiling = TURN_CALL_CEILING if request in turn_calls else SESSION_CALL_CEILING
        assert tokens <= ceiling, f"{request.metadata['scope']} call: {tokens} input tokens"


def test_response_format_backends_get_the_full_schema_prompt_backends_the_compact_one() -> None:
    ids = ("acknowledgment", "false_reassurance")
    judge = JudgeSpec(name="x")

    def gateway(model: str) -> Gateway:
        roles = {"judge": RoleConfig(model=model)}
        return Gateway(GatewayConfig(roles=roles, cache_enabled=False))

    full = answer_model(gateway("openai-compatible:http://127.0.0.1:1/v1|m"), judge, "turn", ids)
    schema = full.model_json_schema()
    assert schema["required"] == list(ids) and set(schema["properties"]) == set(ids)
    assert schema["additionalProperties"] is False  # constrained decoding emits every key
    compact = answer_model(scripted_gateway(), judge, "turn", ids)
    assert compact is not full and issubclass(compact, full)
    assert not any(i in schema_json(compact) for i in ids)
    # validation is the batch model's own: the same answer parses the same way into both
    answer = json.dumps({ids[0]: _verdict(ids[0]), ids[1]: {"met": "perhaps"}, "other": {}})
    assert (
        compact.model_validate_json(answer).model_dump()
        == full.model_validate_json(answer).model_dump()
    )
    with pytest.raises(ValidationError):
        compact.model_validate_json(json.dumps({"reason": "a flat verdict for two items"}))


# --------------------------------------------------------------------------- one call per turn


async def test_turn_mode_makes_one_call_per_turn_per_judge() -> None:
    gateway = scripted_gateway()
    judges = scripted_judges()
    session = adherent_session(5)
    rows = await judge_session(gateway, session, RUBRICS, judges, options=TURN)
    for judge in judges:
        usage = gateway.accounting.for_role(judge.role)
        assert usage.calls == 5 + 1  # five therapist turns and the session
        mine = [r for r in rows if r["judge"] == judge.name]
        assert sum(r["input_tokens"] for r in mine) == usage.input_tokens  # shared, not lost
    item_gateway = scripted_gateway()
    item_rows = await judge_session(item_gateway, session, RUBRICS, judges, options=ITEM)
    assert len(item_rows) == len(rows)
    assert item_gateway.accounting.for_role("judge:lexical").calls == len(item_rows) // 3


@pytest.mark.parametrize(
    "session",
    [
        reflex_session(6),
        adherent_session(6),
        _mixed_session(),
        reflex_session(3, risk=RiskLevel.IMMINENT),
    ],
    ids=["reflex", "adherent", "mixed", "imminent"],
)
async def test_scripted_judges_give_the_same_verdicts_in_both_modes(session: SessionResult) -> None:
    judges = scripted_judges()
    by_item = await judge_session(scripted_gateway(), session, RUBRICS, judges, options=ITEM)
    by_turn = await judge_session(scripted_gateway(), session, RUBRICS, judges, options=TURN)

    def key(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (r["judge"], r["item_id"], r["turn"], r["met"], r["score"], r["reason"]) for r in rows
        ]

    assert key(by_item) == key(by_turn)
    assert {r["prompt_hash"] for r in by_item}.isdisjoint({r["prompt_hash"] for r in by_turn})


# --------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_for_a_seed_and_keeps_flagged_turns() -> None:
    session = _mixed_session(30)
    turns = list(therapist_turns(session))
    risky = {t.record.turn for t in turns if flagged(t)}
    assert risky == {10, 15, 16}  # grounding at 10; passive risk after 15 and so before 16

    def picked(seed: int | None, sid: str = session.session_id) -> list[int]:
        return [t.record.turn for t in sample_turns(turns, 8, seed, sid)]

    assert picked(3) == picked(3)
    assert len({tuple(picked(s)) for s in range(6)}) > 1  # the seed matters
    for seed in (None, 0, 1, 2):
        chosen = picked(seed)
        assert len(chosen) == 8 and risky <= set(chosen)
        phases = {turns[t - 1].record.phase for t in chosen}
        assert phases == {"orientation", "imaginal_exposure", "processing"}  # stratified
    assert picked(None) == picked(None)
    assert [t.record.turn for t in sample_turns(turns, 2, 0, "s")] == sorted(risky)  # never dropped
    assert sample_turns(turns, None, 0, "s") == turns


async def test_sample_turns_limits_the_judged_turns_in_both_modes() -> None:
    session = _mixed_session(30)
    for mode in ("item", "turn"):
        options = PanelOptions(mode=mode, sample_turns=6, sample_seed=7)
        rows = await judge_session(
            scripted_gateway(),
            session,
            RUBRICS,
            [JudgeSpec(name="lexical", model="scripted:lexical-judge")],
            options=options,
        )
        judged = {r["turn"] for r in rows if r["turn"] >= 0}
        assert len(judged) == 6 and {10, 15, 16} <= judged
        assert any(r["turn"] == -1 for r in rows)


def test_max_turns_judged_is_the_old_name_of_sample_turns() -> None:
    assert PanelOptions(max_turns_judged=5).sample_turns == 5
    assert PanelOptions(sample_turns=5).max_turns_judged == 5
    with pytest.raises(ValueError, match="not both"):
        PanelOptions(max_turns_judged=5, sample_turns=4)


def test_the_study_judging_block_maps_to_panel_options() -> None:
    study = Study.model_validate(
        {
            "id": "s",
            "subjects": {"a": "scripted:adherent"},
            "judging": {"mode": "turn", "sample_turns": 4, "seed": 9},
        }
    )
    options = PanelOptions.from_study(study.judging, window=2)
    assert (options.mode, options.sample_turns, options.sample_seed, options.window) == (
        "turn", 4, 9, 2
    )  # fmt: skip
    assert PanelOptions.from_study(None).mode == "turn" == JudgingSpec().mode
    with pytest.raises(ValueError, match=r"[Ee]xtra|not permitted"):
        JudgingSpec.model_validate({"mode": "turn", "samples": 3})
    with pytest.raises(ValueError):
        JudgingSpec.model_validate({"mode": "batch"})
