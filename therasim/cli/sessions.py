"""Verbs about one session: ``simulate`` (live, then stored) and ``show`` (a stored one)."""

from __future__ import annotations

import argparse
from typing import Any

from therasim.cli.common import (
    SEVERITIES,
    bounded,
    console,
    err_console,
    parse_sets,
    run_then_close,
)

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], lo: float = 0, hi: float = 100) -> str:
    """A unicode sparkline of ``values`` scaled to [lo, hi]."""
    span = (hi - lo) or 1
    return "".join(
        SPARK[min(len(SPARK) - 1, max(0, int((v - lo) / span * (len(SPARK) - 1) + 0.5)))]
        for v in values
    )


def _print_turn(record: Any, suds: list[float]) -> None:
    from rich.markup import escape

    who = "[cyan]therapist[/]" if record.speaker == "therapist" else "[magenta]patient  [/]"
    meta = ""
    if record.speaker == "therapist":
        suds.append(record.state.suds)
        codes = ", ".join(record.codes) or "-"
        meta = (
            f"\n    [dim]turn {record.turn} · {record.phase} · codes: {codes} · SUDS {record.state.suds:.0f} "
            f"{sparkline(suds)} · alliance {record.state.alliance:.2f} · risk {record.state.risk}[/]"
        )
    console.print(f"{who} {escape(record.text)}{meta}", soft_wrap=True)


def _print_outcome(result: Any) -> None:
    """A session's error (if any) and its questionnaire totals, after its closing rule."""
    if result.error:
        err_console.print(f"[red]error:[/] {result.error}", highlight=False)
    for q in result.questionnaires:
        console.print(f"  {q.instrument} {q.when}: {q.total}")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate one session live and store it."""
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
    from therasim.agents.preflight import check_model_spec
    from therasim.personas import load_library
    from therasim.protocols import default_protocol_for
    from therasim.simulations.records import SessionSpec
    from therasim.simulations.session import run_session
    from therasim.simulations.store import Store

    library = load_library()
    if args.persona not in library:
        from therasim.errors import UnknownNameError

        raise UnknownNameError("persona", args.persona, list(library))
    persona = library[args.persona]
    for option, model in (
        ("--subject", args.subject),
        ("--patient", args.patient),
        ("--appraiser", args.appraiser),
    ):
        check_model_spec(model, field=option)  # a typo fails before any call, nothing stored
    spec = SessionSpec(
        persona=persona.id,
        persona_version=persona.version,
        severity=args.severity,
        variant=parse_sets(args.set or []),
        subject=args.subject,
        subject_prompt="raw" if args.raw else "protocol",
        patient=args.patient,
        appraiser=args.appraiser,
        protocol=args.protocol or default_protocol_for(persona.modality),
        max_turns=args.max_turns,
        seed=args.seed,
        questionnaires=not args.no_questionnaires,
    )
    gateway = Gateway(
        GatewayConfig(roles={"default": RoleConfig(model="local")}, cache_enabled=not args.no_cache)
    )
    suds: list[float] = []
    console.rule(
        f"session {spec.session_id} · {persona.id} at {spec.severity} · subject {spec.subject}"
    )
    result = run_then_close(
        gateway, lambda: run_session(spec, gateway, library, on_turn=lambda r: _print_turn(r, suds))
    )
    with Store(args.store) as store:
        store.save_session(result)
    style = "red" if result.status == "failed" else "green"
    console.rule(
        f"[{style}]{result.termination_reason}[/] · {result.therapist_turns} therapist turns · stored in {args.store}"
    )
    _print_outcome(result)
    return 0 if result.status == "completed" else 3


def cmd_show(args: argparse.Namespace) -> int:
    """Print a stored session with its states and codes."""
    from pathlib import Path

    from therasim.errors import ConfigError
    from therasim.simulations.store import Store

    if not Path(args.store).is_file():  # a read-only verb: never create a store
        raise ConfigError("no such store (give --store the .sqlite file)", file=str(args.store))
    with Store(args.store) as store:
        sid = store.find_session(args.session_id)
        result = store.load_session(sid) if sid else None
    if result is None:
        err_console.print(
            f"[red]error:[/] no session (or several) with id {args.session_id!r} in {args.store}"
        )
        return 1
    spec = result.spec
    console.rule(
        f"session {result.session_id} · {result.persona_ref} at {spec.severity} · subject {spec.label}"
    )
    suds: list[float] = []
    for record in result.turns:
        _print_turn(record, suds)
    console.rule(f"{result.termination_reason} · {result.status}")
    _print_outcome(result)
    if result.adherence:
        console.print(f"  adherence score {result.adherence.adherence_score:.2f}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``simulate`` and ``show`` on the command line's sub-parsers."""
    p = sub.add_parser("simulate", help="simulate one session live and store it")
    p.add_argument("--persona", required=True)
    p.add_argument("--severity", default="routine", choices=SEVERITIES)
    p.add_argument(
        "--subject",
        required=True,
        help="model spec of the model under test, e.g. scripted:adherent, local",
    )
    p.add_argument(
        "--patient",
        default="scripted:template-patient",
        help="model spec of the patient (default: the offline template patient)",
    )
    p.add_argument(
        "--appraiser",
        default="scripted:statistical",
        help="model spec of the appraiser (default: the statistical coder, scripted:statistical)",
    )
    p.add_argument("--protocol", help="protocol id (default: the modality's default)")
    p.add_argument("--max-turns", type=bounded(int, 1, 200), default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", metavar="ATTR=VALUE", help="counterfactual demographic change"
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="no therapist system prompt (a general assistant as people use it)",
    )
    p.add_argument(
        "--no-questionnaires", action="store_true", help="skip the pre/post PHQ-9 and PCL-5"
    )
    p.add_argument(
        "--store", default="therasim-sessions.sqlite", help="SQLite store (default: %(default)s)"
    )
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("show", help="print a stored session")
    p.add_argument("session_id", help="the id or a unique prefix")
    p.add_argument("--store", default="therasim-sessions.sqlite")
    p.set_defaults(handler=cmd_show)
