//! The audit trail as an auditor relies on it: exactly one record per
//! request whatever stopped it, a chain that `audit verify` checks across
//! rotation, and tampering named at its first line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::process::Command;

use common::client::{self, get, raw};
use common::upstream::TestUpstream;
use common::{Proxy, TestEnv};
use http_body_util::BodyExt;

const POLICY: &str = r#"
[[rule]]
id = "read"
route = "*"
methods = ["GET"]
scopes_all = ["test"]

[[rule]]
id = "no-admin"
route = "svc"
effect = "deny"
paths = ["/svc/admin/**"]
"#;

fn config(up: &str, dead: &str) -> String {
    format!(
        "[audit]\n\n[[upstream]]\nname = \"svc\"\nurl = \"{up}\"\nresponse_timeout_ms = 300\n\n[[upstream]]\nname = \"dead\"\nurl = \"{dead}\"\n\n\
         [[route]]\nname = \"svc\"\npath_prefix = \"/svc/\"\nupstream = \"svc\"\n\n[[route]]\nname = \"dead\"\npath_prefix = \"/dead/\"\nupstream = \"dead\"\n"
    )
    .replace("[audit]\n\n", "")
}

/// The test config with its `[audit]` path line replaced by `audit`.
fn config_with_audit(env: &TestEnv, up: &TestUpstream, audit: &str) -> std::path::PathBuf {
    let cfg = env.write_config(&config(&up.http_url(), "http://127.0.0.1:9"));
    let text = std::fs::read_to_string(&cfg).unwrap().replace("path = \"audit/audit.jsonl\"", audit);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[tokio::test]
async fn every_outcome_class_leaves_exactly_one_record() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    env.write_policy("svc.toml", POLICY);
    let proxy = Proxy::start(&env.write_config(&config(&up.http_url(), &format!("http://{dead}")))).await;
    let c = client::h1(&env.certs.ca);
    let good = env.token("svc-a", "test");
    let weak = env.token("svc-b", "other");
    let mut expect: Vec<(String, u16, Option<&str>, &str)> = Vec::new();
    let mut check = |r: &common::client::Resp, reason: Option<&'static str>, decision: &'static str| {
        expect.push((r.header("x-request-id").to_owned(), r.status.as_u16(), reason, decision));
    };
    check(&get(&c, proxy.addr, "/svc/ok", Some(&good)).await, None, "allow");
    check(&get(&c, proxy.addr, "/nowhere", Some(&good)).await, Some("no_route"), "deny");
    check(&get(&c, proxy.addr, "/svc/x", None).await, Some("missing_token"), "deny");
    check(&get(&c, proxy.addr, "/svc/x", Some("not.a.token")).await, Some("malformed_token"), "deny");
    check(&get(&c, proxy.addr, "/svc/x", Some(&weak)).await, Some("insufficient_scope"), "deny");
    check(&get(&c, proxy.addr, "/svc/admin/x", Some(&good)).await, Some("policy_deny"), "deny");
    check(&get(&c, proxy.addr, "/dead/x", Some(&good)).await, Some("upstream_error"), "allow");
    check(&get(&c, proxy.addr, "/svc/slow?ms=2000", Some(&good)).await, Some("upstream_timeout"), "allow");
    // Bad path, sent raw.
    let answer = raw(
        proxy.addr,
        &env.certs.ca,
        format!("GET /svc/a%2Fb HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let rid = answer.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("x-request-id: ").map(str::to_owned)).unwrap();
    expect.push((rid, 400, Some("bad_path"), "deny"));
    // A client that goes away mid-stream.
    let req = http::Request::get(format!("https://localhost:{}/svc/download?bytes=104857600", proxy.addr.port()))
        .header("authorization", format!("Bearer {good}"))
        .body(gatehouse::body::empty())
        .unwrap();
    let resp = client::h1(&env.certs.ca).request(req).await.unwrap();
    let mid_rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let mut body = resp.into_body();
    let _first = body.frame().await.unwrap().unwrap();
    drop(body);
    proxy.stop().await;

    let records = env.audit_records();
    let requests: Vec<&serde_json::Value> = records.iter().filter(|r| r["event"] == "request").collect();
    assert_eq!(requests.len(), expect.len() + 1, "one record per request, no more, no less");
    for (rid, status, reason, decision) in &expect {
        let mine: Vec<_> = requests.iter().filter(|r| r["request_id"] == rid.as_str()).collect();
        assert_eq!(mine.len(), 1, "{rid}: {mine:?}");
        let r = mine[0];
        assert_eq!(r["status"], *status, "{r}");
        assert_eq!(r["reason"].as_str(), *reason, "{r}");
        assert_eq!(r["decision"], *decision, "{r}");
        for key in ["ts", "client_addr", "method", "path", "bytes_in", "bytes_out", "duration_ms", "prev_hash", "hash"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }
    let mid = requests.iter().find(|r| r["request_id"] == mid_rid.as_str()).unwrap();
    assert_eq!(mid["reason"], "client_closed", "{mid}");
    assert!(mid["bytes_out"].as_u64().unwrap() < 104_857_600, "{mid}");
    let ok = requests.iter().find(|r| r["reason"].is_null() && r["status"] == 200).unwrap();
    assert_eq!(ok["identity"]["sub"], "svc-a");
    assert_eq!(ok["identity"]["client_id"], "test-client");
    assert_eq!(ok["identity"]["scopes"], serde_json::json!(["test"]));
    assert_eq!(ok["rule"], "read");
    let denied = requests.iter().find(|r| r["reason"] == "insufficient_scope").unwrap();
    assert_eq!(denied["rule"], "default-deny");
}

#[tokio::test]
async fn audit_verify_passes_a_rotated_set_and_names_the_first_tampered_line() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("svc.toml", POLICY);
    // A tiny rotation threshold: every few records start a new file.
    let cfg = config_with_audit(&env, &up, "path = \"audit/audit.jsonl\"\nmax_file_bytes = 2000");
    let proxy = Proxy::start(&cfg).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    for n in 0..30 {
        get(&c, proxy.addr, &format!("/svc/r{n}?secret=s3cr3t-{n}"), Some(&token)).await;
    }
    proxy.stop().await;
    let dir = env.path("audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // Rotated files sort by their UTC suffix; the live file is last.
    let live = dir.join("audit.jsonl");
    files.retain(|f| f != &live);
    files.push(live);
    assert!(files.len() >= 3, "rotation did not happen: {files:?}");
    let all_text: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(!all_text.contains("s3cr3t"), "a query string value reached the audit log");
    let verify = |files: &[std::path::PathBuf]| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse")).args(["audit", "verify"]).args(files).output().unwrap()
    };
    let out = verify(&files);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // One byte changed in the second file's second line.
    let target = &files[1];
    let original = std::fs::read(target).unwrap();
    let second_line_start = original.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut tampered = original.clone();
    let at = second_line_start + 40;
    tampered[at] = if tampered[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(target, &tampered).unwrap();
    let out = verify(&files);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.starts_with(&format!("{}:2: ", target.display())), "{stdout}");

    // A deleted line: the break shows at the line after the gap.
    let text = String::from_utf8(original.clone()).unwrap();
    let without: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l).collect();
    std::fs::write(target, format!("{}\n", without.join("\n"))).unwrap();
    let stdout = String::from_utf8_lossy(&verify(&files).stdout).into_owned();
    assert!(stdout.starts_with(&format!("{}:2: ", target.display())), "{stdout}");

    // Reordered lines.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(0, 1);
    std::fs::write(target, format!("{}\n", lines.join("\n"))).unwrap();
    let stdout = String::from_utf8_lossy(&verify(&files).stdout).into_owned();
    assert!(stdout.starts_with(&format!("{}:1: ", target.display())), "{stdout}");

    // Restored, but the files given out of order.
    std::fs::write(target, &original).unwrap();
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    assert_eq!(verify(&swapped).status.code(), Some(1));
    assert!(verify(&files).status.success());
}

#[tokio::test]
async fn an_unwritable_audit_log_turns_unready_and_refuses_unaudited_traffic() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("svc.toml", POLICY);
    // /dev/full: every write fails with ENOSPC, like a full disk.
    let cfg = config_with_audit(&env, &up, "path = \"/dev/full\"");
    let proxy = Proxy::start(&cfg).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut refused = None;
    while refused.is_none() {
        let r = get(&c, proxy.addr, "/svc/x", Some(&token)).await;
        if r.status == 503 {
            refused = Some(r);
        }
        assert!(std::time::Instant::now() < deadline, "requests were still served with a broken audit log");
    }
    let r = refused.unwrap();
    assert_eq!(r.json()["error"], "audit_unavailable");
    let (status, body) = client::admin_get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("audit"), "{body}");
}

#[tokio::test]
async fn a_deleted_audit_log_is_started_anew_and_rotation_goes_on() {
    let env = TestEnv::new().await;
    let up = TestUpstream::http().await;
    env.write_policy("svc.toml", POLICY);
    // About two records a file, so that rotations happen after the deletion.
    let cfg = config_with_audit(&env, &up, "path = \"audit/audit.jsonl\"\nmax_file_bytes = 1500");
    let proxy = Proxy::start(&cfg).await;
    let c = client::h1(&env.certs.ca);
    let token = env.token("svc-a", "test");
    let first = get(&c, proxy.addr, "/svc/before", Some(&token)).await;
    assert_eq!(first.status, 200);
    let id_of = |r: &client::Resp| r.headers["x-request-id"].to_str().unwrap().to_owned();
    let logged = |id: &str| {
        let dir = env.audit_path().parent().unwrap().to_owned();
        std::fs::read_dir(dir).unwrap().any(|f| std::fs::read_to_string(f.unwrap().path()).unwrap_or_default().contains(id))
    };
    let wait_logged = |id: String| async move {
        common::eventually(&format!("request {id} in an audit file"), std::time::Duration::from_secs(5), || {
            std::future::ready(logged(&id).then_some(()))
        })
        .await;
    };
    wait_logged(id_of(&first)).await;
    std::fs::remove_file(env.audit_path()).unwrap();
    // Every later request lands in a file an auditor can find, across rotations.
    for i in 0..8 {
        let r = get(&c, proxy.addr, &format!("/svc/after-{i}"), Some(&token)).await;
        assert_eq!(r.status, 200);
        wait_logged(id_of(&r)).await;
    }
    let rotated = std::fs::read_dir(env.audit_path().parent().unwrap()).unwrap().count();
    assert!(rotated >= 3, "expected rotations after the deletion, found {rotated} files");
    let (status, _) = client::admin_get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(status, 200, "the audit log should be healthy again");
    proxy.stop().await;
}
