"""The judge panel: judges × rubric items → verdict rows for the store.

How a session is judged
-----------------------
1. **Applicability, in code, before any call.** For every rubric item and every therapist turn
   (turn items) or once (session items) the panel checks the item's modality, its phase kinds
   and its ``applies_when`` condition (:func:`therasim.evaluation.judging.rubric.item_applies`; turn
   items read the patient's state just before the reply, session items the highest risk and the
   peak SUDS). An item that does not apply costs no call and gets **no row** — so a missing row
   means "not applicable", and ``met=None`` in a row means the judge could not decide or failed.
2. **Which turns.** Turn items are judged on every therapist turn, or — with
   ``PanelOptions.sample_turns = K`` — on a sample of at least K turns per session: every turn
   whose state or codes flag risk or a failure, the rest stratified by phase, drawn with
   ``sample_seed`` (or spread evenly without one; :mod:`therasim.evaluation.judging.sampling`),
   each row keeping its turn's design weight. Default: every turn.
3. **Bounded inputs** (:mod:`therasim.evaluation.judging.context`). A turn sees the reply under
   judgement plus at most ``window`` previous utterances, the phase, its goal and the patient's
   state, so judge tokens grow linearly with session length. A session item sees a summary
   bounded whatever the length, and the persona facts.
4. **Untrusted data.** Transcript text goes to judges inside ``<transcript> … </transcript>``
   (persona facts inside ``<persona_facts>``) with an instruction to ignore instructions inside;
   delimiter tags in the text are escaped (:func:`escape_untrusted`).
5. **Calls** (``PanelOptions.mode``), all gathered at once; the gateway's per-role concurrency
   and rate limits pace them:

   - ``turn`` (default): one call per judge × therapist turn returning every applicable turn
     item keyed by item id, and one per judge × session for the session items; the
     instructions and the rubric come first and are byte-identical across a session's calls
     (prompt caches hit); missing items get one repair round, then are asked one at a time as
     in item mode (:mod:`therasim.evaluation.judging.batched`);
   - ``item``: one ``gateway.structured(CompletionRequest(role="judge:<name>", …), Verdict)``
     per judge × item × unit (:mod:`therasim.evaluation.judging.item_judging`).

   A failed call or item becomes a row with ``met=None`` and a reason starting ``"error: "``;
   it never stops the panel. Scripted judges give the same verdicts in both modes.

Rows (``Store.save_verdicts``): ``session_id, judge`` (the judge's name), ``item_id, turn``
(therapist turn number, ``-1`` for session items), ``met`` (1/0/None), ``score`` (1–5 for
``score_1_5`` items, else None), ``reason, prompt_hash`` (first 12 hex digits of the sha256 of
the template file — plus the prompt variant's instruction when it has one; see
:func:`prompt_hash`; the batched templates hash differently, so switching to item mode
re-judges, while turn mode takes item-mode rows as judged: a turn-mode row that came from the
item fallback carries the item template's hash too),
``rubric_version`` (``<rubric>@<version>/<item version>``), ``model``, ``input_tokens,
output_tokens`` (in ``turn`` mode a call's tokens shared among its rows, plus a fallback row's
own call), ``weight`` (the turn's design weight under ``sample_turns``: 1 for a flagged turn,
``N_p / n_p`` for one drawn from phase ``p``'s unflagged turns; 1 when every turn is judged and
for session items — what :func:`therasim.evaluation.analysis.metrics.item_means` weighs by).

Calls: every answer a judge's verdicts came from is stored with them, in the same transaction,
as a row of the store's ``calls`` (role ``judge:<name>``, model, tokens, cached-prompt tokens,
cost, whether the response cache answered, latency), so the calls frame shows what judging cost
(:func:`judge_session_calls`; ``judge_store`` writes them). Re-judging a session replaces the
judge's call rows there. A call that failed outright has no answer and no row; the gateway's
own accounting (and so the budget) still counts what it sent.

Scripted judges
---------------
``scripted:lexical-judge``, ``scripted:lenient-judge`` and ``scripted:harsh-judge`` live in
:mod:`therasim.evaluation.judging.scripted_judges` and are registered when this module is imported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from therasim.errors import BudgetExhausted, ConfigError, TherasimError
from therasim.evaluation.judging.batched import ask_batch
from therasim.evaluation.judging.context import (
    persona_facts,
    prefix_items,
    session_summary,
    session_units,
    turn_window,
)
from therasim.evaluation.judging.item_judging import JudgeGateway, ask_item
from therasim.evaluation.judging.judges import (
    JudgeSpec,
    JudgingMode,
    PanelOptions,
    default_judges,
    scripted_judges,
)
from therasim.evaluation.judging.prompts import (
    PROMPT_VARIANTS,
    TemplateName,
    batch_template,
    escape_untrusted,
    item_messages,
    load_template,
    prompt_hash,
)
from therasim.evaluation.judging.rubric import Rubric
from therasim.evaluation.judging.scripted_judges import KNOWN_RESOURCE_NUMBERS
from therasim.evaluation.judging.verdicts import Verdict
from therasim.personas.schema import Persona
from therasim.simulations.records import CallRecord, SessionResult
from therasim.simulations.store import Store

__all__ = [
    "KNOWN_RESOURCE_NUMBERS",
    "PROMPT_VARIANTS",
    "JudgeSpec",
    "PanelOptions",
    "Verdict",
    "default_judges",
    "escape_untrusted",
    "judge_session",
    "judge_session_calls",
    "judge_store",
    "load_template",
    "persona_facts",
    "prompt_hash",
    "scripted_judges",
    "session_summary",
    "turn_window",
]

_messages = item_messages  # the name calibration imports


async def judge_session(
    gateway: JudgeGateway,
    result: SessionResult,
    rubrics: Iterable[Rubric],
    judges: Iterable[JudgeSpec],
    *,
    options: PanelOptions | None = None,
    persona: Persona | None = None,
) -> list[dict[str, Any]]:
    """Judge one session: verdict rows for ``Store.save_verdicts`` (see the module docstring).

    ``persona`` (the variant the session used) feeds the persona facts of session items and the
    baseline when the therapist opened; without it the facts read "unknown". A session with no
    therapist turn gets no rows.
    """
    rows, _ = await judge_session_calls(
        gateway, result, rubrics, judges, options=options, persona=persona
    )
    return rows


async def judge_session_calls(
    gateway: JudgeGateway,
    result: SessionResult,
    rubrics: Iterable[Rubric],
    judges: Iterable[JudgeSpec],
    *,
    options: PanelOptions | None = None,
    persona: Persona | None = None,
) -> tuple[list[dict[str, Any]], list[CallRecord]]:
    """:func:`judge_session`'s rows, and the judges' calls they came from in the order asked
    (judge, unit, item), for ``Store.save_verdicts(rows, {session_id: calls})``."""
    from therasim.simulations.battery import is_battery

    options = options or PanelOptions()
    rubrics = list(rubrics)
    units = session_units(result, rubrics, options, persona)
    if is_battery(result.spec):  # a battery answer is one reply: no session items
        units = [u for u in units if u.scope == "turn"]
    sid = result.session_id
    if options.mode == "turn":
        prefix = {scope: prefix_items(rubrics, units, scope) for scope in ("turn", "session")}
        batches = [
            ask_batch(gateway, sid, judge, unit, prefix[unit.scope], options)
            for judge in judges
            for unit in units
        ]
        answers = await asyncio.gather(*batches)
        rows = [row for batch, _ in answers for row in batch]
    else:
        asks = [
            ask_item(gateway, sid, judge, unit, rubric, item, options)
            for judge in judges
            for unit in units
            for rubric, item in unit.items
        ]
        answers = [([row], responses) for row, responses in await asyncio.gather(*asks)]
        rows = [row for batch, _ in answers for row in batch]
    calls = [CallRecord.of(r) for _, responses in answers for r in responses]
    return sorted(rows, key=lambda r: (r["judge"], r["item_id"], r["turn"])), calls


def _templates(mode: JudgingMode) -> tuple[TemplateName, ...]:
    """The templates whose verdicts count as judged in ``mode``: turn mode's fallback asks items
    alone with the item templates, so their rows count there too (and an item-mode store is
    not re-judged when the mode becomes turn); item mode counts its own only."""
    if mode == "turn":
        return (batch_template("turn"), batch_template("session"), "turn", "session")
    return ("turn", "session")


def _judged(
    store: Store, judges: Sequence[JudgeSpec], mode: JudgingMode = "turn"
) -> set[tuple[str, str]]:
    """(session_id, judge name) pairs already judged with the judge's current templates, no errors."""
    hashes = {j.name: {prompt_hash(t, j.prompt_variant) for t in _templates(mode)} for j in judges}
    seen: set[tuple[str, str]] = set()
    failed: set[tuple[str, str]] = set()
    for row in store.verdicts():
        key = (row.session_id, row.judge)
        if row.prompt_hash not in hashes.get(row.judge, ()):
            continue
        seen.add(key)
        if row.reason.startswith("error:"):
            failed.add(key)
    return seen - failed


def _resolve_persona(result: SessionResult, personas: Mapping[str, Persona]) -> Persona | None:
    """The persona variant the session used, as the runner resolved it (None if unavailable)."""
    from therasim.simulations.battery import battery_persona, is_battery
    from therasim.simulations.records import resolve_persona

    try:
        if is_battery(result.spec):
            return battery_persona(result.spec, dict(personas))
        return resolve_persona(result.spec, dict(personas))
    except TherasimError:  # not in the library, or the library has another version
        return None


async def judge_store(
    store: Store,
    gateway: JudgeGateway,
    rubrics: Iterable[Rubric],
    judges: Iterable[JudgeSpec],
    *,
    session_ids: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    options: PanelOptions | None = None,
    personas: Mapping[str, Persona] | None = None,
    over_budget: Callable[[], bool] | None = None,
) -> int:
    """Judge every completed session in ``store`` that a judge has not judged yet; returns how many.

    A session counts as judged by a judge when it has verdict rows from that judge carrying the
    judge's current prompt hash and none of them is an error row — so editing a template or
    changing a judge's prompt variant re-scores, and errors are retried (with the gateway's
    cache, answers already given cost nothing). Only the judges a session lacks are run on it.
    ``session_ids`` restricts the candidates; ``progress(done, total)`` is called after each
    session; ``personas`` (id → persona) defaults to the packaged library. Returns the number of
    sessions that got new verdict rows. ``over_budget`` is read before each session is judged:
    once true, the sessions left are not judged and :class:`BudgetExhausted` is raised after
    everything judged so far is stored (a rerun with more budget judges the rest).
    """
    options = options or PanelOptions()
    rubrics = list(rubrics)
    judges = list(judges)
    candidates = store.session_ids(status="completed")
    if session_ids is not None:
        candidates &= set(session_ids)
    done = _judged(store, judges, options.mode)
    todo = sorted((sid, [j for j in judges if (sid, j.name) not in done]) for sid in candidates)
    todo = [(sid, js) for sid, js in todo if js]
    if not todo:
        return 0
    library: Mapping[str, Persona] = {}
    if personas is not None:
        library = personas
    else:
        from therasim.personas.loader import load_library

        try:
            library = load_library()
        except ConfigError:
            library = {}
    semaphore = asyncio.Semaphore(options.session_concurrency)
    finished = 0
    judged = 0
    left_unjudged = 0

    async def one(session_id: str, needed: list[JudgeSpec]) -> None:
        nonlocal finished, judged, left_unjudged
        async with semaphore:
            if over_budget is not None and over_budget():
                left_unjudged += 1
                return
            result = store.load_session(session_id)
            if result is not None:
                persona = _resolve_persona(result, library)
                rows, calls = await judge_session_calls(
                    gateway, result, rubrics, needed, options=options, persona=persona
                )
                if rows:
                    store.save_verdicts(rows, {session_id: calls})
                    judged += 1
        finished += 1
        if progress is not None:
            progress(finished, len(todo))

    await asyncio.gather(*(one(sid, js) for sid, js in todo))
    if left_unjudged:
        raise BudgetExhausted(
            f"the study's budget is spent: {left_unjudged} of {len(todo)} sessions left unjudged "
            f"({judged} judged now)",
            done=judged,
        )
    return judged
