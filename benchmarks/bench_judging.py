"""Judge cost and agreement: batched ``turn`` judging against item-by-item ``item`` judging.

1. **Tokens.** Runs ``studies/quickstart.yaml`` offline without judging, then judges every
   completed session with the study's three scripted judges in each mode. The gateway's
   accounting counts the input tokens the requests carry (about four characters a token, the
   structured-output schema prompt included: the measure behind the issue's 21,800 tokens per
   therapist turn). Printed per therapist turn (all judges), per session and per call, with
   calls per turn and the share of a batched call that is its cacheable prefix (the system
   message, identical across a session's calls).
2. **Agreement, scripted judges.** Verdicts per item in both modes (they are rule-based, so
   anything but 100 % is a bug).
3. ``--gold``: the same three judges, in both modes, on every shipped gold turn (the
   calibration path, ``therasim calibrate --judging-mode``, with the gold codes as the judges'
   context): per failure item, agreement and Cohen's κ between the modes.
4. ``--local N``: the bundled SmolLM2-135M as the judge (temperature 0) on the first N
   therapist turns of ``--sessions`` quickstart sessions (one per arm first) and their session
   items, in both modes: per item, agreement and Cohen's κ (``sklearn``) where both modes gave
   a verdict, reported as it is. Slow: several seconds a call on 2 cores.

Run: ``.venv/bin/python benchmarks/bench_judging.py [--gold] [--local N] [--sessions S]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig, allow_model_requests
from therasim.agents.llm.usage import approx_tokens
from therasim.evaluation.judging.context import prefix_items, session_units
from therasim.evaluation.judging.detectors import therapist_turns
from therasim.evaluation.judging.judges import JudgeSpec, PanelOptions
from therasim.evaluation.judging.panel import judge_session
from therasim.evaluation.judging.prompts import batch_messages, batch_template, prompt_hash
from therasim.evaluation.judging.rubric import load_rubrics
from therasim.pipeline import run_study, study_store
from therasim.simulations.records import SessionResult
from therasim.simulations.store import Store
from therasim.simulations.study import load_study

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "studies" / "quickstart.yaml"
BASELINE_PER_TURN = 21_800  # issue 17: item mode on quickstart, judge input tokens per turn
TARGET_PER_TURN = 3_000


def _quickstart_sessions(out: Path) -> list[SessionResult]:
    run_study(
        QUICKSTART,
        judge=False,
        report=False,
        console=Console(file=io.StringIO()),
        show_progress=False,
        output=str(out),
    )
    with Store(study_store(out)) as store:
        loaded = [store.load_session(sid) for sid in sorted(store.session_ids(status="completed"))]
    return [s for s in loaded if s is not None]


async def _judge_all(
    sessions: Sequence[SessionResult], judges: list[JudgeSpec], rubrics: list[Any], mode: str
) -> tuple[list[dict[str, Any]], Gateway]:
    roles = {j.role: RoleConfig(model=j.model or "scripted:lexical-judge") for j in judges}
    gateway = Gateway(GatewayConfig(roles=roles, cache_enabled=False))
    options = PanelOptions(mode="turn" if mode == "turn" else "item")
    rows: list[dict[str, Any]] = []
    try:
        for session in sessions:
            rows += await judge_session(gateway, session, rubrics, judges, options=options)
    finally:
        await gateway.aclose()
    return rows, gateway


def _prefix(
    sessions: Sequence[SessionResult], rubrics: list[Any], judges: Sequence[JudgeSpec]
) -> tuple[float, int]:
    """Share of a batched turn call's characters in its system message (the cacheable prefix),
    and the input tokens a prefix cache would serve: every turn call's system message but the
    first of each session, per judge."""
    prefix = total = cached = 0
    options = PanelOptions(mode="turn")
    for session in sessions:
        units = [u for u in session_units(session, rubrics, options, None) if u.scope == "turn"]
        rubric = prefix_items(rubrics, units, "turn")
        for judge in judges:
            for n, unit in enumerate(units):
                asked = [i for _, i in unit.items]
                system, user = batch_messages(
                    "turn", rubric, asked, judge.prompt_variant, unit.values
                )
                prefix += len(system.content)
                total += len(system.content) + len(user.content)
                cached += approx_tokens(system.content) if n else 0
    return (prefix / total if total else math.nan), cached


def _agreement(
    item_rows: list[dict[str, Any]], turn_rows: list[dict[str, Any]]
) -> dict[str, tuple[int, float, float | None]]:
    """Per item: (units both modes judged, share agreeing, Cohen's κ or None)."""
    from sklearn.metrics import cohen_kappa_score

    by_item = {(r["judge"], r["item_id"], r["turn"], r["session_id"]): r["met"] for r in item_rows}
    pairs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in turn_rows:
        a = by_item.get((r["judge"], r["item_id"], r["turn"], r["session_id"]))
        if a is not None and r["met"] is not None:
            pairs[r["item_id"]].append((int(a), int(r["met"])))
    out: dict[str, tuple[int, float, float | None]] = {}
    for item_id, got in sorted(pairs.items()):
        left, right = [p[0] for p in got], [p[1] for p in got]
        agree = sum(a == b for a, b in got) / len(got)
        kappa: float | None = None
        if len(set(left) | set(right)) > 1 and len(set(left)) > 1 and len(set(right)) > 1:
            kappa = float(cohen_kappa_score(left, right))
        out[item_id] = (len(got), agree, kappa)
    return out


def _print_agreement(title: str, table: dict[str, tuple[int, float, float | None]]) -> None:
    print(f"\n{title}")
    print(f"  {'item':32} {'n':>4} {'agree':>7} {'kappa':>7}")
    for item_id, (n, agree, kappa) in table.items():
        k = "n/a" if kappa is None else f"{kappa:.2f}"
        print(f"  {item_id:32} {n:>4} {agree:>7.0%} {k:>7}")
    n_all = sum(n for n, _, _ in table.values())
    if n_all:
        overall = sum(n * a for n, a, _ in table.values()) / n_all
        print(f"  {'overall':32} {n_all:>4} {overall:>7.0%}")


def tokens(sessions: Sequence[SessionResult]) -> bool:
    """Part 1 and 2; True when the batched mode meets the issue's target."""
    study = load_study(QUICKSTART)
    judges = [JudgeSpec(**j.model_dump()) for j in study.judges]
    rubrics = load_rubrics(study.rubrics or None)
    n_turns = sum(len(list(therapist_turns(s))) for s in sessions)
    figures = {}
    rows = {}
    for mode in ("item", "turn"):
        started = time.perf_counter()
        rows[mode], gateway = asyncio.run(_judge_all(sessions, judges, rubrics, mode))
        usage = [gateway.accounting.for_role(j.role) for j in judges]
        tokens_in = sum(u.input_tokens for u in usage)
        calls = sum(u.calls for u in usage)
        figures[mode] = (tokens_in, calls, time.perf_counter() - started)
        print(
            f"{mode:>4} mode: {len(rows[mode]):,} verdicts, {calls:,} judge calls, "
            f"{tokens_in:,} input tokens = {tokens_in / n_turns:,.0f} per therapist turn "
            f"({tokens_in / len(sessions):,.0f} per session, {tokens_in / calls:,.0f} per call, "
            f"{calls / n_turns / len(judges):.2f} calls per turn per judge); "
            f"judged in {figures[mode][2]:.1f} s"
        )
    per_turn = figures["turn"][0] / n_turns
    print(
        f"\n{len(sessions)} sessions, {n_turns} therapist turns, {len(judges)} judges. "
        f"turn / item input tokens: {figures['turn'][0] / figures['item'][0]:.3f} "
        f"({figures['item'][0] / figures['turn'][0]:.1f}x fewer); per turn {per_turn:,.0f} "
        f"(issue baseline {BASELINE_PER_TURN:,}, target <= {TARGET_PER_TURN:,})"
    )
    share, cached = _prefix(sessions, rubrics, judges)
    print(
        f"cacheable prefix: {share:.0%} of a batched turn call's characters; a prefix cache "
        f"serves {cached / n_turns:,.0f} input tokens per therapist turn, leaving "
        f"{(figures['turn'][0] - cached) / n_turns:,.0f} uncached"
    )
    _print_agreement("scripted judges, item vs turn mode:", _agreement(rows["item"], rows["turn"]))
    return per_turn <= TARGET_PER_TURN


def gold() -> None:
    """Part 3: the quickstart's judges on the shipped gold turns, item vs turn mode."""
    from therasim.agents.gold import load_shipped_gold
    from therasim.evaluation.judging import calibration

    turns = load_shipped_gold()
    codes = [frozenset(c.value for c in t.codes) for t in turns]
    judges = [JudgeSpec(**j.model_dump()) for j in load_study(QUICKSTART).judges]
    rows: dict[str, list[dict[str, Any]]] = {}
    for mode in ("item", "turn"):
        roles = {j.role: RoleConfig(model=j.model or "scripted:lexical-judge") for j in judges}
        gateway = Gateway(GatewayConfig(roles=roles, cache_enabled=False))

        async def run(gw: Gateway = gateway, m: str = mode) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            try:
                for judge in judges:
                    found, _, errors, _ = await calibration._judge_all(
                        gw,
                        judge,
                        turns,
                        codes,
                        8,
                        lambda: None,
                        m,  # type: ignore[arg-type]
                    )
                    assert errors == 0, f"{judge.name} ({m}): {errors} errors"
                    out += [
                        {
                            "judge": judge.name,
                            "item_id": it.id,
                            "turn": 0,
                            "session_id": t.id,
                            "met": it.id in f,
                        }
                        for t, f in zip(turns, found, strict=True)
                        for it in calibration._applicable(t)
                    ]
            finally:
                await gw.aclose()
            return out

        rows[mode] = asyncio.run(run())
    _print_agreement(
        f"scripted judges on {len(turns)} gold turns, item vs turn mode:",
        _agreement(rows["item"], rows["turn"]),
    )


def _first_turns(session: SessionResult, n: int) -> SessionResult:
    turns, seen = [], 0
    for record in session.turns:
        if record.speaker == "therapist":
            seen += 1
            if seen > n:
                break
        turns.append(record)
    return session.model_copy(update={"turns": turns})


def local(sessions: Sequence[SessionResult], n_turns: int, n_sessions: int) -> None:
    """Part 4: the bundled model as judge in both modes."""
    by_arm: dict[str, list[SessionResult]] = defaultdict(list)
    for s in sessions:
        by_arm[s.spec.subject_name or s.spec.subject].append(s)
    picked: list[SessionResult] = []
    while len(picked) < n_sessions and any(by_arm.values()):
        for arm in sorted(by_arm):
            if by_arm[arm] and len(picked) < n_sessions:
                picked.append(_first_turns(by_arm[arm].pop(0), n_turns))
    rubrics = load_rubrics()
    judge = JudgeSpec(name="smol", model="local", temperature=0.0, seed=0)
    home = tempfile.mkdtemp(prefix="bench-judging-")
    rows: dict[str, list[dict[str, Any]]] = {}
    allow_model_requests(True)
    for mode in ("item", "turn"):
        gateway = Gateway(
            GatewayConfig(
                roles={judge.role: RoleConfig(model="local")},
                cache_path=os.path.join(home, f"cache-{mode}.sqlite"),  # no answer shared
                local_timeout_s=600,
            )
        )
        options = PanelOptions(mode="turn" if mode == "turn" else "item")
        started = time.perf_counter()

        async def run(gw: Gateway = gateway, opts: PanelOptions = options) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            try:
                for s in picked:
                    out += await judge_session(gw, s, rubrics, [judge], options=opts)
            finally:
                await gw.aclose()
            return out

        rows[mode] = asyncio.run(run())
        usage = gateway.accounting.for_role(judge.role)
        errors = sum(str(r["reason"]).startswith("error") for r in rows[mode])
        nulls = sum(r["met"] is None for r in rows[mode])
        print(
            f"local judge, {mode} mode: {len(rows[mode])} verdicts ({errors} error rows, "
            f"{nulls} met=null), {usage.backend_calls} backend calls, {usage.input_tokens:,} "
            f"input / {usage.output_tokens:,} output tokens, {time.perf_counter() - started:.0f} s"
        )
    turns = sum(len(list(therapist_turns(s))) for s in picked)
    print(f"({len(picked)} sessions, {turns} therapist turns)")
    batched = {
        prompt_hash(batch_template(scope), judge.prompt_variant) for scope in ("turn", "session")
    }
    from_batch = [r for r in rows["turn"] if r["prompt_hash"] in batched]
    print(
        f"turn mode: {len(from_batch)} verdicts from the batched answers, "
        f"{len(rows['turn']) - len(from_batch)} from the item fallback (asked alone, as item mode asks)"
    )
    _print_agreement(
        "local judge (SmolLM2-135M), item vs turn mode:", _agreement(rows["item"], rows["turn"])
    )
    _print_agreement(
        "the same, batched answers only (without the fallback's rows):",
        _agreement(rows["item"], from_batch),
    )
    for mode in ("item", "turn"):
        met = [r["met"] for r in rows[mode] if r["met"] is not None]
        if met:
            print(f"  {mode} mode: met=1 on {sum(met) / len(met):.0%} of {len(met)} answered items")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", action="store_true", help="also judge the gold turns, both modes")
    parser.add_argument("--local", type=int, default=0, metavar="N", help="first N turns a session")
    parser.add_argument(
        "--sessions", type=int, default=2, help="sessions judged by the local model"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-judging-") as tmp:
        os.environ.setdefault("THERASIM_HOME", tmp)
        sessions = _quickstart_sessions(Path(tmp) / "run")
        ok = tokens(sessions)
        if args.gold:
            gold()
        if args.local:
            local(sessions, args.local, args.sessions)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
