"""``nst-jax serve``: one local web page over :mod:`nst_jax.jobs` (Starlette + uvicorn, the ``ui`` extra).

Why Starlette and plain HTML/JS rather than Gradio (docs/web.md): measured here, the
three packages this needs (starlette, uvicorn, their h11/anyio/idna/click) are 6 MB installed
and import in 0.4 s; Gradio is 342 MB (59 packages) and imports in 6.5 s. The page is one
HTML file, one script and one style sheet in ``nst_jax/ui/``, served from the package.

The HTTP surface, all of it (every id is one made by :mod:`nst_jax.jobs`, looked up in a
dictionary of this session's: nothing a client sends becomes a path):

- ``GET /``, ``GET /static/{app.js,app.css}``: the page (sets the session cookie).
- ``GET /api/options``: the settings (from :class:`~nst_jax.config.StyleConfig`), caps, device.
- ``POST /api/uploads``: the body is one image file (``Content-Length`` needed and capped).
- ``GET /api/uploads/{id}/thumbnail.png``
- ``POST /api/jobs`` (JSON ``{kind, content, styles, settings, vary}``), ``POST /api/jobs/{id}/cancel``
- ``GET /api/jobs``: this session's jobs; ``GET /api/events``: the same as server-sent events.
- ``GET /api/jobs/{id}/preview.png``, ``/result.png`` (a download), ``/members/{k}.png`` (a sweep's).

Cross-site requests: every ``POST`` needs the header ``X-NST-JAX: 1`` (a page on another site
cannot send it without a CORS preflight, which this server never grants) and the session
cookie (``SameSite=Strict``); the ``Host`` header must name this server (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import json
import logging
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nst_jax.jobs import MAX_SWEEP_MEMBERS, JobError, Jobs, Limits, NotFound, options, stored

log = logging.getLogger("nst_jax.serve")
COOKIE = "nst_jax_session"
_ID = re.compile(r"[A-Za-z0-9_-]{16,40}")
_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_EVENT_INTERVAL = 0.2  # seconds between the event stream's looks at the jobs' version
_KEEPALIVE = 15.0  # seconds of quiet before the stream sends a comment line
_MAX_REQUEST = 64 * 1024  # bytes of a run's JSON (settings and ids: a few hundred bytes)
# A body that sends nothing for this long is answered 408 and its connection closed (a stalled
# upload held its bytes for good); a 25 MB upload over a 1 MB/s link never waits this long.
_READ_STALL = 10.0
_READ_TOTAL = 120.0  # seconds for a whole body: 25 MB at 0.2 MB/s
# Uploads being received at once, over all sessions: each holds up to max_upload_bytes in
# memory (20 stalled 25 MB uploads held 483 MB). Past it: 503, try again.
_MAX_UPLOADS_IN_PROGRESS = 4
# A connection that has not sent a whole request head within this long is closed (a silent
# socket, or half a header, stayed open for good and 60 of them used up the open files).
_HEAD_TIMEOUT = 10.0
# Connections and tasks at once; past it uvicorn answers 503 (each open page holds one event
# stream, so this is about 100 open pages).
_MAX_CONNECTIONS = 128
# An upload declared at most this many bytes over the cap is read and thrown away before its
# 413 is sent: browsers and urllib send the whole body before they read the answer, and a
# connection closed under them shows as a reset, not as the message. Larger ones are answered
# at once (their senders see a reset: nothing of theirs is read).
_DRAIN_OVER = 8 * 2**20
_DRAIN_STALL = 1.0  # seconds of silence that end such a drain (a client that declares and sends nothing)


class _TooSlow(Exception):
    """A body that stalled or took too long."""


async def _read_body(request: Request, cap: int) -> bytes | None:
    """The body, counted as it comes against ``cap`` (None: over it); :class:`_TooSlow` when it stalls.

    A body whose Content-Length is over ``cap`` is refused before a byte of it is read (h11 has
    checked the header is digits; 12 of them are far past any cap, and int() of thousands would fail).
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and (len(length) > 12 or int(length) > cap):
        return None
    body = bytearray()
    chunks = request.stream().__aiter__()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _READ_TOTAL
    while True:
        wait = min(_READ_STALL, deadline - loop.time())
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(wait, 0.001))
        except StopAsyncIteration:
            return bytes(body)
        except TimeoutError:
            raise _TooSlow from None
        body += chunk
        if len(body) > cap:
            return None


async def _discard_body(request: Request) -> None:
    """Reads the body and throws it away, while it keeps coming (a pause of ``_DRAIN_STALL`` ends it)."""
    try:
        chunks = request.stream().__aiter__()
        deadline = asyncio.get_running_loop().time() + _READ_TOTAL
        while True:
            wait = min(_DRAIN_STALL, deadline - asyncio.get_running_loop().time())
            await asyncio.wait_for(chunks.__anext__(), max(wait, 0.001))
    except (StopAsyncIteration, TimeoutError, ClientDisconnect):
        pass


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _ui_file(name: str) -> bytes:
    return importlib.resources.files("nst_jax").joinpath("ui", name).read_bytes()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_SECURITY_HEADERS)


def _json(data, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_SECURITY_HEADERS)


def _png(data: bytes | Path | None, download: str | None = None) -> Response:
    data = stored(data)
    if data is None:
        return _error(404, "no image yet")
    headers = dict(_SECURITY_HEADERS)
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{download}"'
    return Response(data, media_type="image/png", headers=headers)


def create_app(
    jobs: Jobs,
    device: str = "",
    allowed_hosts: tuple[str, ...] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Starlette:
    """The ASGI app over ``jobs``. ``allowed_hosts``: ``Host`` names accepted (``None``: any, for 0.0.0.0)."""

    def session_of(request: Request) -> str | None:
        session = request.cookies.get(COOKIE)
        return session if jobs.has_session(session) else None

    def wrong_host(request: Request) -> Response | None:
        """A refusal when the Host header names another server (a DNS-rebinding page), else None."""
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if allowed_hosts is None or host in allowed_hosts:
            return None
        return _error(400, f"this server answers to {', '.join(allowed_hosts)}, not {host[:60]!r}")

    receiving = [0]  # uploads being received now (one event loop: no lock needed)

    def guarded(handler, post: bool = False):
        """Host check, session check, the POST header, ids checked, errors as JSON; the handler gets the session."""

        async def endpoint(request: Request):
            if (refused := wrong_host(request)) is not None:
                return refused
            if post and request.headers.get("x-nst-jax") != "1":
                return _error(403, "missing header X-NST-JAX: 1 (requests come from the page)")
            session = session_of(request)
            if session is None:
                return _error(403, "no session: reload the page")
            for key, value in request.path_params.items():
                if key.endswith("id") and not _ID.fullmatch(value):
                    return _error(404, f"no such {key[:-3] or 'item'}")
            try:
                return await handler(request, session)
            except NotFound as e:
                return _error(404, e.args[0])
            except JobError as e:
                return _error(400, str(e))
            except _TooSlow:
                log.info("closed a request whose body stalled (%s)", request.url.path)
                return _error(408, f"the request's body stalled (nothing for {_READ_STALL:.0f} s) or took too long")
            except ClientDisconnect:  # an aborted upload: expected, one line
                log.info("a client went away during %s", request.url.path)
                return Response(status_code=400)

        return endpoint

    async def index(request: Request) -> Response:
        if (refused := wrong_host(request)) is not None:
            return refused
        response = Response(_ui_file("index.html"), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)
        if session_of(request) is None:
            try:
                session = jobs.new_session()
            except JobError as e:
                return _error(503, str(e))
            response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return _error(404, "no such file")
        return Response(_ui_file(name), media_type=_STATIC[name], headers=_SECURITY_HEADERS)

    async def get_options(request: Request, session: str) -> Response:
        limits = jobs.limits
        return _json({
            "options": options(),
            "limits": {
                "max_size": limits.max_size,
                "max_upload_bytes": limits.max_upload_bytes,
                "max_upload_pixels": limits.max_upload_pixels,
                "max_styles": limits.max_styles,
                "max_steps": limits.max_steps,
                "max_sweep_members": MAX_SWEEP_MEMBERS,
            },
            "sweep_axes": ["style_weight", "content_weight", "ratio", "tv_weight", "seed", "style_layers", "style"],
            "device": device,
        })  # fmt: skip

    async def upload(request: Request, session: str) -> Response:
        length = request.headers.get("content-length")
        cap = jobs.limits.max_upload_bytes
        if length is None or not length.isdigit():
            return _error(411, "the upload needs a Content-Length")
        if int(length) > cap:
            if int(length) <= cap + _DRAIN_OVER:
                await _discard_body(request)
            return _error(413, f"the file is {int(length) / 2**20:.1f} MB; this server takes images up to "
                               f"{cap / 2**20:.1f} MB")  # fmt: skip
        if receiving[0] >= _MAX_UPLOADS_IN_PROGRESS:
            return _error(503, "the server is receiving other uploads; try again in a moment")
        receiving[0] += 1
        try:  # counted as it comes: a Content-Length that lies is caught too
            body = await _read_body(request, cap)
        finally:
            receiving[0] -= 1
        if body is None:
            return _error(413, f"the file is over this server's {cap / 2**20:.1f} MB")
        from urllib.parse import unquote

        name = unquote(request.headers.get("x-filename", "image"))[:200]
        result = await asyncio.to_thread(jobs.add_upload, session, body, name)
        return _json(result.public(), 201)

    async def thumbnail(request: Request, session: str) -> Response:
        return _png(jobs.upload(session, request.path_params["upload_id"]).thumbnail)

    async def submit(request: Request, session: str) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _error(415, "a run is asked for as JSON (Content-Type: application/json)")
        body = await _read_body(request, _MAX_REQUEST)  # counted as it comes (a chunked body has no length)
        if body is None:
            return _error(413, f"the request is over {_MAX_REQUEST // 1024} kB")
        try:
            data = json.loads(body, parse_constant=_no_constant)
        except RecursionError:
            return _error(400, "the request nests too deeply")
        except ValueError as e:  # also NaN and Infinity, which JSON does not have, and 4300-digit numbers
            return _error(400, f"the request is not valid JSON ({str(e)[:80]})")
        job = await asyncio.to_thread(jobs.submit, session, data)
        return _json(job.public(None), 201)

    async def cancel(request: Request, session: str) -> Response:
        return _json(jobs.cancel(session, request.path_params["job_id"]).public(None))

    async def list_jobs(request: Request, session: str) -> Response:
        return _json(jobs.snapshot(session))

    async def events(request: Request, session: str) -> Response:
        async def stream():
            seen, quiet = -1, 0.0
            while not jobs.closed and not stopping():  # Ctrl-C ends the streams before the grace runs out
                if jobs.version != seen:
                    snapshot = jobs.snapshot(session)
                    seen = snapshot["version"]
                    yield f"data: {json.dumps(snapshot)}\n\n"
                    quiet = 0.0
                elif quiet >= _KEEPALIVE:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(_EVENT_INTERVAL)
                quiet += _EVENT_INTERVAL

        headers = {**_SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def preview(request: Request, session: str) -> Response:
        return _png(jobs.job(session, request.path_params["job_id"]).preview)

    async def result(request: Request, session: str) -> Response:
        job = jobs.job(session, request.path_params["job_id"])
        name = f"nst-jax-{'sweep' if job.kind == 'sweep' else 'stylize'}-{job.id[:8]}.png"
        return _png(job.result, download=name)

    async def member(request: Request, session: str) -> Response:
        job = jobs.job(session, request.path_params["job_id"])
        text = request.path_params["k"]  # a string: starlette's int converter fails on 5000 digits, with a 500
        k = int(text) if text.isdigit() and len(text) <= 6 else -1
        if not 0 <= k < len(job.member_previews):
            return _error(404, f"no member {text[:12]!r}")
        return _png(job.member_previews[k])

    routes = [
        Route("/", index),
        Route("/static/{name}", static),
        Route("/favicon.ico", lambda request: Response(_ui_file("icon.svg"), media_type="image/svg+xml")),
        Route("/api/options", guarded(get_options)),
        Route("/api/uploads", guarded(upload, post=True), methods=["POST"]),
        Route("/api/uploads/{upload_id}/thumbnail.png", guarded(thumbnail)),
        Route("/api/jobs", guarded(submit, post=True), methods=["POST"]),
        Route("/api/jobs", guarded(list_jobs)),
        Route("/api/events", guarded(events)),
        Route("/api/jobs/{job_id}/cancel", guarded(cancel, post=True), methods=["POST"]),
        Route("/api/jobs/{job_id}/preview.png", guarded(preview)),
        Route("/api/jobs/{job_id}/result.png", guarded(result)),
        Route("/api/jobs/{job_id}/members/{k}.png", guarded(member)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(jobs.close)

    return Starlette(routes=routes, lifespan=lifespan)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (checked now, so a port in use is one line, before the weights load)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e)
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({reason}); try another --port") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def allowed_hosts_for(host: str) -> tuple[str, ...] | None:
    """The ``Host`` names a server bound to ``host`` answers to (None: any, when bound to every interface)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    local = ("127.0.0.1", "localhost", "::1")
    return tuple(dict.fromkeys((host.lower(), *local))) if host in local else (host.lower(),)


@dataclasses.dataclass
class Running:
    """What ``serve``'s ``ready`` callback gets: the page's address, the jobs, and the server (``stop()`` ends it)."""

    url: str
    jobs: Jobs
    server: Any  # uvicorn.Server

    def stop(self) -> None:
        self.server.should_exit = True


def serve(
    params,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    sock: socket.socket | None = None,
    ready: Callable[[Running], None] | None = None,
    isolation: str = "process",
) -> None:
    """Runs the page until Ctrl-C (or :meth:`Running.stop`); then cancels the runs, removes uploads and results.

    ``sock``: an already bound socket (:func:`bind`); ``ready`` is called once the server listens.
    ``isolation``: where runs happen (:class:`~nst_jax.jobs.Jobs`). With ``"process"`` a child
    process takes the accelerator: on a GPU, the calling process should not hold it (the CLI
    keeps itself on the CPU; a library caller sets ``JAX_PLATFORMS=cpu`` or
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` for itself, or uses ``"thread"``), and a script
    that calls this needs the ``if __name__ == "__main__":`` guard of every spawned process.
    """
    import uvicorn

    sock = sock or bind(host, port)
    jobs = Jobs(params, limits or Limits(), isolation=isolation)
    server: Any = None
    try:
        device = jobs.runner.device  # waits for the child to start, so the first run does not
    except BaseException:
        jobs.close()
        raise
    app = create_app(
        jobs,
        device=device,
        allowed_hosts=allowed_hosts_for(host),
        stopping=lambda: server is not None and server.should_exit,
    )
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=2,
        lifespan="on",
        http=_timed_protocol(),
        timeout_keep_alive=5,  # an idle kept-alive connection (uvicorn's default, stated)
        limit_concurrency=_MAX_CONNECTIONS,
        h11_max_incomplete_event_size=16 * 1024,  # a request head's bytes
    )
    server = uvicorn.Server(config)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{bound_port}/"

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and ready is not None:
            ready(Running(url, jobs, server))
        await task

    try:
        asyncio.run(main())
    finally:
        jobs.close()  # again, in case the lifespan never ran (a failed start): the folder goes
        sock.close()


def _timed_protocol():
    """uvicorn's h11 protocol, closing a connection whose request head has not come within ``_HEAD_TIMEOUT``.

    uvicorn times out only idle kept-alive connections: a socket that never sends a request, or
    sends half a head, stays open. The timer runs from the connection's start and from the end
    of each response, and fires only while no request is being answered.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(_HEAD_TIMEOUT, self._head_overdue)

        def _head_overdue(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # waiting for a request head
                self.transport.close()

        def connection_made(self, transport):  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol


def print_ready(running: Running) -> None:
    print(
        f"nst-jax: serving {running.url} (Ctrl-C stops it; uploads and results are removed then)",
        file=sys.stderr,
        flush=True,
    )
