"""Flask (Werkzeug) upstream for gatehouse's differential path test (tests/differential.rs).

    python3 flask_app.py [PORT]

Listens on 127.0.0.1:PORT (0, the default, lets the OS choose) with Werkzeug's
own server, then prints exactly one line, `PORT <n>`, on stdout. Exits when
its stdin closes (so it never outlives the test that started it) or on SIGTERM.

The routes are written the way a typical Flask app writes them, because the
point is to learn which requests *this framework's own routing* sends to an
admin handler, not ours:

    /admin, /admin/<path:rest>   -> {"handler": "admin", ...}  (counted)
    /, /<path:rest>              -> {"handler": "other", ...}  (catch-all)
    /__admin_hits                -> {"admin_hits": n}          (the count)

Every answer is JSON with `path` (the decoded path Werkzeug routed on) and
`raw` (the request target's path as received, before any decoding). When
Werkzeug itself refuses a request (404, 405, ...) the answer is still JSON,
with `handler: "error"` and Werkzeug's status, so the test can tell "the app
saw it but no handler ran" from "gatehouse refused it".
"""

import logging
import os
import signal
import sys
import threading

try:
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException
    from werkzeug.serving import make_server
except ImportError as e:
    # The test shows this line with its install hint.
    sys.exit(f"{__file__}: {e}: install tests/differential/requirements.txt (scripts/test does)")

APP = "flask"
# Every method a caller might use: a handler limited to GET would turn a
# POST to an admin path into a 405 and hide whether routing reached it.
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

app = Flask(__name__)
# Werkzeug treats `/admin` and `/admin/` strictly by default; that is part of
# the behaviour under test, so the defaults are kept.

_hits_lock = threading.Lock()
_admin_hits = 0


def _raw_path():
    """The request target's path exactly as the server read it (query cut off).

    Werkzeug's development server puts the undecoded target in RAW_URI (and
    REQUEST_URI): http.server read the request line as latin-1, and Werkzeug
    then applied the WSGI "encoding dance" (UTF-8 bytes seen as latin-1) on
    top. Undo both to get the bytes that were on the wire, shown as UTF-8.
    One thing is not raw: http.server itself collapses a leading `//` to `/`
    (a guard against open redirects), before Werkzeug sees the target.
    """
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw is None:
        return None
    wire = raw.encode("latin-1").decode("utf-8", "replace").encode("latin-1", "replace")
    return wire.decode("utf-8", "replace").split("?", 1)[0]


def _answer(handler, status=200):
    # request.path is what the URL map matched against: PATH_INFO decoded
    # once (%XX to bytes, then UTF-8 with U+FFFD for invalid sequences).
    body = {"app": APP, "handler": handler, "path": request.path, "raw": _raw_path()}
    if status != 200:
        body["status"] = status
    return jsonify(body), status


@app.route("/__admin_hits", methods=["GET"])
def admin_hits():
    with _hits_lock:
        return jsonify({"app": APP, "admin_hits": _admin_hits})


@app.route("/admin", methods=METHODS)
@app.route("/admin/<path:rest>", methods=METHODS)
def admin(rest=None):
    global _admin_hits
    with _hits_lock:
        _admin_hits += 1
    return _answer("admin")


@app.route("/", defaults={"rest": ""}, methods=METHODS)
@app.route("/<path:rest>", methods=METHODS)
def other(rest):
    return _answer("other")


@app.errorhandler(HTTPException)
def framework_error(e):
    # Routing redirects (308) are not passed here by Flask; real errors are.
    return _answer("error", e.code or 500)


@app.errorhandler(Exception)
def crash(e):
    return _answer("error", 500)


def _exit_when_stdin_closes():
    # Blocks until EOF: the test holds the write end and drops it when done
    # (or dies). Exit at once; there is nothing to flush.
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    # One access-log line per request on stderr is noise for a 200-path corpus.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # threaded: gatehouse keeps upstream connections alive; one slow or idle
    # connection must not block the next request.
    server = make_server("127.0.0.1", port, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    # Bound and listening from here on (make_server binds and listens).
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
