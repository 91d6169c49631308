"""Try it: start a session against a persona, play the therapist turn by turn, or hand the
seat to a model and watch it stream; save the session into a run's store.

A turn posted with ``Accept: application/json`` (the page's script) gets the new utterances as
rendered HTML plus the state trajectory, so the chart updates in place; without the script the
form posts and the page reloads. A model's turns stream as server-sent events from
``/play/{key}/stream`` after ``/play/{key}/run`` (a POST, so a link cannot start spending) and
stop at ``/play/{key}/stop``, at the end of the turn in flight.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from therasim.agents.scripted import DEFAULT_OFFLINE_APPRAISER, scripted_names
from therasim.errors import ConfigError
from therasim.simulations.records import TurnRecord
from therasim.studio.app import Studio, studio_of
from therasim.studio.play import CLINICIAN, LiveSession, PlaySettings, trajectory
from therasim.studio.runs import STORE_NAME
from therasim.vocab import Severity

router = APIRouter()
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_STREAM_TURNS = 200


def segments(text: str, evidence: list[dict[str, str]]) -> list[tuple[str, str]]:
    """``text`` cut into (piece, code) parts, code set where an evidence span covers it."""
    marks: list[tuple[int, int, str]] = []
    for ev in evidence:
        span = ev.get("span", "")
        start = text.find(span) if span else -1
        if start >= 0 and all(start >= e or start + len(span) <= s for s, e, _ in marks):
            marks.append((start, start + len(span), ev.get("code", "")))
    out, pos = [], 0
    for s, e, code in sorted(marks):
        out += [(text[pos:s], ""), (text[s:e], code)]
        pos = e
    out.append((text[pos:], ""))
    return [(piece, code) for piece, code in out if piece]


def _settings(fields: dict[str, str]) -> PlaySettings:
    variant: dict[str, Any] = {}
    for line in fields.get("variant", "").splitlines():
        if line.strip():
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"a variant line is ATTRIBUTE=VALUE, got {line!r}", field="variant"
                )
            variant[key.strip()] = value.strip()
    try:
        max_turns = int(fields.get("max_turns") or 20)
        seed = int(fields["seed"]) if fields.get("seed", "").strip() else None
    except ValueError:
        raise ConfigError("max turns and seed must be whole numbers", field="max_turns") from None
    if not 1 <= max_turns <= 200:
        raise ConfigError("max turns must be between 1 and 200", field="max_turns")
    severity = fields.get("severity", "routine")
    if severity not in {s.value for s in Severity}:
        raise ConfigError(f"unknown severity {severity!r}", field="severity")
    seat = fields.get("therapist", "").strip()
    return PlaySettings(
        persona=fields.get("persona", ""),
        severity=severity,
        variant=variant,
        therapist=seat if seat and seat != "clinician" else CLINICIAN,
        patient=fields.get("patient", "").strip() or "scripted:template-patient",
        appraiser=fields.get("appraiser", "").strip() or DEFAULT_OFFLINE_APPRAISER,
        max_turns=max_turns,
        seed=seed,
    )


@router.get("/play")
async def play_start(request: Request, persona: str = "") -> Response:
    """Show the form that starts a session."""
    studio = studio_of(request)
    library = studio.folder.load()
    return studio.render(
        "play_start.html",
        entries=library.filter(),
        chosen=persona,
        severities=[s.value for s in Severity],
        scripted=scripted_names(),
        appraiser=DEFAULT_OFFLINE_APPRAISER,
    )


@router.post("/play")
async def play_new(request: Request) -> Response:
    """Start a session with the form's settings and open its page."""
    studio = studio_of(request)
    settings = _settings(await studio.form(request))
    live = await LiveSession.start(settings, studio.folder.load().personas(), studio.gateway)
    studio.live.add(live)
    return RedirectResponse(f"/play/{live.key}", status_code=303)


def _status(live: LiveSession) -> dict[str, Any]:
    return {
        "phase": live.phase,
        "turns": live.therapist_turns,
        "finished": live.finished,
        "ended": str(live.ended) if live.ended else "",
        "error": live.error or "",
        "trajectory": trajectory(live.initial, live.turns),
    }


def _turns_html(studio: Studio, turns: list[TurnRecord]) -> str:
    return studio.env.get_template("_turns.html").render(turns=turns, segments=segments)


@router.get("/play/{key}")
async def play_page(request: Request, key: str) -> Response:
    """Show a live session: its transcript, state and controls."""
    studio = studio_of(request)
    live = studio.live.get(key)
    return studio.render(
        "play.html",
        live=live,
        turns_html=_turns_html(studio, live.turns),
        st=_status(live),
        runs_folder=studio.config.runs,
        saved=request.query_params.get("saved", ""),
    )


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


@router.post("/play/{key}/turn")
async def play_turn(request: Request, key: str) -> Response:
    """Play the clinician's line and answer with the patient's turn (JSON for the script)."""
    studio = studio_of(request)
    fields = await studio.form(request)
    live = studio.live.get(key)
    new = await live.clinician_turn(fields.get("line", ""))
    if _wants_json(request):
        return JSONResponse({"html": _turns_html(studio, new), **_status(live)})
    return RedirectResponse(f"/play/{key}", status_code=303)


@router.post("/play/{key}/run")
async def play_run(request: Request, key: str) -> Response:
    """Allow the model in the seat to take up to ``turns`` turns on the stream."""
    studio = studio_of(request)
    fields = await studio.form(request)
    live = studio.live.get(key)
    if not live.model_seat:
        raise ConfigError("the clinician holds the therapist's seat in this session")
    try:
        live.allowance = max(1, min(MAX_STREAM_TURNS, int(fields.get("turns") or 1)))
    except ValueError:
        raise ConfigError("turns must be a whole number", field="turns") from None
    live.stop_requested = False
    if _wants_json(request):
        return JSONResponse({"allowance": live.allowance})
    # without the page's script: play the turns now, then show the page
    while live.allowance > 0 and not live.finished:
        live.allowance -= 1
        await live.model_turn()
    return RedirectResponse(f"/play/{key}", status_code=303)


@router.post("/play/{key}/stop")
async def play_stop(request: Request, key: str) -> Response:
    """Stop a model's turns at the end of the turn in flight."""
    studio = studio_of(request)
    await studio.form(request)
    live = studio.live.get(key)
    live.stop_requested = True
    live.allowance = 0
    if _wants_json(request):
        return JSONResponse({"stopped": True})
    return RedirectResponse(f"/play/{key}", status_code=303)


@router.get("/play/{key}/stream")
async def play_stream(request: Request, key: str) -> StreamingResponse:
    """Server-sent events: one ``turn`` event per model turn, then ``end``."""
    studio = studio_of(request)
    live = studio.live.get(key)

    async def events() -> AsyncIterator[str]:
        while live.allowance > 0 and not live.finished and not live.stop_requested:
            if await request.is_disconnected():
                return
            live.allowance -= 1
            try:
                new = await live.model_turn()
            except ConfigError as exc:
                yield _event("failure", {"error": str(exc)})
                return
            yield _event("turn", {"html": _turns_html(studio, new), **_status(live)})
        live.allowance = 0
        yield _event("end", _status(live))

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.post("/play/{key}/save")
async def play_save(request: Request, key: str) -> Response:
    """Store the session in ``runs/<run>/sessions.sqlite`` (made if new)."""
    from therasim.simulations.store import Store

    studio = studio_of(request)
    fields = await studio.form(request)
    live = studio.live.get(key)
    run = fields.get("run", "").strip() or "studio"
    if not _RUN_NAME.match(run):
        raise ConfigError(
            "a run name is letters, digits, '_', '.', '-' (no folders), e.g. studio", field="run"
        )
    result = live.result()
    folder = studio.config.runs / run
    with Store(folder / STORE_NAME) as store:
        store.save_session(result)
    return RedirectResponse(f"/play/{key}?saved={run}/{result.session_id}", status_code=303)
