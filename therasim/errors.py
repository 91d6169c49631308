"""The one exception tree of therasim.

::

    TherasimError
    ├── ConfigError                  a data file or setting is invalid (names file, id, field path)
    │   └── UnknownNameError         a registry lookup failed; the message says "did you mean ..."
    ├── ModelError                   an LLM call failed; always names the role and the model spec
    │   ├── ModelRequestsBlocked     real backends are disabled (the test suite's default)
    │   ├── TransientModelError      worth retrying: the gateway retries these with backoff
    │   │   ├── RateLimited          HTTP 429
    │   │   ├── ServerError          HTTP 5xx
    │   │   ├── ModelTimeout         no answer within the timeout
    │   │   └── ModelConnectionError the endpoint could not be reached
    │   ├── PermanentModelError      4xx other than 429, bad credentials, unknown model
    │   ├── StructuredOutputError    no output mode produced JSON that validates, even after repair
    │   └── LocalModelUnavailable    the `local` extra is missing or the llama.cpp server did not start
    ├── SessionError                 a simulated session cannot go on (recorded, never raised past the runner)
    │   └── GuardFailure             a participant's output failed its guards after every retry
    ├── BudgetExhausted              the study's cost or token budget is spent
    └── RunLocked                    another process is running the same run folder

Every class lives here so that the lowest layers (personas, protocols) and the highest (the CLI)
share one tree, and ``except TherasimError`` is always enough for a caller.
"""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str], *, n: int = 3, cutoff: float = 0.5) -> str:
    """``"did you mean 'a', 'b'?"`` for the known names close to ``name``, or ``""``: the one
    spelling of the hint every "unknown X" message gives."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=n, cutoff=cutoff)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class TherasimError(Exception):
    """Base class of every error therasim raises on purpose."""


#: Longest line of a ``ConfigError`` message, and longest message: a value quoted from a bad file
#: is cut (a 4 MB ``id:`` or an expanded alias bomb must not become a 4 MB or 3 GB message).
MAX_MESSAGE_LINE = 500
MAX_MESSAGE = 20_000


def clip(text: str, limit: int = MAX_MESSAGE_LINE) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def _short_repr(value: object, limit: int = 80) -> str:
    """A bounded ``repr``: reprlib never walks more than a few items of a nested value."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 4
    short.maxlevel = 2
    return clip(short.repr(value), limit)


class ConfigError(TherasimError):
    """A data file (persona, protocol, rubric, study) or a setting is invalid.

    The message names the file, the object's id where known, and the field path. Every part is
    cut to a readable length (``clip``): messages quote values from files that may be huge.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        object_id: object = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.object_id = object_id
        self.field = field
        where = ", ".join(
            part
            for part in (
                clip(str(file), 300) if file else None,
                f"id {_short_repr(object_id)}" if object_id else None,
                f"field {clip(str(field), 200)}" if field else None,
            )
            if part
        )
        message = clip("\n".join(clip(line) for line in str(message).split("\n")), MAX_MESSAGE)
        super().__init__(f"{where}: {message}" if where else message)


class UnknownNameError(ConfigError):
    """A name was looked up in a registry (backends, scripted agents, judges, ...) and not found."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        close = did_you_mean(name, known)
        hint = f"; {close}" if close else ""
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}{hint} (known: {', '.join(self.known)})")


class ModelError(TherasimError):
    """An LLM call failed. ``role`` and ``model`` say which call."""

    def __init__(self, message: str, *, role: str = "?", model: str = "?") -> None:
        self.role = role
        self.model = model
        self.detail = message
        super().__init__(f"[role {role}, model {model}] {message}")


class ModelRequestsBlocked(ModelError):
    """A real backend was called while real calls are disabled (see ``allow_model_requests``)."""


class TransientModelError(ModelError):
    """A failure worth retrying."""


class RateLimited(TransientModelError):
    """HTTP 429."""


class ServerError(TransientModelError):
    """HTTP 5xx."""


class ModelTimeout(TransientModelError):
    """The backend did not answer in time."""


class ModelConnectionError(TransientModelError):
    """The backend could not be reached."""


class PermanentModelError(ModelError):
    """A failure that retrying will not fix (bad request, bad credentials, unknown model)."""


class StructuredOutputError(ModelError):
    """Structured output could not be parsed into the requested schema, even after one repair."""


class LocalModelUnavailable(ModelError):
    """The bundled local model cannot be served (extra not installed, server did not start)."""


class SessionError(TherasimError):
    """A simulated session cannot continue."""


class GuardFailure(SessionError):
    """A participant's output failed its guards on every allowed attempt."""

    def __init__(self, message: str, *, guard: str, attempts: int) -> None:
        self.guard = guard
        self.attempts = attempts
        super().__init__(f"{message} (guard {guard}, {attempts} attempts)")


class BudgetExhausted(TherasimError):
    """The study's budget (cost or tokens) is spent: no new session starts or is judged.

    ``done`` counts the work finished (and stored) before the stop, e.g. sessions judged."""

    def __init__(self, message: str, *, done: int = 0) -> None:
        self.done = done
        super().__init__(message)


class RunLocked(TherasimError):
    """Another ``therasim run`` holds the run folder (its pid is in the message)."""


_SECRET_PATTERNS = (
    # provider-style keys and bearer tokens
    (r"\bsk-[A-Za-z0-9_-]{12,}", "[redacted]"),
    (r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", r"\1[redacted]"),
    # key=value / "key": "value" pairs whose name says secret: the name stays, the value goes
    (
        r"(?i)((?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password)[\"']?\s*[:=]\s*[\"']?)"
        r"[^\s\"',;}]{6,}",
        r"\1[redacted]",
    ),
)
_SECRET_ENV = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def redact_secrets(text: str) -> str:
    """``text`` with secret-looking strings and the values of secret environment variables
    (names containing KEY, TOKEN, SECRET or PASSWORD) replaced by ``[redacted]``.

    Applied where error text is stored or shown: a backend that echoes the request's key into
    its error message must not put the key into the store, the report or the terminal.
    """
    import os
    import re

    for name, value in os.environ.items():
        if len(value) >= 8 and any(part in name.upper() for part in _SECRET_ENV):
            text = text.replace(value, "[redacted]")
    for pattern, replacement in _SECRET_PATTERNS:
        text = re.sub(pattern, replacement, text)
    return text
