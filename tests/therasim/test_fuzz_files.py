"""Fuzzing the command line with broken data files (issue 12, "How we'll know").

Every shipped file kind (persona, protocol, study, rubric, gold JSONL, cue YAML) is mutated into
invalid UTF-8, binary noise, 1,000-level nesting, an alias bomb, a duplicate key and a 10 MB
value. Each mutant goes through ``therasim validate FILE`` (and studies through ``therasim run
STUDY --dry-run``) in a child process capped at about 1 GB of address space and 20 s. None may
end in a traceback, a hang or a memory blow-up, and each must end in a non-zero exit code and one
error line naming the file. The children run four at a time from one
module-scoped fixture: about 1.3 s of CPU each, some 30 s in all on an idle 2-core machine.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED: dict[str, Path] = {
    "persona": ROOT / "personas" / "library" / "pe" / "pe-combat-01.yaml",
    "protocol": ROOT / "protocols" / "library" / "pe-three-phase.yaml",
    "study": ROOT / "studies" / "quickstart.yaml",
    "rubric": ROOT / "evaluation" / "rubrics" / "pe.yaml",
    "gold": ROOT / "agents" / "gold" / "risk.jsonl",
    "cues": ROOT / "agents" / "prompts" / "cues_safety.yaml",
}
#: The top-level field each YAML kind's bomb and huge value replace (free-form where there is one).
TARGET_FIELD = {
    "persona": "changes",
    "protocol": "description",
    "study": "id",
    "rubric": "description",
    "cues": "codes",
}
MEMORY_LIMIT = 1 << 30  # bytes of address space per child
TIMEOUT_S = 20.0
HUGE = 10_000_000


def _bomb(levels: int = 9, width: int = 10) -> str:
    """A billion-laughs value: ``width ** levels`` strings through nested aliases, in one line."""
    parts = ["&l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        parts.append(f"&l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "[" + ", ".join(parts) + "]"


def _set_top_level(kind: str, text: str, value: str) -> str:
    """``text`` with the value of its ``TARGET_FIELD`` top-level key replaced by ``value``."""
    key = TARGET_FIELD[kind]
    lines = text.splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        if skipping and (not line or line[0] in " \t#-"):
            continue  # the old value's continuation lines
        skipping = False
        if line.startswith(f"{key}:"):
            skipping = True
            continue
        kept.append(line)
    return "\n".join([*kept, f"{key}: {value}"]) + "\n"


def _first_key_line(text: str) -> str:
    return next(line for line in text.splitlines() if line[:1].isalpha() and ":" in line)


def _invalid_utf8(kind: str, raw: bytes) -> bytes:
    cut = len(raw) // 2
    return raw[:cut] + b"\xff\xfe\xc3(" + raw[cut:]


def _binary(kind: str, raw: bytes) -> bytes:
    return random.Random(12).randbytes(8192)


def _deep(kind: str, raw: bytes) -> bytes:
    """1,000 levels: block-style mappings in YAML (libyaml caps flow nesting, not these), arrays
    in a gold file's JSON line."""
    if kind == "gold":
        first = raw.splitlines()[0]
        return first[:-1] + b', "extra": ' + b"[" * 1000 + b"]" * 1000 + b"}\n"
    nested = "".join(f"\n{' ' * (i + 1)}k{i}:" for i in range(1000)) + " 1"
    return _set_top_level(kind, raw.decode("utf-8"), nested).encode()


def _alias_bomb(kind: str, raw: bytes) -> bytes:
    if kind == "gold":  # JSON has no aliases: a YAML bomb where a JSON line belongs
        return raw + f"{{lol: {_bomb()}}}\n".encode()
    return _set_top_level(kind, raw.decode("utf-8"), _bomb()).encode()


def _duplicate_key(kind: str, raw: bytes) -> bytes:
    if kind == "gold":
        first = raw.splitlines()[0]
        return first[:-1] + b', "id": "duplicate-of-the-first"}\n' + raw
    text = raw.decode("utf-8")
    return (text + _first_key_line(text) + "\n").encode()


def _huge_value(kind: str, raw: bytes) -> bytes:
    if kind == "gold":  # the therapist's reply of the first turn, 10 MB long
        first = json.loads(raw.splitlines()[0])
        first["therapist"] = "x" * HUGE
        return json.dumps(first).encode() + b"\n" + raw
    return _set_top_level(kind, raw.decode("utf-8"), "x" * HUGE).encode()


MUTATIONS: dict[str, Callable[[str, bytes], bytes]] = {
    "invalid-utf8": _invalid_utf8,
    "binary": _binary,
    "deep-nesting": _deep,
    "alias-bomb": _alias_bomb,
    "duplicate-key": _duplicate_key,
    "huge-value": _huge_value,
}


@dataclass(frozen=True)
class Outcome:
    """What one CLI child did with one mutant."""

    path: Path
    returncode: int | None  # None: killed at the timeout
    stderr: str


def _limit_memory() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_cli(args: list[str], path: Path) -> Outcome:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "therasim", *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT_S,
            preexec_fn=_limit_memory,
            cwd=path.parent,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return Outcome(path, None, stderr)
    return Outcome(path, done.returncode, done.stderr)


CASES = [
    (kind, mutation, verb)
    for kind in SHIPPED
    for mutation in MUTATIONS
    for verb in (("validate", "dry-run") if kind == "study" else ("validate",))
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], Outcome]:
    """Every case's outcome, the children run four at a time."""
    root = tmp_path_factory.mktemp("fuzz")
    jobs: dict[tuple[str, str, str], tuple[list[str], Path]] = {}
    for kind, mutation, verb in CASES:
        source = SHIPPED[kind]
        # a folder named after the kind, so `validate` can tell what the file is even when the
        # mutant no longer parses
        folder = root / {"study": "studies", "rubric": "rubrics", "gold": "gold"}.get(kind, kind)
        folder.mkdir(exist_ok=True)
        name = f"{mutation}-{source.stem}" if kind != "cues" else f"cues_{mutation}"
        path = folder / f"{name}{source.suffix}"
        if not path.exists():
            path.write_bytes(MUTATIONS[mutation](kind, source.read_bytes()))
        args = ["validate", str(path)] if verb == "validate" else ["run", str(path), "--dry-run"]
        jobs[(kind, mutation, verb)] = (args, path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(_run_cli, *job) for case, job in jobs.items()}
        return {case: future.result() for case, future in futures.items()}


def _error_lines(stderr: str) -> list[str]:
    """stderr without ``validate``'s closing summary line."""
    return [line for line in stderr.splitlines() if line.strip() and "error(s); valid:" not in line]


#: Gold JSONL is read by agents/gold.py, which keeps the last of two equal keys in a line (as
#: the json module does) and sets no size cap on a turn's text; tracked in issue 12, item 16.


@pytest.mark.parametrize(("kind", "mutation", "verb"), CASES, ids=["-".join(c) for c in CASES])
def test_a_mutant_ends_in_one_clear_line(
    outcomes: dict[tuple[str, str, str], Outcome], kind: str, mutation: str, verb: str
) -> None:
    outcome = outcomes[(kind, mutation, verb)]
    assert outcome.returncode is not None, f"{outcome.path.name}: no answer within {TIMEOUT_S} s"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert "MemoryError" not in outcome.stderr, outcome.stderr[-3000:]
    assert outcome.returncode != 0, outcome.stderr[-3000:]
    lines = _error_lines(outcome.stderr)
    assert len(lines) == 1, outcome.stderr[-3000:]
    assert outcome.path.name in lines[0]
    assert len(lines[0]) < 1000  # values are truncated in messages, never printed whole
