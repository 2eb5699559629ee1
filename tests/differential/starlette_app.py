"""Starlette (on uvicorn) upstream for gatehouse's differential path test (tests/differential.rs).

    python3 starlette_app.py [PORT]

Runs uvicorn programmatically on 127.0.0.1:PORT (0, the default, lets the OS
choose) and, once uvicorn has started serving, prints exactly one line,
`PORT <n>`, on stdout. Exits when its stdin closes (so it never outlives the
test that started it) or on SIGTERM.

The routes are written the way a typical Starlette app writes them, because
the point is to learn which requests *this framework's own routing* sends to
an admin handler, not ours:

    /admin, /admin/{rest:path}   -> {"handler": "admin", ...}  (counted)
    /{rest:path}                 -> {"handler": "other", ...}  (catch-all)
    /__admin_hits                -> {"admin_hits": n}          (the count)

Every answer is JSON with `path` (scope["path"]: uvicorn decoded it once,
and Starlette's router matches on it) and `raw` (scope["raw_path"]: the
target's path as received). A request Starlette itself refuses still gets
JSON, with `handler: "error"` and Starlette's status. uvicorn's HTTP parser
(h11) answers a request it cannot parse with its own plain-text 400 before
any of this runs.
"""

import asyncio
import os
import signal
import socket
import sys
import threading

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
except ImportError as e:
    # The test shows this line with its install hint.
    sys.exit(f"{__file__}: {e}: install tests/differential/requirements.txt (scripts/test does)")

APP = "starlette"
# Every method a caller might use: a route limited to GET would turn a POST
# to an admin path into a 405 and hide whether routing reached it.
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

_admin_hits = 0


def _answer(request: Request, handler: str, status: int = 200) -> JSONResponse:
    raw = request.scope.get("raw_path")
    body = {
        "app": APP,
        "handler": handler,
        "path": request.scope["path"],
        # raw_path is the received bytes, without the query: shown as UTF-8
        # so that multi-byte characters read as themselves.
        "raw": raw.decode("utf-8", "replace") if raw is not None else None,
    }
    if status != 200:
        body["status"] = status
    return JSONResponse(body, status_code=status)


async def admin_hits(request: Request) -> JSONResponse:
    return JSONResponse({"app": APP, "admin_hits": _admin_hits})


async def admin(request: Request) -> JSONResponse:
    global _admin_hits
    # One event loop, no await in between: no lock needed.
    _admin_hits += 1
    return _answer(request, "admin")


async def other(request: Request) -> JSONResponse:
    return _answer(request, "other")


async def framework_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _answer(request, "error", exc.status_code)


async def crash(request: Request, exc: Exception) -> JSONResponse:
    return _answer(request, "error", 500)


app = Starlette(
    routes=[
        Route("/__admin_hits", admin_hits, methods=["GET"]),
        Route("/admin", admin, methods=METHODS),
        Route("/admin/{rest:path}", admin, methods=METHODS),
        # Last: anything the routes above did not take.
        Route("/{rest:path}", other, methods=METHODS),
    ],
    exception_handlers={HTTPException: framework_error, Exception: crash},
)


def _exit_when_stdin_closes() -> None:
    # Blocks until EOF: the test holds the write end and drops it when done
    # (or dies). Exit at once; there is nothing to flush.
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


async def serve(port: int) -> None:
    # Bind the socket ourselves so that port 0 works and its number is known.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app,
        # h11 (pure Python) rather than whatever optional parser happens to be
        # installed: the answers must not depend on the machine.
        http="h11",
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # `started` turns true once uvicorn listens; print the port only then.
    while not server.started:
        if task.done():
            await task  # startup failed: raise its error
            return
        await asyncio.sleep(0.01)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await task


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    # uvicorn installs its own graceful SIGTERM handler when serve() starts;
    # this one covers the moments before, and either way the process exits.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
