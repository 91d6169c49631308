"""therasim studio in headless Chromium (Debian's), driven by Playwright: the editor's inline
messages, three Try-it turns updating codes and the chart, a stored session, escaping; with
screenshots of the main pages written under the test's tmp folder (their paths printed)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_studio import PERSONA, SCRIPT, _study_store

from therasim.personas import load_library
from therasim.personas.loader import load_persona
from therasim.studio.app import StudioConfig, create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        return "Debian's chromium is not installed (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path, str]]:
    """A studio served on a free loopback port: (base URL, personas, runs, stored session)."""
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    import uvicorn

    root = tmp_path_factory.mktemp("studio")
    personas, runs = root / "personas", root / "runs"
    personas.mkdir()
    session_id = _study_store(runs)
    doc = load_library()[PERSONA].model_dump(mode="json", exclude_defaults=True)
    doc.update(id="script-summary", summary=f"A patient {SCRIPT} who tests escaping")
    (personas / "script-summary.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(StudioConfig(personas=personas, runs=runs, port=port, cache=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the studio did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", personas, runs, session_id
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(studio: Any) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    tab.on(
        "dialog", lambda dialog: (tab.errors.append(f"dialog: {dialog.message}"), dialog.dismiss())
    )
    yield tab
    context.close()


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"studio-{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 5_000, f"{name}: an empty screenshot"
    print(f"screenshot: {path}")
    return path


def test_create_a_persona_see_the_message_fix_it_and_save(
    studio: Any, page: Any, tmp_path: Path
) -> None:
    base, personas, _, _ = studio
    page.goto(f"{base}/personas")
    assert page.locator("#persona-table tbody tr").count() == 50
    shot(page, tmp_path, "library")
    page.goto(f"{base}/personas/{PERSONA}/edit")
    page.fill("#f-id", "browser-patient")
    page.fill("#f-file", "browser-patient.yaml")
    page.fill("#f-demographics-age", "5")
    page.click("button[value=save]")
    message = page.locator('[data-for="demographics.age"]')
    assert "must be greater than or equal to 18" in message.inner_text()
    assert "field demographics.age" in page.locator("#validate-message").inner_text()
    assert not (personas / "browser-patient.yaml").exists()
    shot(page, tmp_path, "editor-invalid")
    page.fill("#f-demographics-age", "45")
    page.click("button[value=save]")
    page.wait_for_url(f"{base}/personas/browser-patient?saved=1")
    assert "Saved into your folder" in page.inner_text("main")
    assert load_persona(personas / "browser-patient.yaml").demographics.age == 45
    shot(page, tmp_path, "persona")
    assert page.errors == []


def test_three_turns_show_codes_and_update_the_chart(
    studio: Any, page: Any, tmp_path: Path
) -> None:
    base = studio[0]
    from playwright.sync_api import expect

    page.goto(f"{base}/play?persona={PERSONA}")
    page.fill("input[name=appraiser]", "scripted:lexical")
    page.click("#start-form button[type=submit]")
    page.wait_for_selector("#chart .main-svg")
    lines = [
        "That sounds so painful. How distressed are you right now, 0 to 100?",
        "Close your eyes and tell me the memory in the present tense, as if it is happening now.",
        "Stay with it. What do you notice now? What is your SUDS?",
    ]
    for i, line in enumerate(lines, 1):
        page.fill("#line", line)
        page.click("#turn-form button[type=submit]")
        expect(page.locator("#turn-count")).to_have_text(str(i), timeout=30_000)
        points = page.evaluate("document.getElementById('chart').data[0].y.length")
        assert points == i + 1
        assert page.locator(".turn.therapist").count() == i
        assert page.locator(".turn.therapist").nth(i - 1).locator(".code").count() >= 1
    traces = page.evaluate("document.getElementById('chart').data.map(t => t.name)")
    assert traces == ["SUDS", "belief", "alliance", "engagement", "risk"]
    shot(page, tmp_path, "try-it")
    page.click("#save-form button")
    page.wait_for_selector("#saved")
    page.click("#saved a")
    page.wait_for_selector(".turn.therapist")
    assert page.errors == []


def test_a_stored_session_and_markup_shown_as_text(studio: Any, page: Any, tmp_path: Path) -> None:
    base, _, _, session_id = studio
    page.goto(f"{base}/runs")
    page.click("text=offline")
    page.click(f"text={session_id}")
    page.wait_for_selector("#chart .main-svg")
    assert page.locator(".turn.therapist").count() >= 1
    assert SCRIPT in page.inner_text("main")  # the verdict's reason, as text
    shot(page, tmp_path, "session")
    page.goto(f"{base}/personas/script-summary")
    assert page.inner_text("#summary") == f"A patient {SCRIPT} who tests escaping"
    assert page.errors == []  # no alert(), no script error
