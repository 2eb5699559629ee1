//! `gatehouse dev` (docs/commands.md §10): one command, no file and no network needed.
//! It creates a dev CA and a localhost certificate under `certs/`, starts
//! a development issuer and an echo upstream on loopback, loads
//! `policies/`, and prints a token and a `curl` line that goes through the
//! whole path. Loopback only; not for production.

pub mod certs;
pub mod echo;
pub mod issuer;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{
    AuditSettings, AuditTarget, Config, DEFAULT_ALGORITHMS, IssuerSettings, Limits, Listen, RouteSettings, ScopeClaim, UpstreamSettings,
};
use crate::credential::CredentialSpec;
use crate::secret::Secret;

/// The example policy set, written to `policies/` when that folder is missing.
const EXAMPLE_POLICY: &str = include_str!("../../policies/echo.toml");

/// Runs the quickstart until `shutdown` resolves (SIGTERM or SIGINT), then
/// drains like `serve`. `hup` reloads the policies.
pub async fn run(
    port: u16,
    admin_port: u16,
    hup: Arc<tokio::sync::Notify>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let loopback = Ipv4Addr::LOCALHOST;
    let certs =
        certs::ensure_dev_certs(Path::new("certs")).map_err(|e| anyhow::anyhow!("cannot create the dev certificates under certs/: {e}"))?;
    let policies = PathBuf::from("policies");
    if !policies.exists() {
        std::fs::create_dir_all(&policies)?;
        std::fs::write(policies.join("echo.toml"), EXAMPLE_POLICY)?;
    }
    let issuer = issuer::DevIssuer::start(TcpListener::bind((loopback, 0)).await?).map_err(anyhow::Error::msg)?;
    let echo_listener = TcpListener::bind((loopback, 0)).await?;
    let echo_addr = echo_listener.local_addr()?;
    tokio::spawn(echo::serve(echo_listener));
    let mut upstream_secret = [0u8; 12];
    aws_lc_rs::rand::fill(&mut upstream_secret).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let upstream_value = format!("Bearer dev-upstream-{}", hex(&upstream_secret));
    let proxy = TcpListener::bind((loopback, port)).await.with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let admin = TcpListener::bind((loopback, admin_port)).await.with_context(|| format!("cannot listen on 127.0.0.1:{admin_port}"))?;
    // Port 0 asks the OS for a free port: print the ones really bound.
    let (port, admin_port) = (proxy.local_addr()?.port(), admin.local_addr()?.port());
    let config = dev_config(
        &certs,
        &issuer.issuer,
        echo_addr,
        SocketAddr::from((loopback, port)),
        SocketAddr::from((loopback, admin_port)),
        upstream_value,
    );
    let token = issuer
        .mint(
            json!({"sub": "dev-connector", "aud": "gatehouse", "client_id": "dev-connector", "scope": "echo.read echo.write", "jti": "dev-1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
        .map_err(anyhow::Error::msg)?;
    let banner = format!(
        "\n  gatehouse dev: FOR LOCAL DEVELOPMENT ONLY, NOT FOR PRODUCTION (dev CA, dev issuer, loopback only)\n\n  \
         proxy   https://localhost:{port}   admin http://127.0.0.1:{admin_port}/readyz\n  \
         issuer  {iss}   echo upstream http://{echo_addr}\n  \
         policies policies/   audit audit/audit.jsonl\n\n  \
         token (valid 1 hour, scopes echo.read echo.write):\n  {token}\n\n  \
         try it:\n  curl --cacert {ca} -H \"Authorization: Bearer {token}\" https://localhost:{port}/echo/hello\n\n",
        iss = issuer.issuer,
        ca = certs.ca.display(),
    );
    std::io::stdout().write_all(banner.as_bytes())?;
    std::io::stdout().flush()?;
    tracing::warn!("gatehouse dev is not for production");
    crate::run(config, crate::Listeners { proxy, admin: Some(admin) }, hup, shutdown).await?;
    Ok(())
}

fn dev_config(
    certs: &certs::DevCerts,
    issuer: &str,
    echo: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream_value: String,
) -> Config {
    let issuer = IssuerSettings {
        issuer: issuer.to_owned(),
        audiences: vec!["gatehouse".into()],
        jwks_uri: None,
        algorithms: DEFAULT_ALGORITHMS.to_vec(),
        scope_claim: ScopeClaim::Both,
        leeway: Duration::from_secs(30),
        jwks_refetch_interval: Duration::from_secs(10),
        max_stale: Duration::from_secs(24 * 3600),
        verified_cache_ttl: Duration::from_secs(60),
        max_token_bytes: 16 * 1024,
        ca_file: None,
    };
    let upstream = UpstreamSettings {
        name: "echo".into(),
        url: format!("http://{echo}").parse().unwrap_or_default(),
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(30),
        http2: false,
        min_token_age: crate::config::DEFAULT_MIN_TOKEN_AGE,
        credential: CredentialSpec::Static { header: http::header::AUTHORIZATION, value: Secret::new(upstream_value) },
    };
    Config {
        file: PathBuf::from("(gatehouse dev)"),
        listen: Listen { addr: listen, tls_cert: certs.cert.clone(), tls_key: certs.key.clone(), client_ca: None },
        admin: Some(admin),
        audit: AuditSettings { target: AuditTarget::File(PathBuf::from("audit/audit.jsonl")), max_file_bytes: 100 << 20 },
        store: None,
        policies_dir: PathBuf::from("policies"),
        issuers: vec![issuer],
        limits: Limits::default(),
        upstreams: vec![upstream],
        routes: vec![RouteSettings {
            name: "echo".into(),
            path_prefix: "/echo/".into(),
            upstream: "echo".into(),
            strip_prefix: true,
            host: None,
            allow: crate::request::PathAllowances::default(),
            case_insensitive: false,
        }],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
