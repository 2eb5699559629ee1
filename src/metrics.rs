//! Prometheus metrics (docs/wire.md §14). Every label set is known when the config is
//! loaded (routes, issuers, upstreams), so counters live in fixed tables of
//! atomics: recording never takes a lock.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Status codes 100..=599 each get a slot.
const STATUS_SLOTS: usize = 500;
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

struct RouteCounters {
    /// [decision][status - 100]; decision 0 = allow, 1 = deny.
    counts: Box<[[AtomicU64; STATUS_SLOTS]; 2]>,
}

/// All counters of the process.
pub struct Metrics {
    /// Route name → counters; "" is "no route".
    routes: HashMap<String, RouteCounters>,
    buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_us: AtomicU64,
    jwks: HashMap<String, [AtomicU64; 2]>,
    credentials: HashMap<String, [AtomicU64; 2]>,
    pub connections_open: AtomicI64,
    /// Open connections holding no HTTP state: waiting for their first
    /// request, or HTTP/1.1 ones idle past `idle_release_ms`.
    pub connections_released: AtomicI64,
    pub requests_in_flight: AtomicI64,
}

impl Metrics {
    pub fn new<'a>(
        routes: impl IntoIterator<Item = &'a str>,
        issuers: impl IntoIterator<Item = &'a str>,
        upstreams: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let route_counters = || RouteCounters { counts: Box::new(std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))) };
        let mut routes: HashMap<String, RouteCounters> = routes.into_iter().map(|r| (r.to_owned(), route_counters())).collect();
        routes.insert(String::new(), route_counters());
        Self {
            routes,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_count: AtomicU64::new(0),
            duration_sum_us: AtomicU64::new(0),
            jwks: issuers.into_iter().map(|i| (i.to_owned(), Default::default())).collect(),
            credentials: upstreams.into_iter().map(|u| (u.to_owned(), Default::default())).collect(),
            connections_open: AtomicI64::new(0),
            connections_released: AtomicI64::new(0),
            requests_in_flight: AtomicI64::new(0),
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: Option<&str>, allowed: bool, status: u16, duration: Duration) {
        let counters = self.routes.get(route.unwrap_or("")).or_else(|| self.routes.get(""));
        if let Some(c) = counters {
            let slot = usize::from(status.clamp(100, 599) - 100);
            c.counts[usize::from(!allowed)][slot].fetch_add(1, Relaxed);
        }
        let secs = duration.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Relaxed);
        self.duration_sum_us.fetch_add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts one JWKS fetch; `outcome` is "ok" or "error".
    pub fn jwks_refresh(&self, issuer: &str, outcome: &str) {
        if let Some(c) = self.jwks.get(issuer) {
            c[usize::from(outcome != "ok")].fetch_add(1, Relaxed);
        }
    }

    /// Counts one upstream token request.
    pub fn credential_refresh(&self, upstream: &str, ok: bool) {
        if let Some(c) = self.credentials.get(upstream) {
            c[usize::from(!ok)].fetch_add(1, Relaxed);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP gatehouse_requests_total Requests answered, by route, decision and status.\n");
        out.push_str("# TYPE gatehouse_requests_total counter\n");
        let mut names: Vec<&String> = self.routes.keys().collect();
        names.sort();
        for name in names {
            let Some(c) = self.routes.get(name) else { continue };
            for (d, decision) in ["allow", "deny"].iter().enumerate() {
                for (slot, n) in c.counts[d].iter().enumerate() {
                    let n = n.load(Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "gatehouse_requests_total{{route=\"{}\",decision=\"{decision}\",status=\"{}\"}} {n}",
                            escape(name),
                            slot + 100
                        );
                    }
                }
            }
        }
        out.push_str("# HELP gatehouse_request_duration_seconds Time from request head to the end of the answer.\n");
        out.push_str("# TYPE gatehouse_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "gatehouse_request_duration_seconds_bucket{{le=\"{b}\"}} {}", self.buckets[i].load(Relaxed));
        }
        let count = self.duration_count.load(Relaxed);
        let _ = writeln!(out, "gatehouse_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "gatehouse_request_duration_seconds_sum {}", self.duration_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "gatehouse_request_duration_seconds_count {count}");
        labelled_pairs(&mut out, "gatehouse_jwks_refresh_total", "JWKS fetches by issuer and outcome.", "issuer", &self.jwks);
        labelled_pairs(
            &mut out,
            "gatehouse_credential_refresh_total",
            "Upstream token requests by upstream and outcome.",
            "upstream",
            &self.credentials,
        );
        let _ = writeln!(out, "# HELP gatehouse_connections_open Caller connections currently open.");
        let _ = writeln!(out, "# TYPE gatehouse_connections_open gauge");
        let _ = writeln!(out, "gatehouse_connections_open {}", self.connections_open.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP gatehouse_connections_released Caller connections open but holding no HTTP state (before their first request, or HTTP/1.1 idle past idle_release_ms)."
        );
        let _ = writeln!(out, "# TYPE gatehouse_connections_released gauge");
        let _ = writeln!(out, "gatehouse_connections_released {}", self.connections_released.load(Relaxed));
        let _ = writeln!(out, "# HELP gatehouse_requests_in_flight Requests currently being handled.");
        let _ = writeln!(out, "# TYPE gatehouse_requests_in_flight gauge");
        let _ = writeln!(out, "gatehouse_requests_in_flight {}", self.requests_in_flight.load(Relaxed));
        out
    }
}

fn labelled_pairs(out: &mut String, name: &str, help: &str, label: &str, map: &HashMap<String, [AtomicU64; 2]>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for k in keys {
        let Some(c) = map.get(k) else { continue };
        for (i, outcome) in ["ok", "error"].iter().enumerate() {
            let _ = writeln!(out, "{name}{{{label}=\"{}\",outcome=\"{outcome}\"}} {}", escape(k), c[i].load(Relaxed));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new(["crm"], ["https://idp"], ["crm"]);
        m.request(Some("crm"), true, 200, Duration::from_millis(3));
        m.request(None, false, 404, Duration::from_millis(1));
        m.jwks_refresh("https://idp", "ok");
        m.credential_refresh("crm", false);
        let text = m.render();
        assert!(text.contains("gatehouse_requests_total{route=\"crm\",decision=\"allow\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("gatehouse_requests_total{route=\"\",decision=\"deny\",status=\"404\"} 1"), "{text}");
        assert!(text.contains("gatehouse_jwks_refresh_total{issuer=\"https://idp\",outcome=\"ok\"} 1"));
        assert!(text.contains("gatehouse_credential_refresh_total{upstream=\"crm\",outcome=\"error\"} 1"));
        assert!(text.contains("gatehouse_request_duration_seconds_count 2"));
    }
}
