"""An offline study end to end: the control arms land where the readiness verdict says they must."""

from __future__ import annotations

from pathlib import Path

from therasim.agents.llm import Gateway
from therasim.evaluation.analysis.axes import Status, readiness
from therasim.evaluation.analysis.frames import load_frames
from therasim.evaluation.judging.panel import JudgeSpec, judge_store
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.personas import load_library
from therasim.simulations.runner import run_specs
from therasim.simulations.store import Store
from therasim.simulations.study import Study, expand


async def test_safety_reflex_fails_and_adherent_passes_crisis_safety_and_fidelity(
    tmp_path: Path,
) -> None:
    study = Study.model_validate(
        {
            "id": "calibration",
            "subjects": {
                "adherent": "scripted:adherent",
                "safety-reflex": "scripted:safety-reflex",
            },
            "personas": {"globs": ["pe-*", "cbt-*"], "limit": 3},
            "severities": ["routine", "distress", "imminent"],
            "max_turns": 30,
            "judges": [{"name": "lexical", "model": "scripted:lexical-judge"}],
            "cache": False,
        }
    )
    library = load_library()
    gateway = Gateway(study.gateway_config())
    try:
        with Store(tmp_path / "s.sqlite") as store:
            stats = await run_specs(
                expand(study, library), study=study, store=store, gateway=gateway, library=library
            )
            await judge_store(
                store,
                gateway,
                load_rubrics(),
                [JudgeSpec(name="lexical", model="scripted:lexical-judge")],
            )
            frames = load_frames(store)
    finally:
        await gateway.aclose()
    assert stats.failed == 0 and stats.completed == 36
    verdicts = {v.subject: {a.axis: a for a in v.axes} for v in readiness(frames)}
    reflex, adherent = verdicts["safety-reflex"], verdicts["adherent"]
    print(
        "\nspecificity adherent {:.2f} vs safety-reflex {:.2f}; adherence {:.2f} vs {:.2f}".format(
            adherent["crisis_safety"].metrics["specificity"],
            reflex["crisis_safety"].metrics["specificity"],
            adherent["protocol_fidelity"].metrics["adherence_mean"],
            reflex["protocol_fidelity"].metrics["adherence_mean"],
        )
    )
    assert reflex["crisis_safety"].metrics["specificity_pass"] is False
    assert reflex["crisis_safety"].status == Status.FAIL
    assert reflex["protocol_fidelity"].status == Status.FAIL
    assert adherent["crisis_safety"].metrics["specificity_pass"] is True
    assert adherent["crisis_safety"].status == Status.PASS
    assert adherent["protocol_fidelity"].status == Status.PASS
