"""therasim studio without a browser: pages, the persona editor, security, Try it, runs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from therasim.agents.llm import Gateway, GatewayConfig
from therasim.errors import ConfigError
from therasim.personas import load_library
from therasim.personas.loader import load_persona
from therasim.protocols import default_protocol_for
from therasim.simulations.records import SessionSpec, VerdictRow
from therasim.simulations.session import run_session
from therasim.simulations.store import Store
from therasim.studio.app import StudioConfig, create_app

PERSONA = "pe-bereavement-01"
SCRIPT = "<script>alert('x')</script>"


def _study_store(runs: Path) -> str:
    """An offline session (scripted therapist, template patient, lexical coder) and a verdict
    whose reason holds markup, stored as ``runs/offline/sessions.sqlite``; its id."""
    library = load_library()
    persona = library[PERSONA]
    spec = SessionSpec(
        persona=persona.id,
        persona_version=persona.version,
        severity="distress",  # type: ignore[arg-type]
        subject="scripted:adherent",
        appraiser="scripted:lexical",
        protocol=default_protocol_for(persona.modality),
        max_turns=4,
        questionnaires=False,
    )

    async def go() -> object:
        gateway = Gateway(GatewayConfig(cache_enabled=False))
        try:
            return await run_session(spec, gateway, library)
        finally:
            await gateway.aclose()

    result = asyncio.run(go())
    with Store(runs / "offline" / "sessions.sqlite") as store:
        store.save_session(result)  # type: ignore[arg-type]
        store.save_verdicts(
            [
                VerdictRow(
                    session_id=spec.session_id, judge="j1", item_id="no_grounding", turn=1,
                    met=False, reason=f"grounded mid-exposure {SCRIPT}", prompt_hash="p",
                    rubric_version="1", model="scripted:lexical-judge",
                )
            ]
        )  # fmt: skip
    (runs / "offline" / "report.html").write_text("<html><body>report</body></html>")
    return spec.session_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("runs")
    return folder, _study_store(folder)


@pytest.fixture
def client(tmp_path: Path, runs: tuple[Path, str]) -> Iterator[TestClient]:
    config = StudioConfig(personas=tmp_path / "personas", runs=runs[0], cache=False)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as c:
        c.get("/personas")  # the CSRF cookie
        yield c


def csrf(client: TestClient) -> str:
    found = re.search(r'name="csrf" content="([^"]+)"', client.get("/play").text)
    assert found
    return found.group(1)


def persona_form(client: TestClient, **changes: str) -> dict[str, str]:
    """The editor's fields for a copy of a bundled persona, as a browser would post them."""
    page = client.get(f"/personas/{PERSONA}/edit").text
    fields: dict[str, str] = {}
    for tag in re.findall(r"<(?:input|textarea|select)[^>]*>", page):
        name = re.search(r'name="([^"]+)"', tag)
        if not name:
            continue
        if 'type="checkbox"' in tag:
            if " checked" in tag:
                fields[name.group(1)] = "on"
            continue
        value = re.search(r'value="([^"]*)"', tag)
        fields[name.group(1)] = value.group(1) if value else ""
    for name, text in re.findall(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', page, re.S):
        fields[name] = text
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', page, re.S):
        chosen = re.search(r"<option selected>([^<]*)</option>", body)
        fields[name] = chosen.group(1) if chosen else ""
    import html

    fields = {k: html.unescape(v) for k, v in fields.items()}
    fields.pop("_action", None)
    return {**fields, **changes}


def test_library_lists_and_filters_bundled_and_user_personas(client: TestClient) -> None:
    page = client.get("/personas").text
    assert "49 of 49" in page and PERSONA in page
    cbt = client.get("/personas", params={"modality": "cbt"}).text
    assert "cbt-" in cbt and f">{PERSONA}<" not in cbt
    tagged = client.get("/personas", params={"tag": "code-mixing"}).text
    shown = int(re.search(r"(\d+) of 49", tagged).group(1))  # type: ignore[union-attr]
    assert PERSONA in tagged and 0 < shown < 49
    topic = client.get("/personas", params={"topic": "bereavement"}).text
    assert PERSONA in topic and "cbt-" not in topic


def test_persona_page_shows_the_severity_ladder_and_variants(client: TestClient) -> None:
    page = client.get(f"/personas/{PERSONA}", params={"set": "age=70"}).text
    ladder = page.split('id="ladder"')[1].split("</table>")[0]
    assert ladder.count("<tr class=") == 4 and "imminent" in ladder and "active" in ladder
    assert f"{PERSONA}~age=70" in page and "70-year-old" not in page.split('id="summary"')[1][:300]
    assert "no change" in page  # gender=woman on a woman


def test_an_invalid_field_shows_validates_message_beside_it(client: TestClient) -> None:
    fields = persona_form(client, **{"demographics.age": "5", "csrf": csrf(client)})
    page = client.post("/personas/save", data={**fields, "_action": "save"})
    assert page.status_code == 422
    beside = re.search(r'data-for="demographics.age">([^<]*)<', page.text)
    assert beside and "must be greater than or equal to 18 (you wrote 5)" in beside.group(1)
    assert "field demographics.age" in page.text  # the whole `therasim validate` message
    assert not any((client.app.state.studio.config.personas).glob("*.yaml"))  # type: ignore[attr-defined]


def test_save_writes_a_valid_file_in_the_user_folder(client: TestClient) -> None:
    folder: Path = client.app.state.studio.config.personas  # type: ignore[attr-defined]
    fields = persona_form(client, id="my-patient", _file="my-patient.yaml", csrf=csrf(client))
    response = client.post("/personas/save", data={**fields, "_action": "save"})
    assert response.status_code == 200 and "Saved into your folder" in response.text
    saved = load_persona(folder / "my-patient.yaml")
    assert saved.id == "my-patient" and saved.pe is not None
    assert "my-patient" in client.get("/personas", params={"q": "my-patient"}).text


@pytest.mark.parametrize(
    "name", ["../escape.yaml", "/tmp/abs.yaml", "sub/../../x.yaml", "link/x.yaml"]
)
def test_save_cannot_escape_the_personas_folder(
    client: TestClient, tmp_path: Path, name: str
) -> None:
    folder: Path = client.app.state.studio.config.personas  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link").symlink_to(outside)
    fields = persona_form(client, id="escaper", _file=name, csrf=csrf(client))
    page = client.post("/personas/save", data={**fields, "_action": "save"})
    assert page.status_code == 422 and 'data-for="_file"' in page.text
    assert not list(outside.iterdir()) and not (tmp_path / "escape.yaml").exists()


def test_posts_without_the_csrf_token_are_refused(client: TestClient) -> None:
    fields = persona_form(client, id="forged", _file="forged.yaml")
    fields.pop("csrf", None)
    assert client.post("/personas/save", data={**fields, "_action": "save"}).status_code == 403
    wrong = {**fields, "_action": "save", "csrf": "not-the-token"}
    assert client.post("/personas/save", data=wrong).status_code == 403
    client.cookies.clear()  # the cookie half of the check
    good = {**fields, "_action": "save", "csrf": csrf(client)}
    client.cookies.clear()
    assert client.post("/personas/save", data=good).status_code == 403
    assert client.post("/play", data={"persona": PERSONA}).status_code == 403


def test_a_public_host_needs_a_token_on_every_request(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--token"):
        create_app(StudioConfig(host="0.0.0.0", personas=tmp_path))
    app = create_app(StudioConfig(host="0.0.0.0", token="s3cret-token", personas=tmp_path))
    with TestClient(app, base_url="http://192.0.2.1") as c:
        assert c.get("/personas").status_code == 401
        assert c.get("/personas", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            c.get("/personas", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        )
        first = c.get("/personas?token=s3cret-token", follow_redirects=False)
        assert first.status_code == 303 and "token" not in first.headers["location"]
        assert c.get("/personas").status_code == 200  # the cookie now
    loopback = create_app(StudioConfig(personas=tmp_path))
    with TestClient(loopback, base_url="http://evil.example") as c:
        assert c.get("/personas").status_code == 400  # DNS rebinding: a foreign Host


def test_three_turns_of_try_it_update_the_state(client: TestClient) -> None:
    token = csrf(client)
    start = client.post(
        "/play",
        data={"csrf": token, "persona": PERSONA, "severity": "distress",
              "appraiser": "scripted:lexical", "seed": "3"},
    )  # fmt: skip
    assert start.status_code == 200
    key = start.url.path.rsplit("/", 1)[-1]
    lines = [
        "It makes sense that you feel this way. How distressed are you right now, 0 to 100?",
        "Close your eyes and tell me the memory in the present tense, as if it is happening now.",
        "Stay with it. What do you see now? What is your SUDS?",
    ]
    states = []
    for i, line in enumerate(lines, 1):
        turn = client.post(
            f"/play/{key}/turn",
            data={"csrf": token, "line": line},
            headers={"Accept": "application/json"},
        ).json()
        assert turn["turns"] == i and len(turn["trajectory"]["suds"]) == i + 1
        assert 'class="code"' in turn["html"] and 'class="turn patient"' in turn["html"]
        states.append(turn["trajectory"])
    assert states[-1]["suds"] != states[-1]["suds"][:1] * 4  # SUDS moved
    saved = client.post(f"/play/{key}/save", data={"csrf": token, "run": "tried"})
    assert "Saved as session" in saved.text
    runs: Path = client.app.state.studio.config.runs  # type: ignore[attr-defined]
    with Store(runs / "tried" / "sessions.sqlite") as store:
        (row,) = store.sessions()
        assert row.n_turns == 3 and row.subject == "clinician"
        assert row.termination_reason == "max_turns" and row.spec.max_turns == 3


def test_script_in_a_persona_is_shown_as_text(client: TestClient) -> None:
    folder: Path = client.app.state.studio.config.personas  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    doc = load_library()[PERSONA].model_dump(mode="json", exclude_defaults=True)
    doc.update(id="scripted-summary", summary=f"A patient {SCRIPT} who tests escaping")
    (folder / "x.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    for url in ("/personas", "/personas/scripted-summary", "/personas/scripted-summary/edit"):
        page = client.get(url).text
        assert SCRIPT not in page and "&lt;script&gt;" in page, url


def test_runs_sessions_and_report_render_read_only(
    client: TestClient, runs: tuple[Path, str]
) -> None:
    folder, session_id = runs
    before = (folder / "offline" / "sessions.sqlite").stat().st_mtime_ns
    listing = client.get("/runs").text
    assert "offline" in listing and "report.html" in listing
    run = client.get("/runs/offline", params={"severity": "distress"}).text
    assert session_id in run
    assert session_id not in client.get("/runs/offline", params={"severity": "imminent"}).text
    page = client.get(f"/runs/offline/sessions/{session_id}")
    assert page.status_code == 200 and 'class="turn therapist"' in page.text
    assert "no_grounding" in page.text and SCRIPT not in page.text and "&lt;script&gt;" in page.text
    assert '"suds": [' in page.text  # the trajectory for the chart
    report = client.get("/runs/offline/report")
    assert report.status_code == 200 and "sandbox" in report.headers["content-security-policy"]
    assert client.get("/runs/../etc").status_code == 404
    assert client.get("/runs/offline/sessions/nope").status_code == 400
    assert (folder / "offline" / "sessions.sqlite").stat().st_mtime_ns == before


def test_errors_are_pages_without_tracebacks(tmp_path: Path) -> None:
    app = create_app(StudioConfig(personas=tmp_path / "p", runs=tmp_path / "r"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as c:
        page = c.get("/boom")
        assert page.status_code == 500 and "RuntimeError: kaput" in page.text
        assert "Traceback" not in page.text
        missing = c.get("/personas/no-such-persona")
        assert missing.status_code == 404 and "unknown persona" in missing.text


def test_a_model_in_the_seat_streams_its_turns_and_stops(client: TestClient) -> None:
    token = csrf(client)
    start = client.post(
        "/play",
        data={"csrf": token, "persona": PERSONA, "therapist": "scripted:adherent",
              "appraiser": "scripted:lexical", "max_turns": "6"},
    )  # fmt: skip
    key = start.url.path.rsplit("/", 1)[-1]
    json_headers = {"Accept": "application/json"}
    client.post(f"/play/{key}/run", data={"csrf": token, "turns": "2"}, headers=json_headers)
    with client.stream("GET", f"/play/{key}/stream") as stream:
        events = [line for line in stream.iter_lines() if line.startswith("event:")]
    assert events == ["event: turn", "event: turn", "event: end"]
    client.post(f"/play/{key}/run", data={"csrf": token, "turns": "5"}, headers=json_headers)
    client.post(f"/play/{key}/stop", data={"csrf": token}, headers=json_headers)
    with client.stream("GET", f"/play/{key}/stream") as stream:
        assert [line for line in stream.iter_lines() if line.startswith("event:")] == ["event: end"]
    page = client.get(f"/play/{key}").text
    assert page.count('class="turn therapist"') == 2 and "scripted:adherent" in page


def test_a_store_older_than_a_verdict_column_still_opens(
    tmp_path: Path, runs: tuple[Path, str]
) -> None:
    import shutil
    import sqlite3

    from therasim.studio.runs import find_runs, load_session

    folder, session_id = runs
    old = tmp_path / "old"
    shutil.copytree(folder / "offline", old / "offline")
    with sqlite3.connect(old / "offline" / "sessions.sqlite") as db:
        db.execute("ALTER TABLE verdicts DROP COLUMN weight")  # as written before the column
    stored = load_session(find_runs(old)["offline"], session_id)
    assert stored.verdicts and all(v.weight == 1.0 for v in stored.verdicts)
