"""The console's web app: Starlette routes over Jinja2 templates, live over SSE.

Every page needs a login; every form carries the session's CSRF token; recording a
verdict needs the reviewer role; the access log needs admin. Each request is written
to the access log (user, client, method, path, status).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from device.console import accuracy
from device.console.auth import Lockout, allows, csrf_ok, login, new_csrf_token
from device.console.store import EventFilter, Store, User
from device.console.views import ago, fleet_rows, utc
from device.errors import DeviceError
from device.events.review import VERDICTS, sign_verdict
from device.events.topics import Topics
from device.sync.keys import load_private_key
from device.timestamps import parse_utc

logger = logging.getLogger(__name__)


class VerdictSink(Protocol):
    """Where signed verdicts go: the console's MQTT client."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
                ) -> Any: ...


@dataclass(frozen=True)
class WebSettings:
    """What the app needs besides the store."""

    session_secret: str
    https_only: bool = False
    session_max_age_s: int = 8 * 3600
    lockout: Lockout = field(default_factory=Lockout)
    health_stale_s: float = 120.0
    audit_stale_s: float = 900.0
    live_poll_s: float = 1.0


class AccessLog:
    """ASGI middleware writing one access-log row per HTTP request."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path = str(scope.get("path", ""))
            if not path.startswith("/static/"):
                session = scope.get("session") or {}
                client = scope.get("client")
                await asyncio.to_thread(
                    self.store.log_access, session.get("user"),
                    client[0] if client else None, str(scope.get("method", "")), path,
                    status["code"])


def _environment() -> Environment:
    folder = resources.files("device.console").joinpath("templates")
    env = Environment(loader=FileSystemLoader(str(folder)),
                      autoescape=select_autoescape(["html"]), auto_reload=False)
    env.filters["utc"] = utc
    env.filters["ago"] = ago
    return env


Handler = Callable[[Request], Awaitable[Response]]


def build_app(store: Store, settings: WebSettings, sink: VerdictSink | None) -> Starlette:
    """The ASGI app."""
    env = _environment()

    def csrf_of(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = new_csrf_token()
            request.session["csrf"] = token
        return str(token)

    def version_token() -> str:
        return hashlib.sha256(repr(store.version()).encode()).hexdigest()[:16]

    def render(request: Request, name: str, user: User | None, status: int = 200,
               **context: Any) -> HTMLResponse:
        # The store's version as the page was rendered: /live reports any change after it,
        # even one that happened before the page's event stream connected.
        html = env.get_template(name).render(
            user=user, csrf=csrf_of(request), version=version_token() if user else "",
            is_admin=user is not None and allows(user.role, "admin"), **context)
        return HTMLResponse(html, status_code=status, headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; img-src 'self'; "
                                       "style-src 'self'; script-src 'self'"})

    async def current(request: Request) -> User | None:
        name = request.session.get("user")
        if not name:
            return None
        user = await asyncio.to_thread(store.user, str(name))
        if user is None:
            request.session.clear()
        return user

    def page(needed: str = "viewer") -> Callable[[Callable[[Request, User], Awaitable[Response]]],
                                                Handler]:
        def wrap(handler: Callable[[Request, User], Awaitable[Response]]) -> Handler:
            async def run(request: Request) -> Response:
                user = await current(request)
                if user is None:
                    return RedirectResponse("/login", status_code=303)
                if not allows(user.role, needed):  # type: ignore[arg-type]
                    return PlainTextResponse(f"this needs the {needed} role", status_code=403)
                return await handler(request, user)
            return run
        return wrap

    async def checked_form(request: Request) -> FormData | None:
        form = await request.form()
        token = form.get("csrf")
        if not csrf_ok(request.session.get("csrf"), token if isinstance(token, str) else None):
            return None
        return form

    def refused_csrf() -> PlainTextResponse:
        return PlainTextResponse("the form's CSRF token is missing or wrong; reload the page",
                                 status_code=403)

    async def login_page(request: Request) -> Response:
        return render(request, "login.html", None, title="Log in")

    async def login_post(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return refused_csrf()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        result = await asyncio.to_thread(login, store, username, password, settings.lockout)
        if result.user is None:
            return render(request, "login.html", None, status=401, title="Log in",
                          problem=result.problem)
        request.session.clear()
        request.session["user"] = result.user.username
        request.session["csrf"] = new_csrf_token()
        return RedirectResponse("/fleet", status_code=303)

    async def logout(request: Request) -> Response:
        form = await checked_form(request)
        if form is None:
            return refused_csrf()
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def root(request: Request) -> Response:
        return RedirectResponse("/fleet", status_code=303)

    @page()
    async def fleet(request: Request, user: User) -> Response:
        rows = await asyncio.to_thread(fleet_rows, store, health_stale_s=settings.health_stale_s,
                                       audit_stale_s=settings.audit_stale_s)
        return render(request, "fleet.html", user, title="Fleet", rows=rows,
                      health_stale_s=settings.health_stale_s,
                      audit_stale_s=settings.audit_stale_s)

    @page()
    async def events_page(request: Request, user: User) -> Response:
        params = request.query_params
        problem = None
        since = until = None
        try:
            if params.get("since"):
                since = parse_utc(params["since"], naive_is_utc=True).timestamp()
            if params.get("until"):
                until = parse_utc(params["until"], naive_is_utc=True).timestamp()
        except ValueError as exc:
            problem = str(exc)
        query = EventFilter(unit=params.get("unit") or None, camera=params.get("camera") or None,
                            identity_id=params.get("identity") or None, since=since,
                            until=until)
        rows = await asyncio.to_thread(store.events, query)
        return render(request, "events.html", user, title="Events", rows=rows, q=query,
                      since_text=params.get("since", ""), until_text=params.get("until", ""),
                      problem=problem)

    async def review_view(request: Request, user: User, problem: str | None = None,
                          status: int = 200) -> Response:
        queue = await asyncio.to_thread(store.review_queue)
        reviewed = await asyncio.to_thread(store.reviewed)
        return render(request, "review.html", user, status=status, title="Review queue",
                      queue=queue, reviewed=reviewed, problem=problem,
                      can_review=allows(user.role, "reviewer"))

    @page()
    async def review_page(request: Request, user: User) -> Response:
        return await review_view(request, user)

    @page("reviewer")
    async def review_post(request: Request, user: User) -> Response:
        form = await checked_form(request)
        if form is None:
            return refused_csrf()
        event_id = request.path_params["event_id"]
        verdict = str(form.get("verdict", ""))
        note = str(form.get("note", ""))[:2000] or None
        if verdict not in VERDICTS:
            return await review_view(request, user, f"unknown verdict {verdict!r}", 400)
        event = await asyncio.to_thread(store.event, event_id)
        if event is None or event["kind"] != "match":
            return await review_view(request, user, f"no match event {event_id}", 404)
        if not user.key_path:
            return await review_view(request, user, f"{user.username} has no signing key; "
                                     "recreate the account with --role reviewer", 409)
        try:
            key = await asyncio.to_thread(load_private_key, Path(user.key_path))
            signed = sign_verdict(key, unit=event["unit"], event_id=event_id,
                                  verdict=verdict,  # type: ignore[arg-type]  # checked above
                                  issued_at=time.time())
        except DeviceError as exc:
            return await review_view(request, user, f"cannot sign the verdict: {exc}", 500)
        await asyncio.to_thread(store.add_verdict, {
            "nonce": signed.nonce, "event_id": event_id, "unit": event["unit"],
            "verdict": verdict, "reviewer": user.username,
            "reviewer_key": signed.reviewer, "note": note,
            "issued_at": time.time(), "published": False})
        if sink is not None:
            sink.publish(Topics(event["unit"]).review, signed.encode(), qos=1, retain=False)
            await asyncio.to_thread(store.mark_published, signed.nonce)
        logger.info("console: %s recorded %s for event %s of %s", user.username, verdict,
                    event_id, event["unit"])
        return RedirectResponse("/review", status_code=303)

    @page()
    async def accuracy_page(request: Request, user: User) -> Response:
        rows = await asyncio.to_thread(store.judged_matches)
        tables = [("Per unit", accuracy.summarise(rows, "unit")),
                  ("Per identity", accuracy.summarise(rows, "identity_id"))]
        return render(request, "accuracy.html", user, title="Accuracy", tables=tables,
                      plot=accuracy.plot_svg(rows))

    @page("admin")
    async def access_page(request: Request, user: User) -> Response:
        rows = await asyncio.to_thread(store.access_entries)
        users = await asyncio.to_thread(store.list_users)
        return render(request, "access.html", user, title="Access log", rows=rows, users=users)

    @page()
    async def live(request: Request, user: User) -> Response:
        seen = request.query_params.get("v", "")

        async def stream() -> AsyncIterator[str]:
            last = await asyncio.to_thread(version_token)
            yield "retry: 2000\n\n"
            if seen and seen != last:
                yield "event: changed\ndata: {}\n\n"
            beat = 0
            while not await request.is_disconnected():
                await asyncio.sleep(settings.live_poll_s)
                now = await asyncio.to_thread(version_token)
                if now != last:
                    last = now
                    yield "event: changed\ndata: {}\n\n"
                beat += 1
                if beat % 15 == 0:
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    static = resources.files("device.console").joinpath("static")
    routes = [
        Route("/", root), Route("/login", login_page, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]), Route("/logout", logout, methods=["POST"]),
        Route("/fleet", fleet), Route("/events", events_page),
        Route("/review", review_page, methods=["GET"]),
        Route("/review/{event_id}", review_post, methods=["POST"]),
        Route("/accuracy", accuracy_page), Route("/access", access_page),
        Route("/live", live), Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    middleware = [
        Middleware(SessionMiddleware, secret_key=settings.session_secret,
                   session_cookie="facegate_console", max_age=settings.session_max_age_s,
                   same_site="strict", https_only=settings.https_only),
        Middleware(AccessLog, store=store),
    ]
    return Starlette(routes=routes, middleware=middleware)
