"""The self-contained HTML report: structure, escaping, offline-ness, and a real browser render."""

from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from therasim.evaluation.analysis.columns import (
    FINDING_COLUMNS,
    SESSION_COLUMNS,
    TURN_COLUMNS,
    VERDICT_COLUMNS,
)
from therasim.evaluation.analysis.frames import Frames, load_frames
from therasim.evaluation.report.html import render_html_report, write_html_report

REPO = Path(__file__).resolve().parents[2]
INJECTION = "<script>window.__pwned = 1</script><img src=x onerror=alert(1)>"
SUBJECTS = ("adherent", "safety-reflex")
SEVERITIES = ("routine", "crisis_adjacent")
ITEMS = {
    "pe": ("acknowledgment", "therapeutic_appropriateness", "protocol_fidelity"),
    "cbt": ("completeness", "frame", "safety_interference"),
}
JUDGES = ("lexical", "lenient", "harsh")


def build_frames(*, injected: bool = True) -> Frames:
    """2 subjects × 2 modalities × 2 severities × 2 personas, 6 turns each, 3 judges."""
    rng = random.Random(7)
    sessions, turns, utterances, verdicts, findings = [], [], [], [], []
    n = 0
    for subject in SUBJECTS:
        for modality in ("pe", "cbt"):
            for severity in SEVERITIES:
                for persona in (1, 2):
                    n += 1
                    sid = f"{n:04d}{subject[:4]}{modality}{severity[:4]}{persona}"
                    reflex = subject == "safety-reflex"
                    crisis = severity != "routine"
                    suds = 55.0 + (15 if crisis else 0)
                    baseline = suds
                    index = 0
                    for turn in range(1, 7):
                        phase_kind = (
                            "imaginal_exposure"
                            if modality == "pe" and 2 <= turn <= 5
                            else "check_in"
                        )
                        codes = (
                            ("grounding", "reassurance")
                            if reflex and turn in (3, 4)
                            else ("validation", "suds_probe")
                        )
                        suds = min(
                            100.0,
                            max(
                                0.0,
                                suds
                                + (6 if turn <= 3 else -9)
                                + rng.uniform(-3, 3)
                                + (8 if reflex else 0),
                            ),
                        )
                        risk = "passive" if crisis and turn >= 4 else "none"
                        text = f"Therapist turn {turn}: stay with the memory."
                        if injected and n == 1 and turn == 2:
                            text = f"Please {INJECTION} continue."
                        state = {
                            "suds": suds,
                            "belief": 70.0,
                            "alliance": 0.6 - (0.05 * turn if reflex else 0),
                            "engagement": 0.7,
                            "risk": risk,
                            "dropout": False,
                        }
                        base = {
                            "session_id": sid,
                            "subject": subject,
                            "modality": modality,
                            "severity": severity,
                        }
                        turns.append(
                            {
                                **base,
                                "turn": turn,
                                "phase": phase_kind,
                                "phase_kind": phase_kind,
                                "codes": codes,
                                **state,
                                "text": text,
                            }
                        )
                        for speaker, said in (
                            ("therapist", text),
                            ("patient", f"Patient reply {turn}, SUDS about {suds:.0f}."),
                        ):
                            utterances.append(
                                {
                                    **base,
                                    "index": index,
                                    "speaker": speaker,
                                    "text": said,
                                    "turn": turn,
                                    "phase": phase_kind,
                                    "codes": codes if speaker == "therapist" else (),
                                    "suds": suds,
                                }
                            )
                            index += 1
                        if reflex and turn == 3:
                            findings.append(
                                {
                                    **base,
                                    "turn": turn,
                                    "failure": "premature_grounding",
                                    "phrase": "feel your feet on the floor",
                                }
                            )
                        if reflex and crisis and turn == 4:
                            findings.append(
                                {
                                    **base,
                                    "turn": turn,
                                    "failure": "false_reassurance",
                                    "phrase": "you are safe now",
                                }
                            )
                    for judge in JUDGES:
                        for item in (*ITEMS[modality], "session_deterioration"):
                            good = not (reflex and crisis)
                            met = good if item != "session_deterioration" else not good
                            if judge == "lenient" and item != "session_deterioration":
                                met = True
                            if judge == "harsh" and rng.random() < 0.3:
                                met = not met
                            verdicts.append(
                                {
                                    **base,
                                    "judge": judge,
                                    "item_id": item,
                                    "scope": "session",
                                    "turn": -1,
                                    "met": met,
                                    "score": float("nan"),
                                    "reason": f"{judge} on {item}",
                                }
                            )
                        # the same failure through a 'good' item and a 'failure' item (met = it happened)
                        for item, met in (
                            ("no_false_reassurance", not reflex),
                            ("false_reassurance", reflex),
                        ):
                            verdicts.append(
                                {
                                    **base,
                                    "judge": judge,
                                    "item_id": item,
                                    "scope": "turn",
                                    "turn": 3,
                                    "met": met,
                                    "score": float("nan"),
                                    "reason": "turn 3",
                                }
                            )
                    sessions.append(
                        {
                            "session_id": sid,
                            "subject": subject,
                            "modality": modality,
                            "severity": severity,
                            "persona_id": f"{modality}-persona-{persona:02d}",
                            "parent_id": f"{modality}-persona-{persona:02d}",
                            "variant": "",
                            "repeat": 0,
                            "status": "completed",
                            "termination_reason": "max_turns",
                            "n_turns": 6,
                            "baseline_suds": baseline,
                            "final_suds": suds,
                            "peak_suds": max(baseline, suds),
                            "baseline_belief": 70.0,
                            "final_belief": 70.0,
                            "baseline_alliance": 0.6,
                            "final_alliance": 0.3 if reflex else 0.6,
                            "min_alliance": 0.3 if reflex else 0.6,
                            "baseline_risk": "none",
                            "max_risk": "passive" if crisis else "none",
                            "dropout": False,
                            "habituation_margin": 15.0,
                            "phq9_pre": 10.0,
                            "phq9_post": 16.0 if reflex else 9.0,
                            "pcl5_pre": float("nan"),
                            "pcl5_post": float("nan"),
                            "persona_ref": f"{modality}-persona-{persona:02d}@1",
                            "subject_model": f"scripted:{subject}",
                            "protocol": f"{modality}-session",
                            "error": None,
                            "adherence_score": 0.4 if reflex else 0.9,
                        }
                    )
    verdict_frame = pd.DataFrame(verdicts, columns=[*VERDICT_COLUMNS, "reason"])
    verdict_frame["met"] = verdict_frame["met"].astype(object)
    return Frames(
        sessions=pd.DataFrame(
            sessions,
            columns=[
                *SESSION_COLUMNS,
                "persona_ref",
                "subject_model",
                "protocol",
                "error",
                "adherence_score",
            ],
        ),
        turns=pd.DataFrame(turns, columns=[*TURN_COLUMNS, "text"]),
        utterances=pd.DataFrame(utterances),
        verdicts=verdict_frame,
        findings=pd.DataFrame(findings, columns=list(FINDING_COLUMNS)),
        calls=pd.DataFrame(),
    )


def empty_frames() -> Frames:
    return Frames(
        sessions=pd.DataFrame(columns=list(SESSION_COLUMNS)),
        turns=pd.DataFrame(columns=[*TURN_COLUMNS, "text"]),
        utterances=pd.DataFrame(),
        verdicts=pd.DataFrame(columns=list(VERDICT_COLUMNS)),
        findings=pd.DataFrame(columns=list(FINDING_COLUMNS)),
        calls=pd.DataFrame(),
    )


def fake_verdicts() -> list[Any]:
    """Objects shaped like ``axes.Verdict`` (the report only reads attributes)."""

    def axis(name: str, status: str, fda: str, eu: str) -> SimpleNamespace:
        return SimpleNamespace(
            axis=name,
            status=status,
            metrics={"rate": 0.125},
            evidence=["session 0001: grounding at SUDS 80"],
            fda=fda,
            eu_ai_act=eu,
        )

    axes_a = [
        axis("protocol_fidelity", "PASS", "clinical performance validation", "Art. 15"),
        axis("hallucination_risk", "NOT_ASSESSED", "accuracy and reliability", "Art. 13, 15"),
        axis("behavioural_consistency", "PASS", "reproducibility", "Art. 15"),
        axis(
            "crisis_safety", "PASS", "risk classification, post-market surveillance", "Art. 9, 14"
        ),
        axis("demographic_robustness", "PASS", "subgroup bias", "Art. 10, 15"),
    ]
    axes_b = [
        SimpleNamespace(**{**vars(a), "status": "FAIL" if a.axis == "crisis_safety" else a.status})
        for a in axes_a
    ]
    return [
        SimpleNamespace(subject="adherent", overall="FAIL", axes=axes_a),
        SimpleNamespace(subject="safety-reflex", overall="FAIL", axes=axes_b),
    ]


class _Tags(HTMLParser):
    """Collects external references: <script src>, <link href>, <img src>, <iframe src>."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "script":
            self.scripts += 1
        for attr in ("src", "href"):
            if tag in ("script", "link", "img", "iframe") and a.get(attr):
                self.refs.append((tag, str(a[attr])))


def _parse(text: str) -> _Tags:
    parser = _Tags()
    parser.feed(text)
    return parser


class _Scripts(HTMLParser):
    """Every ``<script>`` element as the browser's tokenizer sees it: (attributes, content)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            attrs, content = self.scripts[-1]
            self.scripts[-1] = (attrs, content + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


def scripts(text: str) -> list[tuple[dict[str, str | None], str]]:
    parser = _Scripts()
    parser.feed(text)
    parser.close()
    return parser.scripts


def figure_blocks(text: str) -> dict[str, Any]:
    """Chart id → its figure, parsed from the ``<script type="application/json">`` blocks."""
    return {
        str(attrs["data-chart"]): json.loads(content)
        for attrs, content in scripts(text)
        if attrs.get("type") == "application/json" and "data-chart" in attrs
    }


# --------------------------------------------------------------------------- unit


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    written = write_html_report(build_frames(), path, verdicts=fake_verdicts())
    return written, written.read_text(encoding="utf-8")


def test_file_is_written_and_self_contained(report: tuple[Path, str]) -> None:
    path, text = report
    assert path.exists() and path.stat().st_size > 1_000_000  # plotly.js is inlined
    parsed = _parse(text)
    external = [(tag, ref) for tag, ref in parsed.refs if re.match(r"^(https?:)?//", ref)]
    assert external == []
    # plotly.js is inlined exactly once, however many charts there are
    assert text.count(get_plotlyjs()[:300]) == 1
    assert len(figure_blocks(text)) >= 5


def test_sections_and_nav(report: tuple[Path, str]) -> None:
    _, text = report
    parsed = _parse(text)
    for section in (
        "verdict",
        "cells",
        "suds",
        "ladder",
        "failures",
        "deterioration",
        "judges",
        "sessions",
    ):
        assert section in parsed.ids
        assert f'href="#{section}"' in text
    assert "could not be drawn" not in text
    assert "therasim's defaults, not published ones" in text
    assert "SmolLM2" not in text  # no study, so no local subject to warn about


def test_verdict_badges_and_mapping(report: tuple[Path, str]) -> None:
    _, text = report
    matrix = text.split('class="verdict-matrix"', 1)[1].split("</table>", 1)[0]
    assert matrix.count("badge-fail") == 3  # two overall FAILs and safety-reflex's crisis_safety
    assert matrix.count("badge-pass") == 7
    assert matrix.count("NOT ASSESSED") == 2
    assert "Art. 9, 14" in text and "post-market surveillance" in text


def test_one_page_per_session_with_index_links(report: tuple[Path, str]) -> None:
    _, text = report
    frames = build_frames()
    parsed = _parse(text)
    for sid in frames.sessions["session_id"]:
        assert f"session-{sid}" in parsed.ids
        assert f'href="#session-{sid}"' in text
    assert text.count('class="msg msg-therapist') == len(frames.turns)
    assert text.count('class="msg msg-patient"') == len(frames.turns)
    flagged = frames.turns["codes"].map(lambda codes: "grounding" in codes).sum()
    assert flagged > 0 and text.count('class="msg msg-therapist flagged"') == flagged
    # failure codes red, adherent codes green
    assert '<span class="chip chip-bad">grounding</span>' in text
    assert '<span class="chip chip-good">suds probe</span>' in text
    assert "feel your feet on the floor" in text


def test_transcript_text_is_escaped(report: tuple[Path, str]) -> None:
    _, text = report
    assert INJECTION not in text
    assert "window.__pwned" in text  # the text is there, as text
    assert html_escaped(INJECTION) in text
    assert "<img src=x" not in text


def html_escaped(value: str) -> str:
    import html

    return html.escape(value, quote=True)


HOSTILE = "</script><script>alert(1)</script><!--"


def hostile_frames() -> Frames:
    """``build_frames`` with model output and names that try to close a script block: a subject
    (it reaches the chart JSON), a transcript line, a judge's reason and a detector phrase."""
    frames = build_frames(injected=False)
    for frame in (
        frames.sessions,
        frames.turns,
        frames.utterances,
        frames.verdicts,
        frames.findings,
    ):
        frame["subject"] = frame["subject"].replace("adherent", HOSTILE)
    utterances = frames.utterances
    utterances.loc[0, "text"] = "ok <script>alert(1)</script> and </script> and </SCRIPT >"
    frames.verdicts["reason"] = "</script><script>alert(1)</script>"
    frames.findings["phrase"] = "</script>"
    return frames


@pytest.fixture(scope="module")
def hostile_report() -> str:
    verdicts = fake_verdicts()
    verdicts[0].subject = HOSTILE
    return render_html_report(hostile_frames(), verdicts=verdicts)


def test_untrusted_text_cannot_leave_its_element(hostile_report: str) -> None:
    text = hostile_report
    found = scripts(text)
    # every script tag in the file is one of the report's own: none was opened or closed by data
    assert text.lower().count("<script") == len(found)
    assert text.lower().count("</script") == len(found)
    assert "<script>alert(1)</script>" not in text
    # the text is still there, escaped
    assert html_escaped("ok <script>alert(1)</script> and </script>") in text
    assert html_escaped(HOSTILE) in text
    for attrs, content in found:
        if "alert(1)" in content:
            assert attrs.get("type") == "application/json", attrs


def test_scripts_are_plotly_once_the_figures_as_json_and_one_page_script(
    hostile_report: str,
) -> None:
    found = scripts(hostile_report)
    plotly = [c for _, c in found if c.startswith(get_plotlyjs()[:300])]
    assert len(plotly) == 1 and hostile_report.count(get_plotlyjs()[:300]) == 1
    code = [c for a, c in found if a.get("type") != "application/json" and c not in plotly]
    assert len(code) == 1 and "Plotly.newPlot" in code[0]
    blocks = [(a, c) for a, c in found if a.get("type") == "application/json"]
    assert len(blocks) == len(found) - 2
    for _, content in blocks:
        # every block parses (no NaN, nothing cut short) to a figure or the shared template
        assert isinstance(json.loads(content), dict)
    figures = figure_blocks(hostile_report)
    assert len(figures) >= 5
    for chart_id, figure in figures.items():
        assert set(figure) == {"data", "layout", "config"}
        assert f'id="{chart_id}"' in hostile_report  # the div it is drawn into
        assert "template" not in figure["layout"]  # shared, written once
    shared = [json.loads(c) for a, c in blocks if a.get("id") == "fig-template"]
    assert len(shared) == 1 and "layout" in shared[0]
    # the hostile subject reaches the chart data intact, as a JSON string
    names = {t.get("name") for f in figures.values() for t in f["data"]}
    assert HOSTILE in names


def test_templates_escape_and_fail_on_missing_data() -> None:
    from jinja2 import UndefinedError

    from therasim.evaluation.report.html import environment

    env = environment()
    note = env.from_string('{% import "macros.html.j2" as m %}{{ m.note(n) }}')
    rendered = note.render(n=SimpleNamespace(text="<b>x</b> & y", kind="info"))
    assert rendered == '<p class="note note-info">&lt;b&gt;x&lt;/b&gt; &amp; y</p>'
    with pytest.raises(UndefinedError):
        note.render(n=SimpleNamespace(text="no kind"))


def test_session_cap_keeps_every_cell(tmp_path: Path) -> None:
    frames = build_frames(injected=False)
    text = render_html_report(frames, verdicts=[], max_sessions=8)
    pages = re.findall(r'<article class="session" id="session-([^"]+)"', text)
    assert len(pages) == 8
    cells = frames.sessions.set_index("session_id").loc[pages, ["subject", "modality", "severity"]]
    assert len(cells.drop_duplicates()) == 8  # round-robin: one per cell before any second
    assert "transcripts are included for 8 of them" in text


def test_empty_frames_render_with_notes(tmp_path: Path) -> None:
    path = write_html_report(empty_frames(), tmp_path / "empty.html", verdicts=[])
    text = path.read_text(encoding="utf-8")
    assert "could not be drawn" not in text
    assert figure_blocks(text) == {}
    assert "no sessions" in text.lower()


def test_verdict_not_available_when_axes_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # import raises ImportError, even when another test imported the module before
    monkeypatch.setitem(sys.modules, "therasim.evaluation.analysis.axes", None)
    monkeypatch.delattr("therasim.evaluation.analysis.axes", raising=False)
    text = render_html_report(build_frames(injected=False))
    assert "verdict not available" in text
    assert "SUDS trajectories" in text and "could not be drawn" not in text


def test_verdict_not_available_when_readiness_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(frames: Frames, thresholds: Any) -> list[Any]:
        raise RuntimeError("threshold file is malformed")

    module = SimpleNamespace(readiness=broken)
    monkeypatch.setitem(sys.modules, "therasim.evaluation.analysis.axes", module)
    monkeypatch.setattr("therasim.evaluation.analysis.axes", module, raising=False)
    text = render_html_report(build_frames(injected=False))
    assert "verdict not available" in text and "threshold file is malformed" in text


def test_turn_verdicts_read_with_item_polarity(report: tuple[Path, str]) -> None:
    _, text = report
    pages = dict(
        re.findall(r'<article class="session" id="session-([^"]+)"(.*?)</article>', text, re.S)
    )
    frames = build_frames()
    for sid, subject in zip(frames.sessions["session_id"], frames.sessions["subject"], strict=True):
        page = pages[sid]
        if subject == "safety-reflex":
            # both items flag the failure: 'good' item not met, 'failure' item (†) met, 3 of 3 judges
            assert "no false reassurance 3/3" in page and "false reassurance † 3/3" in page
        else:
            assert "judges: all 2 items fine" in page and "judges flagged" not in page


def test_real_readiness_verdict_is_rendered() -> None:
    axes = pytest.importorskip("therasim.evaluation.analysis.axes")
    frames = build_frames(injected=False)
    text = render_html_report(frames)
    assert "verdict not available" not in text
    matrix = text.split('class="verdict-matrix"', 1)[1].split("</table>", 1)[0]
    expected = axes.readiness(frames)
    assert len(expected) == len(SUBJECTS)
    for verdict in expected:
        assert f'href="#verdict-{verdict.subject}"' in matrix
    assert matrix.count("badge-") == len(SUBJECTS) * 6  # overall + five axes per subject


def test_judge_and_findings_numbers(report: tuple[Path, str]) -> None:
    _, text = report
    # judge table lists every judge; heatmap reads from the findings (premature grounding is in all 8 reflex sessions)
    for judge in JUDGES:
        assert f"<td>{judge}</td>" in text
    assert "premature grounding" in text
    assert "findings of the lexical detectors" in text


def test_renders_frames_loaded_from_a_store(tmp_path: Path) -> None:
    from therasim.personas.dynamics import PatientState, RiskLevel, Severity
    from therasim.simulations.records import (
        SessionResult,
        SessionSpec,
        TerminationReason,
        TurnRecord,
    )
    from therasim.simulations.store import Store

    spec = SessionSpec(
        persona="pe-test-01",
        persona_version=1,
        severity=Severity.ROUTINE,
        subject="scripted:adherent",
        subject_name="adherent",
        protocol="pe-session",
    )
    turns = []
    for i in range(6):
        turn = i // 2 + 1
        speaker = "therapist" if i % 2 == 0 else "patient"
        turns.append(
            TurnRecord(
                index=i,
                speaker=speaker,
                text=INJECTION if i == 2 else f"{speaker} line {i}",
                turn=turn,
                phase="imaginal_exposure",
                phase_kind="imaginal_exposure",
                codes=["encourage_continue"] if speaker == "therapist" else [],
                state=PatientState(
                    suds=60 + i, belief=50, alliance=0.6, engagement=0.7, risk=RiskLevel.NONE
                ),
            )
        )
    result = SessionResult(
        session_id=spec.session_id,
        spec=spec,
        persona_ref="pe-test-01@1",
        modality="pe",
        initial_state=PatientState(
            suds=55, belief=50, alliance=0.5, engagement=0.7, risk=RiskLevel.NONE
        ),
        status="completed",
        termination_reason=TerminationReason.MAX_TURNS,
        turns=turns,
        started=0.0,
        finished=1.0,
    )
    with Store(tmp_path / "s.sqlite") as store:
        store.save_session(result)
        frames = load_frames(store, with_findings=False)
    text = write_html_report(frames, tmp_path / "r.html", verdicts=[]).read_text(encoding="utf-8")
    assert f'id="session-{spec.session_id}"' in text
    assert INJECTION not in text and html_escaped(INJECTION) in text
    assert "could not be drawn" not in text


# --------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cdp(
    ws: Any,
    method: str,
    params: dict[str, Any] | None,
    state: dict[str, Any],
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Send one DevTools command and wait for its reply, collecting events meanwhile."""
    state["id"] += 1
    msg_id = state["id"]
    ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message.get("id") == msg_id:
            if "error" in message:
                raise AssertionError(f"{method} failed: {message['error']}")
            return dict(message.get("result", {}))
        state["events"].append(message)
    raise AssertionError(f"no reply to {method} within {timeout} s")


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append(
                f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            out.append(
                "console.error: "
                + " ".join(
                    str(a.get("value", a.get("description"))) for a in params.get("args", [])
                )
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
    return out


@pytest.mark.browser
@pytest.mark.timeout(90)
def test_report_renders_in_headless_chromium(report: tuple[Path, str], tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: apt-get install chromium")
        pytest.skip(
            "chromium is not installed (apt-get install chromium, or `make test` installs it)"
        )
    try:
        from websockets.sync import client as sync_client
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: the websockets package drives DevTools")
        pytest.skip("the websockets package is not installed (it comes with therasim[local])")
    path, _ = report
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,2000",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, "chromium exited at start-up"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as response:
            targets = json.load(response)
        page = next(t for t in targets if t.get("type") == "page")
        state: dict[str, Any] = {"id": 0, "events": []}
        with sync_client.connect(
            page["webSocketDebuggerUrl"], max_size=None, open_timeout=10
        ) as ws:
            for domain in ("Runtime", "Log", "Page"):
                _cdp(ws, f"{domain}.enable", None, state)
            _cdp(ws, "Page.navigate", {"url": path.as_uri()}, state)
            # wait until the document is loaded and plotly has drawn every chart div
            probe = (
                "(() => { const divs = [...document.querySelectorAll('.plotly-graph-div')];"
                " const drawn = divs.filter(d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg'));"
                " return JSON.stringify({ready: document.readyState, divs: divs.length, drawn: drawn.length,"
                " pwned: window.__pwned === 1, height: document.documentElement.scrollHeight}); })()"
            )
            deadline = time.monotonic() + 30
            info: dict[str, Any] = {}
            while time.monotonic() < deadline:
                result = _cdp(
                    ws, "Runtime.evaluate", {"expression": probe, "returnByValue": True}, state
                )
                value = result.get("result", {}).get("value")
                if value is None:  # evaluated while the navigation swapped the context
                    time.sleep(0.25)
                    continue
                info = json.loads(value)
                if info["ready"] == "complete" and info["divs"] and info["drawn"] == info["divs"]:
                    break
                time.sleep(0.25)
            assert info.get("ready") == "complete", info
            assert info["drawn"] >= 4, info
            assert info["drawn"] == info["divs"], info
            assert info["pwned"] is False
            _cdp(
                ws,
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 2200, "deviceScaleFactor": 1, "mobile": False},
                state,
            )
            time.sleep(0.5)
            shot = _cdp(
                ws,
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": False},
                state,
                timeout=20,
            )
            # the session page opens by its anchor, with no script involved
            sid = build_frames().sessions["session_id"].iloc[0]
            _cdp(ws, "Page.navigate", {"url": f"{path.as_uri()}#session-{sid}"}, state)
            time.sleep(0.5)
            visible = _cdp(
                ws,
                "Runtime.evaluate",
                {
                    "expression": f"getComputedStyle(document.getElementById('session-{sid}')).display",
                    "returnByValue": True,
                },
                state,
            )
            assert visible["result"]["value"] == "block"
            session_shot = _cdp(ws, "Page.captureScreenshot", {"format": "png"}, state, timeout=20)
        errors = _errors(state["events"])
        assert errors == [], errors
        png = base64.b64decode(shot["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        (tmp_path / "report-screenshot.png").write_bytes(png)
        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "report-screenshot.png").write_bytes(png)
        (artifacts / "report-session-screenshot.png").write_bytes(
            base64.b64decode(session_shot["data"])
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --------------------------------------------------------------------------- costs and battery


def _calls() -> pd.DataFrame:
    rows = [
        # role, input, cached input, output, cost, cached
        ("subject", 100, 0, 40, 0.01, False),
        ("subject", 120, 20, 30, 0.02, True),
        ("patient", 80, 0, 20, 0.005, False),
        ("judge:lexical", 50, 0, 10, math.nan, False),
        ("judge:lexical", 60, 10, 12, 0.001, False),
        ("appraiser", 30, 0, 5, 0.0, True),
    ]
    return pd.DataFrame(
        {
            "session_id": "s1",
            "role": [r[0] for r in rows],
            "input_tokens": [r[1] for r in rows],
            "cached_input_tokens": [r[2] for r in rows],
            "output_tokens": [r[3] for r in rows],
            "cost_usd": [r[4] for r in rows],
            "cached": [r[5] for r in rows],
        }
    )


def _table_rows(section_html: str) -> dict[str, list[str]]:
    """First cell → the row's cells, from a section's ``<tbody>``."""
    body = section_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [
            re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
        ]
        rows[cells[0]] = cells[1:]
    return rows


def _section(text: str, sid: str) -> str:
    return text.split(f'<section id="{sid}"', 1)[1].split("</section>", 1)[0]


def test_cost_table_lists_each_role_with_its_calls() -> None:
    frames = build_frames()
    frames = Frames(**{**frames.as_dict(), "calls": _calls()})
    text = render_html_report(frames, verdicts=fake_verdicts(), max_sessions=2)
    assert 'href="#costs"' in text
    rows = _table_rows(_section(text, "costs"))
    assert set(rows) == {"subject", "patient", "judge:lexical", "appraiser", "total"}
    calls = {role: int(cells[0]) for role, cells in rows.items()}
    assert calls == {"subject": 2, "patient": 1, "judge:lexical": 2, "appraiser": 1, "total": 6}
    assert rows["subject"][1] == "1"  # one cache hit
    assert rows["subject"][2:5] == ["220", "20", "70"]
    assert rows["subject"][5] == "$0.0300"
    assert rows["judge:lexical"][5] == "–"  # one call's price unknown
    assert rows["total"][5] == "–"
    assert rows["total"][2] == "440"


def test_cost_section_without_calls_says_so() -> None:
    text = render_html_report(build_frames(), verdicts=fake_verdicts(), max_sessions=2)
    assert "No model calls recorded" in _section(text, "costs")


def battery_frames() -> Frames:
    """Two subjects × three severities (stored out of ladder order) × two battery items each."""
    sessions, turns, verdicts = [], [], []
    good = {"adherent": 1.0, "safety-reflex": 0.0}
    for subject in ("safety-reflex", "adherent"):
        for severity in ("imminent", "routine", "crisis_adjacent"):
            for k in (1, 2):
                sid = f"b-{subject}-{severity}-{k}"
                sessions.append((sid, subject, severity, f"battery=i{k}{severity[:3]}"))
                reply = "You are safe now." if subject == "safety-reflex" else "Stay with it."
                turns.append((sid, subject, severity, reply))
                met = good[subject] if severity != "routine" else 1.0
                for judge in ("j1", "j2"):
                    verdicts.append((sid, subject, severity, judge, met if k == 1 else 1 - met / 2))
    return Frames(
        sessions=pd.DataFrame(
            {
                "session_id": [r[0] for r in sessions],
                "subject": [r[1] for r in sessions],
                "modality": "pe",
                "severity": [r[2] for r in sessions],
                "parent_id": "pe-combat-01",
                "variant": [r[3] for r in sessions],
                "status": "completed",
            }
        ),
        turns=pd.DataFrame(
            {
                "session_id": [r[0] for r in turns],
                "subject": [r[1] for r in turns],
                "modality": "pe",
                "severity": [r[2] for r in turns],
                "phase_kind": "imaginal_exposure",
                "codes": [() for _ in turns],
                "text": [r[3] for r in turns],
            }
        ),
        utterances=pd.DataFrame(),
        verdicts=pd.DataFrame(
            {
                "session_id": [r[0] for r in verdicts],
                "subject": [r[1] for r in verdicts],
                "modality": "pe",
                "severity": [r[2] for r in verdicts],
                "judge": [r[3] for r in verdicts],
                "item_id": "acknowledgment",
                "scope": "turn",
                "turn": 1,
                "met": [r[4] for r in verdicts],
            }
        ),
        findings=pd.DataFrame(),
        calls=pd.DataFrame(),
    )


def test_battery_section_draws_the_crisis_cliff() -> None:
    text = render_html_report(
        build_frames(), verdicts=fake_verdicts(), max_sessions=2, battery=battery_frames()
    )
    assert 'href="#battery"' in text
    section = _section(text, "battery")
    assert "could not be drawn" not in section
    ids = re.findall(r'data-chart="([^"]+)"', section)
    assert len(ids) == 1
    figure = figure_blocks(text)[ids[0]]
    traces = figure["data"]
    assert sorted(t["name"] for t in traces) == ["adherent", "safety-reflex"]
    ladder = ["routine", "crisis adjacent", "imminent"]
    for trace in traces:
        assert trace["x"] == ladder
        assert all(0 <= y <= 1 for y in trace["y"])
        assert trace["error_y"]["type"] == "data"
    assert figure["layout"]["xaxis"]["categoryarray"] == ladder
    reflex = next(t for t in traces if t["name"] == "safety-reflex")
    assert reflex["y"][0] > reflex["y"][-1]  # the cliff
    failures = _table_rows(section)
    assert "safety-reflex" in failures and "adherent" in failures
    assert "you are safe" in section


def test_battery_section_absent_without_battery_answers() -> None:
    for battery in (None, empty_frames()):
        text = render_html_report(
            build_frames(), verdicts=fake_verdicts(), max_sessions=2, battery=battery
        )
        assert 'id="battery"' not in text and 'href="#battery"' not in text


def test_battery_only_study_says_so_instead_of_no_sessions_yet() -> None:
    text = render_html_report(empty_frames(), verdicts=[], max_sessions=2, battery=battery_frames())
    cells = _section(text, "cells")
    assert "single-turn battery only" in cells and "no sessions yet" not in cells
    assert 'id="battery"' in text
    # without battery answers an empty store is still "no sessions yet"
    assert "no sessions yet" in _section(render_html_report(empty_frames(), verdicts=[]), "cells")


def test_battery_only_console_report_does_not_say_no_sessions_yet() -> None:
    import io

    from rich.console import Console

    from therasim.evaluation.report.console import BATTERY_ONLY, print_report

    out = io.StringIO()
    print_report(empty_frames(), Console(file=out, width=200), battery_only=True)
    assert BATTERY_ONLY in out.getvalue() and "no sessions yet" not in out.getvalue()
    out = io.StringIO()
    print_report(empty_frames(), Console(file=out, width=200))
    assert "no sessions yet" in out.getvalue()
