"""The ``therasim`` command line: one module per group of verbs, one function per verb.

=========  ==========================================  ==========================================
module     verbs                                       exit codes of its own
=========  ==========================================  ==========================================
models     doctor, ask
data       validate, personas list|show,               validate: 1 when a file is invalid
           protocols list|show
sessions   simulate, show                              simulate: 3 failed session; show: 1 unknown
studies    run, status, judge, report                  run: 2 over budget, 3 failures; status: 1
demo       demo
calibrate  calibrate                                   3 below a --min-f1/--min-recall threshold
studio     studio                                      1 public --host without --token
=========  ==========================================  ==========================================

Each module has ``add_parsers(sub)`` and imports heavy packages inside its verbs, so that
``therasim --help`` and ``therasim validate`` start fast. ``common`` holds the consoles and the
helpers the verbs share; ``kinds`` tells a data file's kind for ``validate``.

Every verb returns an exit code; errors from the therasim exception tree and file-system faults
are printed as one line (no traceback) and exit 1 (configuration, files) or 2 (model errors).
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import sys
from collections.abc import Sequence

from therasim import __version__
from therasim.cli import calibrate, data, demo, models, sessions, studies, studio
from therasim.cli.common import Handler, console, err_console
from therasim.errors import ConfigError, ModelError, TherasimError

__all__ = ["build_parser", "console", "err_console", "main"]

#: The verb groups, in the order ``therasim --help`` lists their verbs.
GROUPS = (models, data, sessions, studies, demo, calibrate, studio)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="therasim",
        description="Simulated-patient sessions that test whether an AI mental-health agent is safe to deploy.",
    )
    parser.add_argument("--version", action="version", version=f"therasim {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for group in GROUPS:
        group.add_parsers(sub)
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


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (the kernel flags its write end with
    POLLERR), so that a broken pipe elsewhere, say to a server, is still reported as an error."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # no real file behind stdout (captured, closed)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``therasim`` console script.

    Errors end in one line, never a traceback: exit 1 for a configuration or file-system problem
    (a read-only folder, a full disk, a path through a regular file, an unusable store: the line
    names the path and the system's reason), 2 for a model error, 130 when interrupted, and
    141, silently, when the reader of the output has gone (``therasim calibrate … | head``), as
    a Unix tool killed by SIGPIPE ends.
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
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            # what is still buffered for stdout would fail again when Python flushes it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
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
        err_console.print(
            "[yellow]interrupted[/] (what was stored is kept: run it again to resume)"
        )
        return 130
