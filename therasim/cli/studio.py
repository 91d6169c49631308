"""The ``studio`` verb: a local web app to design personas, try them, and browse runs."""

from __future__ import annotations

import argparse
from typing import Any

from therasim.cli.common import console


def cmd_studio(args: argparse.Namespace) -> int:
    """Serve the studio until interrupted (``ConfigError`` for a public host without a token)."""
    from pathlib import Path

    try:
        import uvicorn

        from therasim.studio.app import StudioConfig, create_app, is_loopback
    except ImportError as exc:
        from therasim.errors import ConfigError

        raise ConfigError(
            f"the studio needs {exc.name or 'its web packages'}: pip install 'therasim[studio]'"
        ) from None

    config = StudioConfig(
        personas=Path(args.personas),
        runs=Path(args.runs),
        host=args.host,
        port=args.port,
        token=args.token,
        cache=not args.no_cache,
    )
    app = create_app(config)  # refuses a non-loopback host without --token

    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/personas" + (f"?token={args.token}" if args.token else "")
    console.print(
        f"therasim studio on [bold]{url}[/] · personas from {config.personas} · runs from "
        f"{config.runs} · Ctrl-C stops it",
        highlight=False,
        soft_wrap=True,
    )
    if not is_loopback(args.host):
        console.print(
            "[yellow]reachable from other machines:[/] every request must carry the token; "
            "traffic is plain HTTP (put it behind TLS on an untrusted network)"
        )
    if not args.no_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``studio`` on the command line's sub-parsers."""
    p = sub.add_parser("studio", help="a local web app: design personas, talk to them, browse runs")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s, this machine only; any other needs --token)",
    )
    p.add_argument(
        "--personas", default="personas", help="your persona folder (default: ./%(default)s)"
    )
    p.add_argument("--runs", default="runs", help="folder of run folders (default: ./%(default)s)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument(
        "--token",
        help="a secret every request must carry (required with a non-loopback --host), e.g. "
        "the output of: python -c 'import secrets; print(secrets.token_urlsafe())'",
    )
    p.add_argument("--no-cache", action="store_true", help="bypass the response cache")
    p.set_defaults(handler=cmd_studio)
