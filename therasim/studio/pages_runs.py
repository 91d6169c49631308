"""The runs browser: runs, their sessions (filtered), one session, a run's HTML report.

Read-only (``runs.py``). A run is named by its path below the runs folder and looked up among
the runs found there, never joined onto a path, so an address cannot reach another folder.
The HTML report is served with a ``sandbox`` Content-Security-Policy: its inline scripts run in
an opaque origin that cannot read the studio's cookies or pages.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from therasim.errors import UnknownNameError
from therasim.studio import runs as store_reader
from therasim.studio.app import studio_of
from therasim.studio.pages_play import segments
from therasim.studio.play import trajectory

router = APIRouter()
REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:; font-src data:"
)


def _run(request: Request, name: str) -> store_reader.Run:
    found = store_reader.find_runs(studio_of(request).config.runs)
    if name not in found:
        raise UnknownNameError("run", name, list(found))
    return found[name]


@router.get("/runs")
async def run_list(request: Request) -> Response:
    """List the runs under the studio's runs folder."""
    studio = studio_of(request)
    found = store_reader.find_runs(studio.config.runs)
    return studio.render(
        "runs.html",
        runs=[store_reader.run_summary(r) for r in found.values()],
        folder=studio.config.runs,
    )


@router.get("/runs/{name:path}/sessions/{session_id}")
async def session_page(request: Request, name: str, session_id: str) -> Response:
    """Show one stored session of a run, with its verdicts."""
    studio = studio_of(request)
    run = _run(request, name)
    stored = store_reader.load_session(run, session_id)
    return studio.render(
        "session.html",
        run=run,
        stored=stored,
        row=stored.row,
        turn_verdicts=stored.turn_verdicts(),
        session_verdicts=stored.session_verdicts(),
        trajectory=trajectory(stored.row.initial_state, stored.turns),
        segments=segments,
    )


@router.get("/runs/{name:path}/report")
async def run_report(request: Request, name: str) -> Response:
    """Serve the run's HTML report (under a strict content security policy)."""
    run = _run(request, name)
    if run.report is None:
        raise UnknownNameError("report of run", name, [])
    return FileResponse(run.report, media_type="text/html",
                        headers={"Content-Security-Policy": REPORT_CSP})  # fmt: skip


@router.get("/runs/{name:path}")
async def run_page(request: Request, name: str) -> Response:
    """Show a run: its sessions, filtered by the query's fields."""
    studio = studio_of(request)
    run = _run(request, name)
    chosen = {k: request.query_params.get(k, "") for k in store_reader.FILTERS}
    return studio.render(
        "run.html",
        run=run,
        summary=store_reader.run_summary(run),
        sessions=store_reader.sessions(run, chosen),
        values=store_reader.filter_values(run),
        chosen=chosen,
    )
