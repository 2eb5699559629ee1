//! gatehouse: an identity-aware reverse proxy. Callers present OIDC JWTs;
//! policy files decide; upstreams get short-lived OAuth credentials; every
//! request leaves one hash-chained audit record.
//!
//! The request path is `proxy::handle`; [`run`] wires everything.
//!
//! Layers, bottom first: untrusted, secret, diagnostic, identity, metrics,
//! body, headers, request, store, credential, config, tls, outbound, route,
//! authn, authz, audit, forward, error, proxy, server, admin, reload, lib,
//! dev. A module imports only modules below it in this list (outside its
//! tests): data flows one way, from the caller's bytes to the audit record,
//! and the leaves that every stage shares sit at the bottom.
//! `tests/layering.rs` checks it.
//!
//! Public are the modules the binary, the integration tests and the
//! benchmarks use; the pipeline's stages (proxy, forward, error, server,
//! admin, reload) are private to the crate.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod body;
pub mod config;
pub mod credential;
pub mod dev;
pub(crate) mod diagnostic;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod headers;
pub mod identity;
pub mod metrics;
pub mod outbound;
pub(crate) mod proxy;
pub(crate) mod reload;
pub mod request;
pub mod route;
pub mod secret;
pub(crate) mod server;
pub mod store;
pub mod tls;
pub(crate) mod untrusted;

#[cfg(test)]
mod fuzz;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use audit::{AuditConfig, AuditEvent, AuditPath, AuditSink, CredentialRefreshRecord, Outcome};
use config::{AuditTarget, Config};
use credential::{RefreshEvent, RefreshObserver, UpstreamCredential};
use proxy::{Gateway, RequestIds, Upstream};

/// The sockets to serve on (bound by the caller, so tests can bind port 0).
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Why the proxy could not start.
#[derive(Debug)]
pub struct StartError(pub Vec<String>);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for StartError {}

/// Runs the proxy until `shutdown` resolves, then drains and flushes the
/// audit log. `hup` triggers a policy reload (SIGHUP).
pub async fn run(config: Config, listeners: Listeners, hup: Arc<Notify>, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let fail = |m: String| StartError(vec![m]);
    let tls = tls::TlsSource::new(tls::server_config(&config.listen).map_err(|e| fail(e.to_string()))?);
    let route_names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let metrics = Arc::new(metrics::Metrics::new(
        route_names.iter().map(String::as_str),
        config.issuers.iter().map(|i| i.issuer.as_str()),
        config.upstreams.iter().map(|u| u.name.as_str()),
    ));
    let audit_config = AuditConfig {
        path: match &config.audit.target {
            AuditTarget::Stdout => AuditPath::Stdout,
            AuditTarget::File(p) => AuditPath::File(p.clone()),
        },
        max_file_bytes: config.audit.max_file_bytes,
        channel_capacity: audit::DEFAULT_CHANNEL_CAPACITY,
    };
    let (sink, writer) = audit::open(&audit_config).map_err(|e| fail(format!("cannot open the audit log: {e}")))?;
    let writer = tokio::spawn(writer.run());
    let policies = authz::PolicySet::load(&config.policies_dir, &config.route_names())
        .map_err(|ds| StartError(ds.iter().map(ToString::to_string).collect()))?;
    let authn = authn::Authenticator::new(&config.issuers, metrics.clone()).map_err(fail)?;
    let store = match &config.store {
        None => None,
        Some(s) => Some(open_configured_store(s).await.map_err(fail)?),
    };
    let observer: Arc<dyn RefreshObserver> = Arc::new(AuditObserver { sink: sink.clone(), metrics: metrics.clone() });
    let mut upstreams = Vec::new();
    for u in config.upstreams {
        let forwarder =
            forward::Forwarder::new(&u, config.limits.worker_threads()).map_err(|e| fail(format!("upstream {}: {e}", u.name)))?;
        let http = Arc::new(outbound::OutboundHttp::new(u.ca_file.as_deref()).map_err(|e| fail(format!("upstream {}: {e}", u.name)))?);
        let lease = config.store.as_ref().map_or(config::defaults::STORE_LEASE, |s| s.lease);
        let credential = UpstreamCredential::new(u.name.clone(), u.credential, http, store.clone(), observer.clone(), lease);
        upstreams.push(Upstream { name: u.name.as_str().into(), forwarder, credential, min_token_age: u.min_token_age });
    }
    let router = route::Router::new(&config.routes, |name| upstreams.iter().position(|u| &*u.name == name));
    let gw = Arc::new(Gateway {
        router,
        upstreams,
        authn,
        policies: ArcSwap::from_pointee(policies),
        audit: sink.clone(),
        metrics,
        request_ids: RequestIds::new(),
        body_timeout: config.limits.body_timeout,
        store: store.clone(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    gw.authn.start(stop_rx.clone());
    for u in &gw.upstreams {
        u.credential.start();
    }
    let mut stopped = stop_rx.clone();
    let stop_signal = async move {
        let _ = stopped.changed().await;
    };
    tokio::spawn(tls.clone().watch(config.listen.clone(), Duration::from_millis(500), stop_signal));
    tokio::spawn(reload::watch_policies(gw.clone(), config.policies_dir.clone(), route_names, hup, stop_rx.clone()));
    let admin_addr = listeners.admin.as_ref().and_then(|a| a.local_addr().ok()).map_or_else(|| "none".to_owned(), |a| a.to_string());
    if let Some(admin) = listeners.admin {
        let mut stopped = stop_rx.clone();
        tokio::spawn(admin::serve(admin, gw.clone(), config.limits.header_timeout, async move {
            let _ = stopped.changed().await;
        }));
    }
    let proxy_addr = listeners.proxy.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "gatehouse is serving");
    let drain_timeout = config.limits.drain_timeout;
    server::serve(listeners.proxy, tls, gw.clone(), config.limits, shutdown).await;
    let _ = stop_tx.send(true);
    // Bounded: with a broken disk the records cannot be written, and the
    // process must still be able to stop (they are reported, not hidden).
    match tokio::time::timeout(drain_timeout, sink.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => tracing::error!("the audit writer stopped before the final flush"),
        Err(_) => tracing::error!("audit records could not be written before shutdown; the audit log is unwritable"),
    }
    drop(gw);
    drop(sink);
    writer.abort();
    tracing::info!("gatehouse stopped");
    Ok(())
}

/// Opens the store `[store]` configures (connecting to PostgreSQL and
/// migrating its schema, for a `postgres://` store). The error is one line
/// for the operator: the key, or the store, that failed.
pub async fn open_configured_store(settings: &config::StoreSettings) -> Result<Arc<dyn store::CredentialStore>, String> {
    let keys = settings
        .keys
        .iter()
        .map(|k| store::StoreKey::from_base64(k.expose()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("[store] key: {e}"))?;
    let tls = outbound::client_tls(None).map_err(|e| format!("[store] TLS: {e}"))?;
    let postgres = store::PostgresOptions {
        password: settings.password.clone(),
        pool_size: settings.pool_size,
        connect_timeout: settings.connect_timeout,
        tls,
    };
    store::open_store(&settings.location, keys, postgres).await.map_err(|e| format!("[store] {}: {e}", store::redact(&settings.location)))
}

/// Turns credential refresh events into audit records and metrics.
struct AuditObserver {
    sink: AuditSink,
    metrics: Arc<metrics::Metrics>,
}

impl RefreshObserver for AuditObserver {
    fn refreshed(&self, event: RefreshEvent) {
        self.metrics.credential_refresh(&event.upstream, event.ok);
        let record = CredentialRefreshRecord {
            upstream: event.upstream,
            kind: event.kind.to_owned(),
            outcome: if event.ok { Outcome::Ok } else { Outcome::Error },
            expires_at: event.expires_at,
            error: event.error,
        };
        if self.sink.send(AuditEvent::CredentialRefresh(record)).is_err() {
            tracing::error!("audit writer is gone; credential_refresh record lost");
        }
    }
}
