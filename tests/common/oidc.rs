//! A real OpenID provider for the interop tests: the npm package
//! `oidc-provider`, run by `tests/interop/provider.mjs` as a child process.
//!
//! The script prints `READY <port>` once it listens on 127.0.0.1; the issuer
//! is `http://127.0.0.1:<port>`. The child is killed on drop, and exits on
//! its own when its stdin (held here) closes. Its stderr (warnings and one
//! line per token request) is kept for failure messages: [`OidcProvider::log`].

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use gatehouse::outbound::OutboundHttp;
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Value, json};

/// The resource server the provider knows (audience `gatehouse`, scopes `test api`).
pub const RESOURCE: &str = "https://gatehouse.test";

/// `client_secret_basic` client with the client_credentials grant.
pub const CONNECTOR: (&str, &str) = ("connector", "connector-secret");
/// `client_secret_post` client with the client_credentials grant.
pub const POSTER: (&str, &str) = ("poster", "poster-secret");
/// Authorization-code + refresh_token client (`client_secret_basic`).
pub const WEBAPP: (&str, &str) = ("webapp", "webapp-secret");
/// `private_key_jwt` client; exists when the provider was given signer keys.
pub const SIGNER: &str = "signer";

/// `tests/interop`, where the provider script and its node_modules live.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Fails the test (never skips it) when the npm packages are not installed.
fn require_node_modules() {
    let module = interop_dir().join("node_modules/oidc-provider/package.json");
    assert!(
        module.is_file(),
        "{} is missing: the interop tests need the npm package oidc-provider. Run `scripts/test` (it runs `npm ci` in tests/interop) \
         or `(cd tests/interop && npm ci)` first.",
        module.display()
    );
}

fn node() -> Command {
    require_node_modules();
    let mut cmd = Command::new("node");
    cmd.current_dir(interop_dir());
    cmd
}

/// oidc-provider running as a child process.
pub struct OidcProvider {
    child: Child,
    /// Held open: the script exits when it closes.
    _stdin: ChildStdin,
    pub issuer: String,
    log: Arc<Mutex<String>>,
    http: OutboundHttp,
}

/// A private_key_jwt key the provider should accept for client `signer`.
pub struct SignerKey<'a> {
    pub kid: &'a str,
    pub public_pem: &'a str,
}

impl OidcProvider {
    /// Starts the provider with the fixed clients (no `signer`).
    pub fn start() -> OidcProvider {
        Self::start_with(&[])
    }

    /// Starts the provider; `signer_keys` register client `signer` (private_key_jwt).
    pub fn start_with(signer_keys: &[SignerKey<'_>]) -> OidcProvider {
        let keys: Vec<Value> = signer_keys.iter().map(|k| json!({"kid": k.kid, "pem": k.public_pem})).collect();
        Self::start_options(json!({"port": 0, "signerKeys": keys}))
    }

    /// Starts the provider issuing access tokens for the resource server
    /// that live `seconds`.
    pub fn start_with_access_ttl(seconds: u64) -> OidcProvider {
        Self::start_options(json!({"port": 0, "accessTokenTtl": seconds}))
    }

    fn start_options(options: Value) -> OidcProvider {
        let mut child = node()
            .arg("provider.mjs")
            .arg(options.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (node 20+ is needed for the interop tests): {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().expect("log");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(port) = line.strip_prefix("READY ") {
                        break port.trim().parse::<u16>().expect("port in the READY line");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    // The child is gone, so its stderr is at EOF: take all of it.
                    let _ = stderr_reader.join();
                    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                    panic!("oidc-provider did not print READY within 20 s (exit: {status:?}); its stderr:\n{log}");
                }
            }
        };
        let http = OutboundHttp::new(None).expect("outbound http");
        OidcProvider { child, _stdin: stdin, issuer: format!("http://127.0.0.1:{port}"), log, http }
    }

    /// What the provider wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The `[[issuer]]` table for gatehouse (discovery: no jwks_uri).
    pub fn issuer_block(&self) -> String {
        format!("[[issuer]]\nissuer = \"{}\"\naudiences = [\"gatehouse\"]\n", self.issuer)
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Value {
        let r = self.http.get(&format!("{}/.well-known/openid-configuration", self.issuer)).await.expect("discovery");
        assert_eq!(r.status, 200, "discovery: {}", String::from_utf8_lossy(&r.body));
        serde_json::from_slice(&r.body).expect("discovery JSON")
    }

    /// The token endpoint, as discovery names it.
    pub async fn token_endpoint(&self) -> String {
        self.discovery().await["token_endpoint"].as_str().expect("token_endpoint").to_owned()
    }

    /// POSTs a form to the token endpoint, with HTTP Basic when `basic` is given.
    /// Returns the status and the JSON answer.
    pub async fn token_request(&self, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
        let mut headers = vec![(HeaderName::from_static("content-type"), HeaderValue::from_static("application/x-www-form-urlencoded"))];
        if let Some((id, secret)) = basic {
            let value = format!("Basic {}", STANDARD.encode(format!("{}:{}", form_encode(id), form_encode(secret))));
            headers.push((HeaderName::from_static("authorization"), HeaderValue::try_from(value).expect("header")));
        }
        let body = form.iter().map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v))).collect::<Vec<_>>().join("&");
        let url = self.token_endpoint().await;
        let r = self.http.send(Method::POST, &url, headers, Bytes::from(body)).await.expect("token request");
        let json = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("token answer is not JSON ({e}): {:?}", r.body));
        (r.status.as_u16(), json)
    }

    /// An access token for `connector` (client_credentials, `resource`, `scope`):
    /// a JWT signed by the provider, audience `gatehouse`.
    pub async fn client_credentials_token(&self, scope: &str) -> String {
        let (status, answer) =
            self.token_request(Some(CONNECTOR), &[("grant_type", "client_credentials"), ("resource", RESOURCE), ("scope", scope)]).await;
        assert_eq!(status, 200, "client_credentials: {answer}\nprovider log:\n{}", self.log());
        answer["access_token"].as_str().expect("access_token").to_owned()
    }

    /// Runs a real authorization-code flow (tests/interop/code_flow.mjs:
    /// devInteractions login as `account`, consent, PKCE) for client `webapp`
    /// with `openid offline_access test` and returns the token answer, which
    /// holds a refresh token.
    pub async fn code_flow(&self, account: &str) -> Value {
        let mut cmd = tokio::process::Command::from(node());
        let out = cmd
            .arg("code_flow.mjs")
            .arg(&self.issuer)
            .arg(account)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run code_flow.mjs");
        assert!(
            out.status.success(),
            "code_flow.mjs failed ({}): {}\nprovider log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("code_flow.mjs prints the token answer")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `application/x-www-form-urlencoded` for one key or value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The header and payload of a compact JWS, decoded (no verification).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = || {
        let part = parts.next().unwrap_or_else(|| panic!("not a JWT: {token}"));
        let bytes = URL_SAFE_NO_PAD.decode(part).unwrap_or_else(|e| panic!("JWT part is not base64url ({e}): {token}"));
        serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|e| panic!("JWT part is not JSON ({e}): {token}"))
    };
    let header = next();
    let payload = next();
    (header, payload)
}

/// The bearer token of an `authorization: Bearer ...` value.
pub fn bearer(value: Option<&HeaderValue>) -> String {
    let value = value.expect("an authorization header").to_str().expect("ASCII header");
    value.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a Bearer credential: {value}")).to_owned()
}
