//! Policy files in a running proxy: hot reload under concurrent load, broken
//! sets refused (old set kept, audited), and the security team's tools.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::client::{self, get};
use common::upstream::TestUpstream;
use common::{Proxy, TestEnv};

const ROUTES: &str =
    "[[upstream]]\nname = \"svc\"\nurl = \"URL\"\n\n[[route]]\nname = \"svc\"\npath_prefix = \"/svc/\"\nupstream = \"svc\"\n";

/// Version `n` allows `/svc/even/**` when n is even and `/svc/odd/**` when n
/// is odd, denies the other, and names every rule after its version.
fn version(n: usize) -> String {
    let (open, shut) = if n.is_multiple_of(2) { ("even", "odd") } else { ("odd", "even") };
    format!(
        "[[rule]]\nid = \"v{n}-allow-{open}\"\nroute = \"svc\"\npaths = [\"/svc/{open}/**\"]\nscopes_all = [\"test\"]\n\n\
         [[rule]]\nid = \"v{n}-deny-{shut}\"\nroute = \"svc\"\neffect = \"deny\"\npaths = [\"/svc/{shut}/**\"]\n"
    )
}

/// Replaces the policy file atomically, as a deploy would.
fn deploy(env: &TestEnv, text: &str) {
    let dir = env.path("policies");
    let tmp = dir.join(".next.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("svc.toml")).unwrap();
}

#[tokio::test]
async fn a_hundred_rewrites_under_concurrent_load_never_fail_or_mix_versions() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    deploy(&env, &version(0));
    let proxy = Proxy::start(&env.write_config(&ROUTES.replace("URL", &up.http_url()))).await;
    let written = Arc::new(AtomicUsize::new(0));
    let token = env.token("svc-a", "test");
    let mut clients = Vec::new();
    for c in 0..4 {
        let (client, addr, token, written) = (client::h1(&env.certs.ca), proxy.addr, token.clone(), written.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            // Keep sending until every version is written, and then some.
            let mut n = 0;
            while n < 150 || written.load(Ordering::SeqCst) < 100 {
                n += 1;
                let path = if (n + c) % 2 == 0 { "/svc/even/x" } else { "/svc/odd/x" };
                let r = get(&client, addr, path, Some(&token)).await;
                let latest = written.load(Ordering::SeqCst);
                seen.push((path, r.status.as_u16(), r.header("x-request-id").to_owned(), latest));
            }
            seen
        }));
    }
    for n in 1..=100 {
        deploy(&env, &version(n));
        written.store(n, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    let mut results = Vec::new();
    for c in clients {
        results.extend(c.await.unwrap());
    }
    proxy.stop().await;
    let records = env.audit_records();
    let by_id: std::collections::HashMap<&str, &serde_json::Value> =
        records.iter().filter_map(|r| Some((r["request_id"].as_str()?, r))).collect();
    let mut versions_seen = std::collections::BTreeSet::new();
    for (path, status, rid, latest_written) in &results {
        assert!(*status == 200 || *status == 403, "{path}: failed request with status {status}");
        let rec = by_id.get(rid.as_str()).expect("audit record");
        let rule = rec["rule"].as_str().expect("rule");
        let (v, rest) = rule.trim_start_matches('v').split_once('-').expect("versioned rule id");
        let v: usize = v.parse().unwrap();
        assert!(v <= *latest_written, "decided by v{v} before it was written (latest {latest_written})");
        // The decision is the one version v makes for this path: no mixed set.
        let open = if v.is_multiple_of(2) { "even" } else { "odd" };
        let allowed = path.contains(open);
        assert_eq!(*status == 200, allowed, "{path} under v{v} got {status} by {rule}");
        assert_eq!(rest, if allowed { format!("allow-{open}") } else { format!("deny-{}", if open == "even" { "odd" } else { "even" }) });
        versions_seen.insert(v);
    }
    assert!(results.len() >= 600);
    assert!(versions_seen.len() > 3, "reloads were not applied during the load: {versions_seen:?}");
    let reloads = records.iter().filter(|r| r["event"] == "policy_reload" && r["outcome"] == "ok").count();
    assert!(reloads >= 3, "only {reloads} reloads");
    assert!(records.iter().all(|r| r["event"] != "policy_reload" || r["outcome"] == "ok"), "an atomic deploy was refused");
}

#[tokio::test]
async fn broken_policy_files_are_refused_and_the_old_set_keeps_deciding() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    deploy(&env, &version(0));
    let config = env.write_config(&ROUTES.replace("URL", &up.http_url()));
    let proxy = Proxy::start(&config).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let broken = [
        ("syntax error", "[[rule]]\nid = \"x\nroute = \"svc\"\n", "svc.toml:2:"),
        ("unknown route", "[[rule]]\nid = \"x\"\nroute = \"nosuch\"\n", "svc.toml:3:9: unknown route \"nosuch\""),
    ];
    for (what, text, want) in broken {
        deploy(&env, text);
        // `check` refuses it with a position.
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse")).arg("--config").arg(&config).arg("check").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{what}: {stdout}");
        assert!(stdout.contains(want), "{what}: wanted {want} in {stdout}");
        // The running proxy logs and audits the refusal (SIGHUP path), and keeps deciding by v0.
        proxy.hup.notify_one();
        common::eventually(&format!("{what}: a policy_reload error record"), std::time::Duration::from_secs(5), || {
            let errors = env.audit_records().iter().filter(|r| r["event"] == "policy_reload" && r["outcome"] == "error").count();
            std::future::ready((errors >= 1 && (what == "syntax error" || errors >= 2)).then_some(()))
        })
        .await;
        assert_eq!(get(&c, proxy.addr, "/svc/even/x", Some(&token)).await.status, 200, "{what}: old set no longer allows");
        assert_eq!(get(&c, proxy.addr, "/svc/odd/x", Some(&token)).await.status, 403, "{what}: old set no longer denies");
        assert_eq!(client::admin_get(proxy.admin, "/readyz").await.unwrap().0, 200, "{what}: readyz");
    }
    proxy.stop().await;
    let errors: Vec<String> = env
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "policy_reload" && r["outcome"] == "error")
        .map(|r| r["error"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(errors.iter().any(|e| e.contains("unknown route \"nosuch\"")), "{errors:?}");
}

#[test]
fn policy_test_runs_every_case_and_fails_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        "[listen]\naddr = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[[upstream]]\nname = \"svc\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\nname = \"svc\"\npath_prefix = \"/svc/\"\nupstream = \"svc\"\n",
    )
    .unwrap();
    let mut text = version(0);
    text.push_str("\n[[test]]\nname = \"even is open\"\nmethod = \"GET\"\npath = \"/svc/even/a\"\nclaims = { iss = \"i\", sub = \"s\", scope = \"test\" }\nexpect = \"allow\"\nrule = \"v0-allow-even\"\n");
    std::fs::write(dir.path().join("policies/svc.toml"), &text).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("--config")
            .arg(dir.path().join("gatehouse.toml"))
            .args(["policy", "test"])
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed, 0 failed"));
    text.push_str("\n[[test]]\nname = \"odd is open\"\nmethod = \"GET\"\npath = \"/svc/odd/a\"\nclaims = { iss = \"i\", sub = \"s\", scope = \"test\" }\nexpect = \"allow\"\n");
    std::fs::write(dir.path().join("policies/svc.toml"), &text).unwrap();
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("test \"odd is open\""), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}
