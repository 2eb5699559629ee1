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

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;

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
    std::fs::write(UPSTREAM_SECRET, format!("Bearer dev-upstream-{}", hex(&upstream_secret)))
        .with_context(|| format!("cannot write {UPSTREAM_SECRET}"))?;
    let proxy = TcpListener::bind((loopback, port)).await.with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let admin = TcpListener::bind((loopback, admin_port)).await.with_context(|| format!("cannot listen on 127.0.0.1:{admin_port}"))?;
    // Port 0 asks the OS for a free port: print the ones really bound.
    let (port, admin_port) = (proxy.local_addr()?.port(), admin.local_addr()?.port());
    let config =
        dev_config(&certs, &issuer.issuer, echo_addr, SocketAddr::from((loopback, port)), SocketAddr::from((loopback, admin_port)))?;
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

/// The quickstart's config, written as a user would write it and read by
/// the same parser, so it has the same defaults and checks. The upstream's
/// static credential is read from `certs/dev-upstream.secret`.
fn dev_config(certs: &certs::DevCerts, issuer: &str, echo: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[listen]
addr = "{listen}"
tls_cert = "{cert}"
tls_key = "{key}"

[admin]
addr = "{admin}"

[audit]
path = "audit/audit.jsonl"

[policies]
dir = "policies"

[[issuer]]
issuer = "{issuer}"
audiences = ["gatehouse"]

[[upstream]]
name = "echo"
url = "http://{echo}"
[upstream.credential]
kind = "static"
value_file = "{secret}"

[[route]]
name = "echo"
path_prefix = "/echo/"
upstream = "echo"
strip_prefix = true
"#,
        cert = certs.cert.display(),
        key = certs.key.display(),
        secret = UPSTREAM_SECRET,
    );
    let path = Path::new("(gatehouse dev)");
    Config::parse(path, &crate::diagnostic::SourceFile::new("(gatehouse dev)", text))
        .map_err(|problems| anyhow::anyhow!(problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
}

/// Where the echo upstream's random credential is written for the config to read.
const UPSTREAM_SECRET: &str = "certs/dev-upstream.secret";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
