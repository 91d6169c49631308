"""The studio's web application: configuration, security, templates, errors.

Security, in the order a request meets it (``_guard``):

- **Host**: bound to a loopback address, only requests whose ``Host`` is a loopback name are
  served (a web page cannot reach the studio through DNS rebinding).
- **Token**: bound anywhere else, a token is required (``create_app`` refuses to build without
  one) and checked on every request: ``?token=`` once (it becomes a cookie and is dropped from
  the address), then the cookie or an ``Authorization: Bearer`` header.
- **CSRF**: every POST must carry the process's random CSRF token both as a cookie and as the
  form field ``csrf`` (or the ``X-CSRF-Token`` header); the cookie alone is checked here, the
  field by :meth:`Studio.form`, which every POST handler reads its body through.
- **Output**: Jinja2 autoescapes everything (persona and model text is untrusted); pages carry a
  strict Content-Security-Policy (scripts only from ``/static``) and refuse to be framed.

Errors never show a traceback: a therasim error is a page that says what was wrong (400), an
unknown address a 404 page, anything else a 500 page naming the error's type and message.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException

from therasim.agents.llm import Gateway, GatewayConfig, RoleConfig
from therasim.errors import ConfigError, ModelError, TherasimError, UnknownNameError

log = logging.getLogger("therasim.studio")

HERE = Path(__file__).parent
TOKEN_COOKIE = "therasim_token"
CSRF_COOKIE = "therasim_csrf"
MAX_BODY = 1_000_000
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


class CSRFError(TherasimError):
    """A POST without the studio's CSRF token."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine only."""
    if host.strip("[]") in LOOPBACK_NAMES or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class StudioConfig:
    """What ``therasim studio`` was started with."""

    personas: Path = Path("personas")
    runs: Path = Path("runs")
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    cache: bool = True


class Studio:
    """Everything the pages share: configuration, library, live sessions, gateway, templates."""

    def __init__(self, config: StudioConfig) -> None:
        from therasim.studio.library import PersonaFolder
        from therasim.studio.play import Sessions

        self.config = config
        self.csrf = secrets.token_urlsafe(24)
        self.folder = PersonaFolder(config.personas)
        self.live = Sessions()
        self._gateway: Gateway | None = None
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
            lstrip_blocks=True,
        )  # fmt: skip
        self.env.globals.update(csrf=self.csrf)

    @property
    def gateway(self) -> Gateway:
        """One gateway for the process, made in the server's event loop on first use."""
        if self._gateway is None:
            self._gateway = Gateway(
                GatewayConfig(
                    roles={"default": RoleConfig(model="local")},
                    cache_enabled=self.config.cache,
                )
            )
        return self._gateway

    async def aclose(self) -> None:
        """Close the gateway, if one was opened (the next page opens a new one)."""
        if self._gateway is not None:
            await self._gateway.aclose()
            self._gateway = None

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A page from ``templates/`` (autoescaped)."""
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status)

    async def form(self, request: Request) -> dict[str, str]:
        """A POST's url-encoded fields, its CSRF token checked; ``CSRFError`` otherwise."""
        body = await request.body()
        if len(body) > MAX_BODY:
            raise ConfigError(f"the form is over {MAX_BODY:,} bytes")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise ConfigError("the form is not UTF-8 text") from None
        fields = dict(pairs)
        given = fields.pop("csrf", "") or request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            raise CSRFError("the form's CSRF token is missing or stale: reload the page")
        return fields


def studio_of(request: Request) -> Studio:
    """The studio a request's app serves."""
    studio: Studio = request.app.state.studio
    return studio


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    studio = studio_of(request)
    if "application/json" in request.headers.get("accept", ""):
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": message, "title": title}, status_code=status)
    return studio.render("error.html", status=status, title=title, message=message)


def create_app(config: StudioConfig) -> FastAPI:
    """The studio app. ``ConfigError`` for a non-loopback host without a token."""
    if not is_loopback(config.host) and not config.token:
        raise ConfigError(
            f"binding {config.host} makes the studio reachable from other machines: pass "
            "--token (a long random string) so that every request must carry it",
            field="--token",
        )
    studio = Studio(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await studio.aclose()

    app = FastAPI(title="therasim studio", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.studio = studio

    @app.middleware("http")
    async def _guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await _check(request, studio) or await call_next(request)
        if request.cookies.get(CSRF_COOKIE) != studio.csrf:
            response.set_cookie(CSRF_COOKIE, studio.csrf, httponly=True, samesite="strict")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(TherasimError)
    async def _therasim_error(request: Request, exc: TherasimError) -> Response:
        if isinstance(exc, CSRFError):
            return _error_page(request, 403, "Refused", str(exc))
        if isinstance(exc, UnknownNameError):
            return _error_page(request, 404, "Not found", str(exc))
        title = "Model error" if isinstance(exc, ModelError) else "Something is wrong"
        return _error_page(request, 400, title, str(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        message = "No page at this address." if exc.status_code == 404 else str(exc.detail)
        return _error_page(request, exc.status_code, f"Error {exc.status_code}", message)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_page(request, 400, "Bad request", f"{where}: {first.get('msg', exc)}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("studio: unexpected error on %s", request.url.path)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return _error_page(request, 500, "Internal error", message)

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/vendor/plotly.min.js")
    async def _plotly() -> FileResponse:
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        return FileResponse(path, media_type="text/javascript",
                            headers={"Cache-Control": "max-age=86400"})  # fmt: skip

    from therasim.studio import pages_personas, pages_play, pages_runs

    for module in (pages_personas, pages_play, pages_runs):
        app.include_router(module.router)
    return app


async def _check(request: Request, studio: Studio) -> Response | None:
    """The refusal for a request that fails the host, token or CSRF-cookie check, else None."""
    host = request.url.hostname or ""
    if is_loopback(studio.config.host) and not is_loopback(host):
        return HTMLResponse("Refused: unknown Host.", status_code=400)
    token = studio.config.token
    if token:
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        if not any(hmac.compare_digest(c.encode(), token.encode()) for c in (bearer, cookie) if c):
            return HTMLResponse(
                "This studio needs its token: open the address `therasim studio` printed "
                "(it ends in ?token=...).",
                status_code=401,
            )
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), studio.csrf.encode()):
            return _error_page(request, 403, "Refused",
                               "the CSRF cookie is missing or stale: reload the page")  # fmt: skip
    return None
