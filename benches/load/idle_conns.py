#!/usr/bin/env python3
"""Open N TLS keep-alive connections to HOST:PORT, send one request on each
(so each is a served, idle HTTP/1.1 keep-alive connection), then hold them all.

    idle_conns.py HOST PORT N TOKEN HOLD_S

Prints progress, then "READY <open>" once all are open and answered, then
holds them for HOLD_S seconds (or until killed) and prints "CLOSED" on exit.
Exits 1 if fewer than N connections could be opened and answered with 200.
"""
import asyncio
import ssl
import sys
import time


async def open_one(host, port, ctx, request, sem, conns, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 30)
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 30)
            if status != b"200":
                failures.append(f"status {status.decode()}")
            conns.append((reader, writer))
        except Exception as e:  # noqa: BLE001 - count and report every kind of failure
            failures.append(f"{type(e).__name__}: {e}")


async def main():
    host, port, n, token, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is not what is measured here
    ctx.set_alpn_protocols(["http/1.1"])
    request = (f"GET /bench/ok HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    sem = asyncio.Semaphore(200)
    conns, failures = [], []
    start = time.monotonic()
    batch = 1000
    for i in range(0, n, batch):
        await asyncio.gather(*(open_one(host, port, ctx, request, sem, conns, failures)
                               for _ in range(min(batch, n - i))))
        print(f"opened {len(conns)} ({len(failures)} failed) in {time.monotonic() - start:.1f}s", flush=True)
    if failures:
        print(f"FAILED {len(failures)}: {sorted(set(failures))[:5]}", flush=True)
    # Check that they are still open: a closed one reads EOF at once.
    await asyncio.sleep(1)
    closed = sum(1 for r, _ in conns if r.at_eof())
    print(f"READY {len(conns) - closed} open, {closed} closed by the server", flush=True)
    try:
        await asyncio.sleep(hold)
    finally:
        for _, w in conns:
            w.close()
        print("CLOSED", flush=True)
    sys.exit(0 if not failures and len(conns) == n else 1)


asyncio.run(main())
