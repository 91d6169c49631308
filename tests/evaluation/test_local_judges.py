"""Three judges played by the bundled SmolLM2-135M score one stored session (runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from therasim.agents.llm import Gateway, GatewayConfig
from therasim.evaluation.analysis import metrics
from therasim.evaluation.analysis.frames import load_frames
from therasim.evaluation.judging.panel import JudgeSpec, PanelOptions, judge_session
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.personas import load_library
from therasim.simulations.records import SessionSpec, resolve_persona
from therasim.simulations.session import run_session
from therasim.simulations.store import Store

pytestmark = pytest.mark.local_llm


def _safety_reflex_spec(max_turns: int) -> SessionSpec:
    """A short PE session of the safety-reflex arm, for the local judges to score."""
    return SessionSpec(
        persona="pe-combat-01",
        persona_version=1,
        severity="routine",
        subject="scripted:safety-reflex",
        protocol="pe-imaginal-session",
        max_turns=max_turns,
        questionnaires=False,
    )


async def test_three_local_judges_score_a_stored_session(
    local_model: str, real_requests: None, tmp_path: Path
) -> None:
    library = load_library()
    spec = _safety_reflex_spec(max_turns=3)
    gateway = Gateway(GatewayConfig(cache_path=str(tmp_path / "cache.sqlite")))
    try:
        result = await run_session(spec, gateway, library)
        store = Store(tmp_path / "s.sqlite")
        store.save_session(result)
        judges = [
            JudgeSpec(name="t0", model=local_model, temperature=0.0, seed=1),
            JudgeSpec(name="t7", model=local_model, temperature=0.7, seed=2),
            JudgeSpec(
                name="strict", model=local_model, temperature=0.3, seed=3, prompt_variant="strict"
            ),
        ]
        # the PE rubric on the sampled turns (one, plus any flagging risk or a failure: the
        # safety-reflex arm flags them all, three at most), in the default turn mode, keeps CI
        # to a few dozen calls
        rows = await judge_session(
            gateway,
            result,
            load_rubrics(["pe"]),
            judges,
            options=PanelOptions(sample_turns=1),
            persona=resolve_persona(spec, library),
        )
    finally:
        await gateway.aclose()
    assert rows, "no rubric item applied"
    errors = [r for r in rows if str(r["reason"]).startswith("error:")]
    # the sampled judge (temperature 0.7) of a 135M model may miss the JSON on an item even
    # after the repair round; each judge must still answer most items, and errors stay recorded
    for judge in ("t0", "t7", "strict"):
        mine = [r for r in rows if r["judge"] == judge]
        assert mine and sum(r in errors for r in mine) * 2 < len(mine), errors[:2]
    assert not [r for r in errors if r["judge"] == "t0"], errors[:2]
    assert all(r["met"] in (0, 1, None, True, False) for r in rows)
    assert gateway.accounting.total().backend_calls >= len(rows)
    store.save_verdicts(rows)
    frames = load_frames(store)
    agreement = metrics.agreement_table(frames.verdicts)
    overall = agreement[agreement["item_id"] == "overall"].iloc[0]
    print(
        f"\n{len(rows)} verdicts from 3 local judges; Krippendorff's alpha overall = {overall['alpha']}, "
        f"unanimous on {overall['agreement']:.0%} of {int(overall['n_units'])} units"
    )
    print(metrics.judge_bias(frames.verdicts).to_string())
    assert int(overall["n_units"]) >= 1
    store.close()


async def test_a_local_judge_in_turn_mode_rates_every_item_of_a_turn_in_one_call(
    local_model: str, real_requests: None, tmp_path: Path
) -> None:
    """Batched judging with the bundled model: one call per turn (plus repair rounds), and every
    applicable item gets a row, answered or recorded as an error."""
    library = load_library()
    spec = _safety_reflex_spec(max_turns=1)
    gateway = Gateway(GatewayConfig(cache_path=str(tmp_path / "cache.sqlite")))
    judge = JudgeSpec(name="t0", model=local_model, temperature=0.0, seed=1)
    try:
        result = await run_session(spec, gateway, library)
        persona = resolve_persona(spec, library)
        rubrics = load_rubrics(["pe", "failures", "session"])
        item_rows = await judge_session(
            gateway, result, rubrics, [judge], options=PanelOptions(mode="item"), persona=persona
        )
        before = gateway.accounting.for_role(judge.role).calls
        rows = await judge_session(
            gateway, result, rubrics, [judge], options=PanelOptions(mode="turn"), persona=persona
        )
        calls = gateway.accounting.for_role(judge.role).calls - before
    finally:
        await gateway.aclose()
    assert {(r["item_id"], r["turn"]) for r in rows} == {
        (r["item_id"], r["turn"]) for r in item_rows
    }
    units = len({r["turn"] for r in rows})
    assert calls >= units  # one call a unit, plus any repair rounds (counted, not bounded here)
    errors = [r for r in rows if str(r["reason"]).startswith("error:")]
    assert all(r["met"] is None for r in errors)
    by_item = {(r["item_id"], r["turn"]): r["met"] for r in item_rows}
    agree = sum(by_item[(r["item_id"], r["turn"])] == r["met"] for r in rows)
    print(
        f"\nturn vs item mode, local judge: {agree}/{len(rows)} verdicts equal, {len(errors)} "
        f"errors, {calls} calls for {units} units"
    )


async def test_local_model_calibrates_as_appraiser_and_judge(
    local_model: str, real_requests: None, tmp_path: Path
) -> None:
    """The bundled model codes three gold turns and judges their failure items, through the
    same calibration path a study uses; its scores are whatever they are, the report is whole."""
    from therasim.agents.gold import load_shipped_gold, select_split
    from therasim.agents.llm import RoleConfig
    from therasim.evaluation.judging.calibration import calibrate

    turns = select_split(load_shipped_gold(), "test")[:3]
    judge = JudgeSpec(name="smol", model=local_model)
    gateway = Gateway(
        GatewayConfig(
            roles={
                "appraiser": RoleConfig(model=local_model),
                judge.role: RoleConfig(model=local_model),
            },
            cache_path=str(tmp_path / "cache.sqlite"),
        )
    )
    try:
        report = await calibrate(gateway, turns, appraiser=local_model, judges=[judge])
    finally:
        await gateway.aclose()
    assert report.n == 3 and report.coder_errors <= 3
    (smol,) = report.judges
    assert smol.asked >= 3 and smol.errors < smol.asked  # it answered some items with JSON
    assert gateway.accounting.total().backend_calls >= 4  # three codings and some verdicts, real
