//! Differential path test: gatehouse in front of three real web frameworks,
//! Flask (Werkzeug), Starlette (uvicorn) and Express 5, each with an admin
//! area that gatehouse's policy denies.
//!
//! gatehouse matches its policy globs on the path it normalized (docs/wire.md) and
//! forwards that same path. A framework that decodes, folds case or resolves
//! segments in its own way could still route a spelling the policy let
//! through to the handler the policy meant to protect. So every spelling in
//! `tests/differential/corpus.txt` is sent through gatehouse to every
//! framework, and:
//! - nothing gatehouse forwards may reach a framework's admin handler: each
//!   answer says which handler ran, and each app counts its admin handler's
//!   runs (`/__admin_hits`, asked directly, not through gatehouse);
//! - what gatehouse forwards is the path its policy decided on: the
//!   framework's raw path equals `normalize_path` of the target with the
//!   route prefix stripped, and the path it routed on is that, percent-decoded.
//!
//! Whether gatehouse forwarded a request is read from its audit record (by
//! `x-request-id`), not guessed from the status: a framework's own 404 and
//! gatehouse's no-route 404 look alike on the wire.
//!
//! Express keeps its default case-insensitive routing on purpose: `/ADMIN`
//! reaches its admin handler. Its route says `case_insensitive = true`, as
//! an operator of such an upstream must, so that gatehouse's globs match
//! without regard to case; without that line this test fails on 16 spellings
//! (`/Admin`, `/%41DMIN`, ...), which is the finding the option exists for.
//!
//! Needs Python with `tests/differential/requirements.txt` (in
//! `tests/.venv`, else the `python3` on PATH) and `node` with
//! `tests/differential/node_modules`. `scripts/test` installs both; without
//! them this test fails, never skips, and says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client;
use common::{Proxy, TestEnv};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INSTALL_HINT: &str = "run `scripts/test`: it installs tests/differential/requirements.txt into \
                            tests/.venv and runs `npm ci` in tests/differential";

/// The corpus must stay large enough to mean something.
const MIN_CORPUS: usize = 220;

/// A framework under test. Its name is also its route, upstream and path prefix (`/{name}/`).
#[derive(Debug, Clone, Copy)]
struct Framework {
    name: &'static str,
    script: &'static str,
    runtime: Runtime,
}

#[derive(Debug, Clone, Copy)]
enum Runtime {
    Python,
    Node,
}

const FRAMEWORKS: [Framework; 3] = [
    Framework { name: "flask", script: "flask_app.py", runtime: Runtime::Python },
    Framework { name: "starlette", script: "starlette_app.py", runtime: Runtime::Python },
    Framework { name: "express", script: "express_app.js", runtime: Runtime::Node },
];

/// `tests/differential`: the apps, their dependencies and the corpus.
fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/differential")
}

impl Framework {
    /// The command that starts this framework's app. Missing packages fail
    /// the test (never skip it): express is looked for here, the Python
    /// packages by the app itself at import.
    fn command(self) -> Command {
        let dir = dir();
        let mut cmd = match self.runtime {
            Runtime::Python => {
                // The pinned packages live in tests/.venv, which
                // scripts/test makes; a `python3` on PATH that has them will do.
                // Either way a missing module stops the app at import, and
                // `App::start` fails with its traceback and the install hint.
                let venv = dir.join("../.venv/bin/python3");
                Command::new(if venv.is_file() { venv.into_os_string() } else { "python3".into() })
            }
            Runtime::Node => {
                let express = dir.join("node_modules/express/package.json");
                assert!(
                    express.is_file(),
                    "{} is missing: the {} upstream needs the npm package express; {INSTALL_HINT}",
                    express.display(),
                    self.name
                );
                Command::new("node")
            }
        };
        cmd.arg(self.script).current_dir(dir);
        cmd
    }
}

/// A framework's app running as a child process. Killed on drop; it also
/// exits by itself when its stdin (held here) closes.
struct App {
    framework: Framework,
    addr: SocketAddr,
    child: Child,
    _stdin: ChildStdin,
    log: Arc<Mutex<String>>,
}

impl App {
    /// Starts the app and waits for its `PORT <n>` line (30 s deadline).
    fn start(framework: Framework) -> App {
        let name = framework.name;
        let mut child = framework
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} upstream ({e}); is its runtime installed? {INSTALL_HINT}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // From here on the guard kills and reaps the child, whatever happens.
        let mut app = App { framework, addr: SocketAddr::from(([127, 0, 0, 1], 0)), child, _stdin: stdin, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Timed out, or the app exited (a missing module ends it at import).
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = app.child.kill();
                let status = app.child.wait().ok();
                // The child is gone, so its stderr is at EOF: take all of it.
                let _ = stderr_reader.join();
                panic!(
                    "the {name} upstream did not print `PORT <n>` within 30 s (exit: {status:?}). \
                     If a module is missing, {INSTALL_HINT}. Its stderr:\n{}",
                    app.log()
                );
            };
            if let Some(port) = line.strip_prefix("PORT ") {
                break port.trim().parse::<u16>().expect("port in the PORT line");
            }
        };
        app.addr.set_port(port);
        app
    }

    fn name(&self) -> &'static str {
        self.framework.name
    }

    /// What the app wrote to stderr so far.
    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `GET path` straight to the app (plain HTTP, not through gatehouse); its JSON answer.
    async fn direct(&self, path: &str) -> Value {
        let name = self.name();
        let Some((status, body)) = client::admin_get(self.addr, path).await else {
            panic!("the {name} upstream did not answer GET {path}; its stderr:\n{}", self.log());
        };
        assert_eq!(status, 200, "{name} GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name} GET {path}: not JSON ({e}): {body}"))
    }

    /// How many times the admin handler has run.
    async fn admin_hits(&self) -> u64 {
        self.direct("/__admin_hits").await["admin_hits"].as_u64().expect("admin_hits is a number")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The corpus lines (comments and empty lines dropped, nothing trimmed).
fn corpus() -> Vec<String> {
    let path = dir().join("corpus.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<String> = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    for line in &lines {
        assert!(line.starts_with('/'), "corpus line {line:?} does not start with '/'");
    }
    assert!(lines.len() >= MIN_CORPUS, "the corpus has {} spellings, fewer than {MIN_CORPUS}", lines.len());
    lines
}

/// One upstream and one route per app, `/{name}/` with the prefix stripped.
fn routes(apps: &[App]) -> String {
    apps.iter()
        .map(|app| {
            let (name, addr) = (app.name(), app.addr);
            let case = if name == "express" { "case_insensitive = true\n" } else { "" };
            format!(
                "[[upstream]]\nname = \"{name}\"\nurl = \"http://{addr}\"\n[upstream.credential]\nkind = \"none\"\n\n\
                 [[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\nstrip_prefix = true\n{case}\n"
            )
        })
        .collect::<Vec<_>>()
        .concat()
}

/// The policy: `test` may use every route, but never its admin area.
fn policy() -> String {
    FRAMEWORKS
        .iter()
        .map(|f| {
            let name = f.name;
            format!(
                r#"
[[rule]]
id = "{name}-allow"
route = "{name}"
paths = ["/{name}/**"]
effect = "allow"
scopes_all = ["test"]

[[rule]]
id = "{name}-admin-deny"
route = "{name}"
paths = ["/{name}/admin", "/{name}/admin/**"]
effect = "deny"
"#
            )
        })
        .collect::<Vec<_>>()
        .concat()
}

/// What gatehouse answered one request.
struct Answer {
    /// 0 when no status line came back.
    status: u16,
    request_id: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, when it is JSON from one of the apps (they all say `handler`).
    fn app_json(&self) -> Option<Value> {
        serde_json::from_slice::<Value>(&self.body).ok().filter(|v| v.get("handler").is_some())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(300).collect()
    }
}

/// Sends `GET target` with `token` over HTTP/1.1 on a new TLS connection, as
/// raw bytes: hyper's client would refuse some of the targets.
async fn send(proxy: SocketAddr, ca: &Path, target: &[u8], token: &str) -> Answer {
    let mut request = Vec::with_capacity(target.len() + token.len() + 128);
    request.extend_from_slice(b"GET ");
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut s = client::tls_connect(proxy, ca).await;
    s.write_all(&request).await.expect("write");
    let mut out = Vec::new();
    // Read until gatehouse closes (Connection: close). A peer that closes
    // without close_notify ends in an error; what was read is kept.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    parse_answer(&out)
}

fn parse_answer(bytes: &[u8]) -> Answer {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer { status: 0, request_id: None, body: bytes.to_vec() };
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    let status = client::raw_status(&head);
    let mut request_id = None;
    let mut chunked = false;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-request-id") {
            request_id = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = &bytes[end + 4..];
    Answer { status, request_id, body: if chunked { dechunk(body) } else { body.to_vec() } }
}

/// The payload of a chunked body (chunk extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else { break };
        let start = eol + 2;
        let Some(chunk) = start.checked_add(size).and_then(|end| rest.get(start..end)) else { break };
        if size == 0 {
            break;
        }
        out.extend_from_slice(chunk);
        rest = rest.get(start + size + 2..).unwrap_or_default();
    }
    out
}

/// The path of a request target as the `http` crate splits it: up to the
/// query, with any `#` fragment dropped.
fn target_path(target: &str) -> &str {
    target.find(['?', '#']).map_or(target, |i| &target[..i])
}

/// The path forwarded for the normalized `path` on route `/{name}/` with
/// strip_prefix: what `Route::upstream_path` does.
fn stripped(path: &str, name: &str) -> String {
    let prefix = format!("/{name}");
    let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
    if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") }
}

/// Percent-decodes once, then reads the bytes as UTF-8 with U+FFFD for
/// invalid sequences: the lossy rule Werkzeug and uvicorn apply (and the
/// Express app copies).
fn percent_decode_lossy(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high << 4) | low);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One corpus request through gatehouse to one app.
struct Sent {
    app: &'static str,
    target: String,
    answer: Answer,
}

/// Per-app counts for the summary line.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    /// Forwarded (audit decision `allow`).
    allowed: usize,
    /// Forwarded and answered by the catch-all handler.
    other: usize,
    /// Forwarded and answered by the admin handler: each one is a violation.
    admin: usize,
    /// Forwarded, but the framework refused it before any handler ran
    /// (its own 400/404, or an error inside its router).
    not_reached: usize,
    /// Refused by gatehouse's path rules (400).
    refused_400: usize,
    /// Refused by the HTTP parser, before gatehouse's pipeline (no audit record).
    refused_by_parser: usize,
    denied_403: usize,
    no_route_404: usize,
}

/// Checks one request against its audit record; counts it and records violations.
fn check(sent: &Sent, record: Option<&Value>, tally: &mut Tally, violations: &mut Vec<String>) {
    let Sent { app, target, answer } = sent;
    let what = format!("{app} {target:?}");
    let app_json = answer.app_json();
    tally.sent += 1;
    let Some(record) = record else {
        // No audit record: the HTTP parser refused the head before gatehouse's
        // pipeline ran (hyper's own 400, or 414/431, without a request id),
        // e.g. for a raw space or tab in the target.
        if (400..500).contains(&answer.status) && answer.request_id.is_none() && app_json.is_none() {
            tally.refused_by_parser += 1;
        } else {
            violations.push(format!(
                "{what}: status {} (request id {:?}) but no audit record: {}",
                answer.status,
                answer.request_id,
                answer.body_text()
            ));
        }
        return;
    };
    if record["decision"] != "allow" {
        if app_json.is_some() {
            violations.push(format!("{what}: gatehouse refused it, yet the app answered: {}", answer.body_text()));
        }
        match (answer.status, record["reason"].as_str()) {
            // Whichever path rule refused it (bad_path today).
            (400, _) => tally.refused_400 += 1,
            (403, Some("policy_deny")) if record["rule"] == format!("{app}-admin-deny").as_str() => tally.denied_403 += 1,
            (404, Some("no_route")) => tally.no_route_404 += 1,
            (status, reason) => violations.push(format!(
                "{what}: refused with {status} (reason {reason:?}, rule {}); expected 400, 403 by {app}-admin-deny or 404 no_route",
                record["rule"]
            )),
        }
        return;
    }
    tally.allowed += 1;
    let Some(json) = app_json else {
        match record["reason"].as_str() {
            // The framework answered, without a handler's JSON: its HTTP server
            // refused the request before routing.
            None => tally.not_reached += 1,
            Some(reason) => {
                violations.push(format!("{what}: allowed, but the app did not answer ({} {reason}): {}", answer.status, answer.body_text()))
            }
        }
        return;
    };
    match json["handler"].as_str() {
        Some("other") => tally.other += 1,
        Some("admin") => {
            tally.admin += 1;
            violations.push(format!("{what}: the policy allowed it and {app} routed it to its ADMIN handler: {json}"));
        }
        _ => tally.not_reached += 1,
    }
    // The path gatehouse's policy decided on, and what it forwarded.
    let decided = match gatehouse::request::normalize_path(target_path(target)) {
        Ok(path) => path,
        Err(e) => {
            violations.push(format!("{what}: forwarded, yet normalize_path refuses it: {e}"));
            return;
        }
    };
    if record["path"] != decided.as_str() {
        violations.push(format!("{what}: audited path {} is not normalize_path's {decided:?}", record["path"]));
    }
    let forwarded = stripped(&decided, app);
    // Byte for byte where the app shows the raw path (all three do today).
    if let Some(raw) = json["raw"].as_str()
        && raw != forwarded
    {
        violations.push(format!("{what}: {app} received {raw:?}, gatehouse decided on {forwarded:?}"));
    }
    // And what its router matched on must be that path decoded once: a
    // framework that decodes twice, folds '+' or mangles non-ASCII shows here.
    let expected = percent_decode_lossy(&forwarded);
    if json["path"].as_str() != Some(expected.as_str()) {
        violations.push(format!("{what}: {app} routed on {}, expected {expected:?} ({forwarded:?} decoded)", json["path"]));
    }
}

#[tokio::test]
async fn paths_the_policy_denies_never_reach_a_framework_admin_handler() {
    let corpus = corpus();
    // The apps first: waiting for them blocks this thread, before anything else runs on it.
    let apps: Vec<App> = FRAMEWORKS.into_iter().map(App::start).collect();

    // Sent directly, an admin path reaches each admin handler and another path
    // the catch-all: without that, "never reached admin" would prove nothing.
    let mut hits_before = Vec::new();
    for app in &apps {
        let name = app.name();
        let admin = app.direct("/admin/users").await;
        assert_eq!(admin["handler"], "admin", "{name}: /admin/users sent directly must reach the admin handler: {admin}");
        let other = app.direct("/public").await;
        assert_eq!(other["handler"], "other", "{name}: /public sent directly must reach the catch-all: {other}");
        hits_before.push(app.admin_hits().await);
    }

    let env = TestEnv::new().await;
    env.write_policy("differential.toml", &policy());
    let proxy = Proxy::start(&env.write_config(&routes(&apps))).await;
    let token = env.token("svc-a", "test");

    let mut sent = Vec::new();
    for app in &apps {
        let name = app.name();
        // Through gatehouse: an ordinary path is forwarded (else nothing below
        // is ever forwarded and the test proves nothing), the admin area is not.
        let control = send(proxy.addr, &env.certs.ca, format!("/{name}/public").as_bytes(), &token).await;
        let json = control.app_json();
        assert_eq!(control.status, 200, "{name}: /{name}/public through gatehouse: {}", control.body_text());
        assert_eq!(json.as_ref().map(|j| j["raw"].clone()), Some(Value::from("/public")), "{name}: {}", control.body_text());
        let denied = send(proxy.addr, &env.certs.ca, format!("/{name}/admin/users").as_bytes(), &token).await;
        assert_eq!(denied.status, 403, "{name}: /{name}/admin/users through gatehouse: {}", denied.body_text());

        for line in &corpus {
            let target = format!("/{name}{line}");
            let answer = send(proxy.addr, &env.certs.ca, target.as_bytes(), &token).await;
            sent.push(Sent { app: name, target, answer });
        }
    }
    let mut hits = Vec::new();
    for (app, before) in apps.iter().zip(&hits_before) {
        hits.push(app.admin_hits().await - before);
    }
    // Stopping flushes the audit log: every request's record is in it after this.
    proxy.stop().await;
    let records: HashMap<String, Value> = env
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "request")
        .filter_map(|r| {
            let id = r["request_id"].as_str()?.to_owned();
            Some((id, r))
        })
        .collect();

    let mut violations = Vec::new();
    let mut tallies: HashMap<&str, Tally> = HashMap::new();
    for s in &sent {
        let record = s.answer.request_id.as_ref().and_then(|id| records.get(id));
        check(s, record, tallies.entry(s.app).or_default(), &mut violations);
    }

    for (app, ran) in apps.iter().zip(&hits) {
        let name = app.name();
        let tally = tallies.get(name).expect("a tally per app");
        eprintln!(
            "{name}: corpus {}, allowed {} (catch-all {}, admin {}, not reached {}), refused 400 {} (+{} by the HTTP parser), \
             denied 403 {}, no route 404 {}, admin hits {ran}",
            tally.sent,
            tally.allowed,
            tally.other,
            tally.admin,
            tally.not_reached,
            tally.refused_400,
            tally.refused_by_parser,
            tally.denied_403,
            tally.no_route_404
        );
        // Every run of the admin handler must be one of the answers above
        // (so none went unseen), and there must be none at all.
        if *ran != tally.admin as u64 {
            violations.push(format!("{name}: the admin handler ran {ran} times, but {} answers said admin", tally.admin));
        }
        if tally.other == 0 || tally.denied_403 == 0 || tally.refused_400 == 0 {
            violations.push(format!("{name}: the corpus no longer exercises every outcome: {tally:?}"));
        }
    }
    assert!(violations.is_empty(), "{} violation(s):\n{}", violations.len(), violations.join("\n"));
}
