//! Shared harness: generated PKI, the dev issuer, test upstreams, TLS
//! clients, and gatehouse itself, in-process or as a child process.
#![allow(dead_code)]

pub mod client;
pub mod idp;
pub mod oauth;
pub mod oidc;
pub mod postgres;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gatehouse::config::Config;
use gatehouse::dev::certs::{DevCerts, write_certs};
use gatehouse::dev::issuer::DevIssuer;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A folder with certificates, a running dev issuer and config/policy writers.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
    pub issuer: Arc<DevIssuer>,
}

/// A policy that lets every `test` scope through on every route.
pub const ALLOW_ALL: &str = r#"
[[rule]]
id = "allow-tests"
route = "*"
scopes_all = ["test"]
"#;

impl TestEnv {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = write_certs(&dir.path().join("certs"), "test CA", &["localhost", "127.0.0.1"]).expect("certs");
        let issuer = DevIssuer::start(TcpListener::bind("127.0.0.1:0").await.expect("bind")).expect("issuer");
        std::fs::create_dir_all(dir.path().join("policies")).expect("policies dir");
        Self { dir, certs, issuer }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A token for `sub` with these scopes, audience `gatehouse`.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        self.token_with(json!({"sub": sub, "aud": "gatehouse", "scope": scope, "client_id": "test-client", "jti": "j-1"}))
    }

    pub fn token_with(&self, claims: Value) -> String {
        let claims: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        self.issuer.mint(claims).expect("mint")
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join("policies").join(name), text).expect("write policy");
    }

    /// Writes `gatehouse.toml`: listen/admin on port 0, audit, policies and
    /// the dev issuer, followed by `rest` (upstreams, routes, limits).
    pub fn write_config(&self, rest: &str) -> PathBuf {
        let issuer = format!("[[issuer]]\nissuer = \"{}\"\naudiences = [\"gatehouse\"]\n", self.issuer.issuer);
        self.write_config_with(&issuer, rest)
    }

    /// Like `write_config`, with the `[[issuer]]` tables given.
    pub fn write_config_with(&self, issuers: &str, rest: &str) -> PathBuf {
        let text = format!(
            r#"
[listen]
addr = "127.0.0.1:0"
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"

[admin]
addr = "127.0.0.1:0"

[audit]
path = "audit/audit.jsonl"

[policies]
dir = "policies"

{issuers}

{rest}
"#
        );
        let path = self.dir.path().join("gatehouse.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit/audit.jsonl")
    }

    /// Every audit record written so far.
    pub fn audit_records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("audit line is JSON")).collect()
    }
}

/// One upstream `svc` at `url` behind the route `/svc/` (prefix stripped),
/// with `upstream_lines` added to the upstream table and `rest` after the
/// route (limits, more routes).
pub fn svc_route(url: &str, upstream_lines: &str, rest: &str) -> String {
    format!(
        "[[upstream]]\nname = \"svc\"\nurl = \"{url}\"\n{upstream_lines}\n\n\
         [[route]]\nname = \"svc\"\npath_prefix = \"/svc/\"\nupstream = \"svc\"\nstrip_prefix = true\n\n{rest}"
    )
}

/// An upstream `name` at `url` with these `[upstream.credential]` lines,
/// behind the route `/name/` (prefix stripped).
pub fn plain_upstream(name: &str, url: &str, credential: &str) -> String {
    format!(
        "\n[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n[upstream.credential]\n{credential}\n\n\
         [[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\nstrip_prefix = true\n"
    )
}

/// Runs `gatehouse credentials set UPSTREAM --refresh-token-stdin` with
/// `vars` added to its environment, feeding it `refresh_token`.
pub fn credentials_set(config: &Path, upstream: &str, vars: &[(&str, &str)], refresh_token: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--config")
        .arg(config)
        .args(["credentials", "set", upstream, "--refresh-token-stdin"])
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    child.stdin.take().expect("stdin").write_all(format!("{refresh_token}\n").as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("gatehouse credentials set");
    assert!(
        out.status.success(),
        "credentials set failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The refresh token the store `data/gatehouse.db` holds for `upstream`.
pub async fn stored(env: &TestEnv, key_b64: &str, upstream: &str) -> Option<String> {
    let key = gatehouse::store::StoreKey::from_base64(key_b64).expect("key");
    let path = env.path("data/gatehouse.db");
    let store = gatehouse::store::SqliteStore::open(&path, vec![key]).expect("open store");
    let store: &dyn gatehouse::store::CredentialStore = &store;
    store.get(upstream).await.expect("store get").map(|s| s.expose().to_owned())
}

/// The refresh token a PostgreSQL store at `url` holds for `upstream`.
pub async fn stored_in(url: &str, key_b64: &str, upstream: &str) -> Option<String> {
    let key = gatehouse::store::StoreKey::from_base64(key_b64).expect("key");
    let tls = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let options = gatehouse::store::PostgresOptions { password: None, pool_size: 1, connect_timeout: Duration::from_secs(5), tls };
    let store = gatehouse::store::PostgresStore::connect(url, vec![key], options).await.expect("open store");
    let store: &dyn gatehouse::store::CredentialStore = &store;
    store.get(upstream).await.expect("store get").map(|s| s.expose().to_owned())
}

/// gatehouse running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), gatehouse::StartError>>,
    pub hup: Arc<tokio::sync::Notify>,
}

impl Proxy {
    /// Starts gatehouse on ports chosen by the OS and waits until /readyz says ready.
    pub async fn start(config: &Path) -> Proxy {
        let config = Config::load(config).unwrap_or_else(|e| panic!("config: {e:#?}"));
        let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, admin_addr) = (proxy.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let hup = Arc::new(tokio::sync::Notify::new());
        let listeners = gatehouse::Listeners { proxy, admin: Some(admin) };
        let task = tokio::spawn(gatehouse::run(config, listeners, hup.clone(), async move {
            let _ = rx.await;
        }));
        let p = Proxy { addr, admin: admin_addr, stop: Some(tx), task, hup };
        p.wait_ready().await;
        p
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.admin).await;
    }

    /// Drains, flushes the audit log and returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.expect("proxy task").expect("proxy run");
    }
}

/// Runs `probe` until it returns `Some` and returns that, failing the test
/// with `what` once `within` has passed. The one way tests wait for
/// something to happen in another task or process: on the event itself,
/// looked at every 20 ms, never a guessed sleep.
pub async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The unlabelled metric `name` from /metrics.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<i64> {
    let (_, body) = client::admin_get(admin, "/metrics").await?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<i64>().ok())
}

/// Waits until the unlabelled metric `name` reads `value` (10 s deadline).
pub async fn wait_metric(admin: SocketAddr, name: &str, value: i64) {
    eventually(&format!("{name} = {value}"), Duration::from_secs(10), || async {
        (metric(admin, name).await == Some(value)).then_some(())
    })
    .await;
}

/// Waits until /readyz answers 200 (10 s deadline).
pub async fn wait_ready(admin: SocketAddr) {
    eventually("gatehouse ready", Duration::from_secs(10), || async {
        (client::admin_get(admin, "/readyz").await.map(|(s, _)| s) == Some(200)).then_some(())
    })
    .await;
}

/// Waits (10 s at most) for a child process to exit on its own.
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    eventually("the process to exit", Duration::from_secs(10), || std::future::ready(child.try_wait().ok().flatten())).await
}

/// gatehouse as a child process (for RSS, signals and exit codes).
pub struct ChildProxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_lines: std::sync::mpsc::Receiver<String>,
    /// The stderr lines read before (and including) the "serving" line.
    pub startup_lines: Vec<String>,
}

impl ChildProxy {
    pub fn spawn(config: &Path) -> ChildProxy {
        Self::spawn_with_env(config, &[])
    }

    /// Like `spawn`, with these variables added to the inherited environment.
    pub fn spawn_with_env(config: &Path, vars: &[(&str, &str)]) -> ChildProxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["--log-format", "json", "--config"])
            .arg(config)
            .arg("serve")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let stderr = child.stderr.take();
        // From here on the child is owned by a guard that kills and reaps it.
        let mut guard = ChildProxy {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            admin: ([0, 0, 0, 0], 0).into(),
            stderr_lines: std::sync::mpsc::channel().1,
            startup_lines: Vec::new(),
        };
        let stderr = stderr.expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).expect("gatehouse did not report its addresses");
            guard.startup_lines.push(line.clone());
            let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
            let fields = &v["fields"];
            if fields["message"] == "gatehouse is serving" {
                let addr = fields["proxy"].as_str().expect("proxy addr").parse().expect("addr");
                let admin = fields["admin"].as_str().expect("admin addr").parse().expect("addr");
                guard.addr = addr;
                guard.admin = admin;
                guard.stderr_lines = rx;
                return guard;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("kill").success();
        assert!(ok, "kill -{sig} failed");
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with(key)).expect("key in status");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("number")
}
