//! Policy hot reload (docs/policy.md): the policy folder is watched (polled, with
//! a short debounce) and reloaded on SIGHUP. A new set is built and
//! validated off the request path and swapped whole; a broken set is
//! refused, the old one stays, and a `policy_reload` record says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::audit::{AuditEvent, Outcome, ReloadRecord};
use crate::authz::PolicySet;
use crate::proxy::Gateway;

/// How often the folder is looked at; changes apply well within the promised 2 s.
const POLL: Duration = Duration::from_millis(250);

/// Longest a change waits for the folder to settle before it is applied.
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// Watches `dir` until `shutdown` changes; `hup` forces a reload. A change
/// is applied once the folder looked the same for one poll (an editor may
/// write a file in several steps), or after [`MAX_SETTLE`] at the latest so
/// that constant churn cannot hold reloads back.
pub async fn watch_policies(gw: Arc<Gateway>, dir: PathBuf, routes: Vec<String>, hup: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let mut applied = fingerprint(&dir);
    let mut last_poll = applied;
    let mut pending_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        let forced = tokio::select! {
            _ = shutdown.changed() => return,
            _ = hup.notified() => true,
            _ = tick.tick() => false,
        };
        let now = fingerprint(&dir);
        let settled = now == last_poll;
        last_poll = now;
        if !forced && now == applied {
            pending_since = None;
            continue;
        }
        let since = *pending_since.get_or_insert_with(Instant::now);
        if forced || settled || since.elapsed() >= MAX_SETTLE {
            applied = now;
            pending_since = None;
            reload(&gw, &dir, &routes).await;
        }
    }
}

/// Loads the folder and swaps it in, or keeps the old set; audits either way.
pub async fn reload(gw: &Gateway, dir: &Path, routes: &[String]) {
    let names: Vec<&str> = routes.iter().map(String::as_str).collect();
    let loaded = tokio::task::spawn_blocking({
        let dir = dir.to_path_buf();
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        move || {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            PolicySet::load(&dir, &refs)
        }
    })
    .await;
    let record = match loaded {
        Ok(Ok(set)) => {
            let detail = format!("{} rules, fingerprint {:016x}", set.rule_count(), set.fingerprint());
            tracing::info!(dir = %dir.display(), rules = set.rule_count(), "policies reloaded");
            gw.policies.store(Arc::new(set));
            ReloadRecord { outcome: Outcome::Ok, error: None, detail: Some(detail) }
        }
        Ok(Err(problems)) => {
            let error = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            tracing::error!(dir = %dir.display(), %error, "policy reload refused; keeping the previous policies");
            ReloadRecord { outcome: Outcome::Error, error: Some(error), detail: None }
        }
        Err(e) => ReloadRecord { outcome: Outcome::Error, error: Some(format!("policy loader failed: {e}")), detail: None },
    };
    if gw.audit.send(AuditEvent::PolicyReload(record)).is_err() {
        tracing::error!("audit writer is gone; policy_reload record lost");
    }
}

/// Names, sizes and contents hash of the `*.toml` files in `dir`.
fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut files: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    files.sort();
    for f in files {
        f.hash(&mut h);
        if let Ok(bytes) = std::fs::read(&f) {
            bytes.hash(&mut h);
        }
    }
    h.finish()
}
