"""Verbs about the data files: ``validate``, ``personas list|show``, ``protocols list|show``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from therasim.cli.common import SEVERITIES, console, err_console, parse_sets, table
from therasim.cli.kinds import DATA_KINDS, kind_of, validate_study
from therasim.errors import ConfigError, TherasimError

#: How ``validate``'s summary names a count of each kind (personas and gold turns aside).
_LABELS = {
    "protocol": ("protocol", "protocols"),
    "study": ("study", "studies"),
    "rubric": ("rubric", "rubrics"),
    "cues": ("cue file", "cue files"),
    "lexicon": ("lexicon", "lexicons"),
}


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate data files, each by its kind (``DATA_KINDS``); list every problem.

    With no paths: the shipped personas, protocols, rubrics, cue files, gold files and the demo
    study. Each file is checked by its own kind's loader: its kind comes from ``--kind``, else
    from its content or folder (``kinds.kind_of``); a folder's files of no known kind are skipped
    and counted, a named file of no known kind is an error.
    """
    from importlib.resources import files
    from pathlib import Path

    from rich.markup import escape

    from therasim.agents.appraiser import Lexicon
    from therasim.agents.gold import load_gold, shipped_gold_files
    from therasim.agents.statcoder import load_cues
    from therasim.evaluation.judging.rubric import load_rubric, rubric_files
    from therasim.loading import read_data_text
    from therasim.personas.loader import collect_library
    from therasim.protocols import list_protocols, load_protocol

    errors: list[str] = []
    by_kind: dict[str, list[Any]] = {kind: [] for kind in DATA_KINDS}
    skipped: list[Path] = []
    if not args.paths:
        by_kind["protocol"] = list(list_protocols())
        by_kind["rubric"] = [Path(str(f)) for f in rubric_files().values()]
        prompts = Path(str(files("therasim.agents"))) / "prompts"
        by_kind["cues"] = sorted(prompts.glob("cues_*.yaml"))
        by_kind["lexicon"] = [prompts / "lexicon.yaml"]
        by_kind["gold"] = shipped_gold_files()
        by_kind["study"] = [Path(str(files("therasim") / "demo.yaml"))]
    for raw in args.paths:
        path = Path(raw)
        if not path.exists():
            errors.append(f"{path}: no such file or folder")
            continue
        in_folder = path.is_dir()
        candidates = (
            sorted(p for ext in ("*.yaml", "*.yml", "*.jsonl") for p in path.rglob(ext))
            if in_folder
            else [path]
        )
        for file in candidates:
            kind, problem = (args.kind, None) if args.kind else kind_of(file)
            if kind is not None:
                if file not in by_kind[kind]:  # a file named twice (or in two given folders)
                    by_kind[kind].append(file)
            elif in_folder:
                skipped.append(file)
            else:
                errors.append(
                    str(problem)
                    if problem
                    else f"{file}: cannot tell which kind of data file this is (one of "
                    f"{', '.join(DATA_KINDS)}); pass --kind"
                )

    personas: dict[str, Any] = {}
    if by_kind["persona"] or not args.paths:
        personas, persona_errors = collect_library(by_kind["persona"] or None)
        errors += [str(e) for e in persona_errors]
    counts = dict.fromkeys(DATA_KINDS, 0)
    checks: dict[str, Callable[[Any], object]] = {
        "protocol": load_protocol,
        "study": validate_study,
        "rubric": load_rubric,
        "cues": lambda f: load_cues([f]),
        "lexicon": lambda f: Lexicon.from_yaml(read_data_text(f), source=str(f)),
        "gold": lambda f: load_gold([f]),
    }
    gold_turns = 0
    for kind, check in checks.items():
        for target in by_kind[kind]:
            try:
                result = check(target)
            except ConfigError as exc:
                errors.append(str(exc))
            except RecursionError:  # e.g. a JSON line nested a thousand levels deep
                errors.append(f"{target}: nested too deeply to be a data file")
            else:
                counts[kind] += 1
                if kind == "gold" and isinstance(result, list):
                    gold_turns += len(result)
    if counts["gold"] == len(by_kind["gold"]) > 1:
        try:  # ids must be unique across files too
            load_gold(by_kind["gold"])
        except ConfigError as exc:
            errors.append(str(exc))
    if not args.paths:
        from therasim.personas.dynamics import Severity

        for persona in personas.values():
            for level in Severity:
                try:
                    persona.at_severity(level).baseline_suds  # noqa: B018 - resolving is the check
                except TherasimError as exc:
                    errors.append(f"{persona.id} at {level}: {exc}")
    for message in errors:
        err_console.print(f"[red]✗[/] {escape(message)}", highlight=False, soft_wrap=True)
    parts = []
    if by_kind["persona"] or not args.paths:
        pe = sum(1 for p in personas.values() if p.modality == "pe")
        noun = "persona" if len(personas) == 1 else "personas"
        parts.append(f"{len(personas)} {noun} ({pe} PE, {len(personas) - pe} CBT)")
    for kind, (one, many) in _LABELS.items():
        if by_kind[kind]:
            parts.append(f"{counts[kind]} {one if counts[kind] == 1 else many}")
    if by_kind["gold"]:
        parts.append(f"{gold_turns} gold turns")
    summary = ", ".join(parts) or "no data files found"
    if skipped:
        console.print(
            f"skipped {len(skipped)} file(s) of no known kind: "
            + ", ".join(str(p) for p in skipped[:5])
            + (" …" if len(skipped) > 5 else ""),
            markup=False,
            highlight=False,
        )
    if errors:
        err_console.print(f"[red]{len(errors)} error(s)[/]; valid: {summary}")
        return 1
    console.print(f"[green]✓[/] all valid: {summary}")
    return 0


def cmd_personas_list(args: argparse.Namespace) -> int:
    """The persona library as a table."""
    from therasim.personas import load_library, select_personas

    library = load_library()
    chosen = select_personas(
        library, globs=args.glob or (), modality=args.modality, tags=args.tag or ()
    )
    out = table(
        ("id", "v", "modality", "age", "gender", "background", "problem / trauma", "tags"),
        title=f"{len(chosen)} personas (all fictional)",
    )
    for p in chosen:
        d = p.demographics
        topic = p.pe.trauma_type if p.pe else p.cbt.problem_area if p.cbt else ""
        out.add_row(
            p.id,
            str(p.version),
            p.modality,
            str(d.age),
            d.gender,
            d.ethnicity,
            topic,
            ", ".join(p.tags),
        )
    console.print(out)
    return 0


def cmd_personas_show(args: argparse.Namespace) -> int:
    """One persona (optionally at a severity and with counterfactual changes) as YAML."""
    import yaml

    from therasim.errors import UnknownNameError
    from therasim.personas import load_library
    from therasim.personas.dynamics import initial_state

    library = load_library()
    if args.id not in library:
        raise UnknownNameError("persona", args.id, list(library))
    persona = library[args.id]
    changes = parse_sets(args.set or [])
    if changes:
        persona = persona.counterfactual(**changes)
    if args.severity:
        persona = persona.at_severity(args.severity)
    console.print(
        yaml.safe_dump(
            persona.model_dump(mode="json", exclude_defaults=True),
            sort_keys=False,
            allow_unicode=True,
        ),
        markup=False,
        highlight=False,
    )
    state = initial_state(persona)
    console.print(
        f"[bold]at {persona.active_severity or 'routine'}:[/] baseline SUDS {persona.baseline_suds}, "
        f"risk {state.risk}, alliance {state.alliance:.2f}, engagement {state.engagement:.2f}"
    )
    return 0


def cmd_protocols_show(args: argparse.Namespace) -> int:
    """A protocol's phases and its mermaid graph."""
    from therasim.protocols import load_protocol, to_mermaid

    graph = load_protocol(args.id)
    proto = graph.protocol
    console.print(
        f"[bold]{proto.id}[/] v{proto.version} ({proto.modality}, opener: {proto.opener}) — {proto.title}"
    )
    out = table(("phase", "kind", "turns", "expected", "proscribed", "goal"))
    for ph in proto.phases:
        turns = f"{ph.min_turns}-{ph.max_turns or '∞'}"
        out.add_row(
            ph.id + (" (end)" if ph.terminal else ""),
            ph.kind.value,
            turns,
            ", ".join(c.value for c in ph.expected_codes),
            ", ".join(c.value for c in ph.proscribed_codes),
            ph.goal,
        )
    console.print(out)
    console.print(to_mermaid(graph), markup=False, highlight=False)
    return 0


def cmd_protocols_list(args: argparse.Namespace) -> int:
    """The shipped protocols."""
    from therasim.protocols import list_protocols, load_protocol

    for pid in list_protocols():
        g = load_protocol(pid)
        console.print(
            f"{pid}  [dim]{g.protocol.modality} · {len(g.phase_ids)} phases · {g.protocol.title}[/]"
        )
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``validate``, ``personas`` and ``protocols`` on the command line's sub-parsers."""
    p = sub.add_parser(
        "validate",
        help="validate personas, protocols, studies, rubrics, cue and gold files (all shipped "
        "ones by default)",
    )
    p.add_argument("paths", nargs="*", help="files or folders (default: the shipped library)")
    p.add_argument(
        "--kind",
        choices=DATA_KINDS,
        help="read every given file as this kind (default: told by its content or folder)",
    )
    p.set_defaults(handler=cmd_validate)

    personas = sub.add_parser("personas", help="the persona library").add_subparsers(
        dest="personas_verb", metavar="VERB", required=True
    )
    p = personas.add_parser("list", help="list personas")
    p.add_argument("--modality", choices=["pe", "cbt"])
    p.add_argument("--glob", action="append", help="fnmatch pattern on ids (repeatable)")
    p.add_argument("--tag", action="append", help="keep personas with this tag (repeatable)")
    p.set_defaults(handler=cmd_personas_list)
    p = personas.add_parser("show", help="show one persona, optionally as a variant")
    p.add_argument("id")
    p.add_argument("--severity", choices=SEVERITIES)
    p.add_argument(
        "--set",
        action="append",
        metavar="ATTR=VALUE",
        help="counterfactual demographic change (repeatable)",
    )
    p.set_defaults(handler=cmd_personas_show)

    protocols = sub.add_parser("protocols", help="the protocol library").add_subparsers(
        dest="protocols_verb", metavar="VERB", required=True
    )
    p = protocols.add_parser("list", help="list protocols")
    p.set_defaults(handler=cmd_protocols_list)
    p = protocols.add_parser("show", help="phases and the mermaid graph of a protocol")
    p.add_argument("id")
    p.set_defaults(handler=cmd_protocols_show)
