// Express 5 upstream for gatehouse's differential path test (tests/differential.rs).
//
//   node express_app.js [PORT]
//
// Listens on 127.0.0.1:PORT (0, the default, lets the OS choose), then prints
// exactly one line, `PORT <n>`, on stdout. Exits when its stdin closes (so it
// never outlives the test that started it) or on SIGTERM.
//
// The routes are written the way a typical Express app writes them, because
// the point is to learn which requests *this framework's own routing* sends to
// an admin handler, not ours:
//
//   /admin, /admin/*rest   -> {"handler": "admin", ...}  (counted)
//   anything else          -> {"handler": "other", ...}  (catch-all middleware)
//   /__admin_hits          -> {"admin_hits": n}          (the count)
//
// Express's defaults are kept on purpose, above all case-INsensitive routing
// (`/ADMIN/users` reaches the admin handler) and non-strict trailing slashes:
// they are exactly the kind of difference from gatehouse's case-sensitive
// policy globs that the test exists to catch.
//
// Unlike the Python frameworks, Express matches routes against the path as
// received, still percent-encoded (`req.path`). Every answer is JSON with
// `raw` (that path) and `path` (the same, percent-decoded once, invalid UTF-8
// shown as U+FFFD) so the test can compare like with like. An error inside
// Express (a route parameter that is not valid UTF-8 percent-encoding, ...)
// still gets JSON, with `handler: "error"` and Express's status.

'use strict';

const express = require('express');

const APP = 'express';

// stdout carries only the PORT line.
console.log = console.error;

let adminHits = 0;

// Percent-decodes once, byte-wise, then reads the bytes as UTF-8 with U+FFFD
// for invalid sequences (the same lossy rule uvicorn and Werkzeug apply).
// decodeURIComponent would throw on `%C0%AE` instead.
function decodeLossy(s) {
  const bytes = [];
  for (let i = 0; i < s.length; ) {
    const hex = s.slice(i + 1, i + 3);
    if (s[i] === '%' && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      bytes.push(parseInt(hex, 16));
      i += 3;
    } else {
      const cp = s.codePointAt(i);
      const ch = String.fromCodePoint(cp);
      for (const b of Buffer.from(ch, 'utf8')) bytes.push(b);
      i += ch.length;
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function answer(req, res, handler, status = 200) {
  // originalUrl: the target as received (the router may rewrite req.url).
  const raw = req.originalUrl.split('?', 1)[0];
  const body = { app: APP, handler, path: decodeLossy(req.path), raw };
  if (status !== 200) body.status = status;
  res.status(status).json(body);
}

function admin(req, res) {
  adminHits += 1;
  answer(req, res, 'admin');
}

const app = express();
app.disable('x-powered-by');
app.disable('etag');

app.get('/__admin_hits', (req, res) => res.json({ app: APP, admin_hits: adminHits }));
app.all('/admin', admin);
// Express 5 (path-to-regexp 8) spelling of `/admin/*`.
app.all('/admin/*rest', admin);
// Catch-all: a middleware, so it takes every method and every path.
app.use((req, res) => answer(req, res, 'other'));
// Error handler (four arguments): Express's own refusals become JSON too.
app.use((err, req, res, _next) => {
  const status = Number.isInteger(err.status) ? err.status : 500;
  answer(req, res, 'error', status);
});

const port = Number(process.argv[2] ?? 0);
const server = app.listen(port, '127.0.0.1', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
server.on('error', (e) => {
  console.error(`express_app: ${e.message}`);
  process.exit(1);
});

process.on('SIGTERM', () => process.exit(0));
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
