//! `gatehouse dev` from an empty folder: the printed curl line goes through
//! TLS, authentication, a policy, credential injection and the echo upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn dev_starts_from_an_empty_folder_and_its_curl_line_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["dev", "--port", "0", "--admin-port", "0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut banner = Vec::new();
    let curl = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("dev printed no curl line");
        banner.push(line.clone());
        if line.trim_start().starts_with("curl ") {
            break line.trim().to_owned();
        }
    };
    let text = banner.join("\n");
    assert!(text.contains("NOT FOR PRODUCTION"), "{text}");
    let admin = text.split("http://127.0.0.1:").nth(1).and_then(|s| s.split('/').next()).unwrap();
    common::wait_ready(format!("127.0.0.1:{admin}").parse().unwrap()).await;
    for f in ["certs/dev-ca.pem", "certs/server.pem", "certs/server-key.pem", "policies/echo.toml"] {
        assert!(dir.path().join(f).exists(), "{f} was not created");
    }
    // Run the printed line as a newcomer would.
    let out = Command::new("sh").arg("-c").arg(&curl).current_dir(dir.path()).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(echo["upstream"], "gatehouse dev echo");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["x-gatehouse-sub"], "dev-connector");
    let injected = echo["headers"]["authorization"].as_str().unwrap();
    assert!(injected.starts_with("Bearer dev-up") && injected.ends_with('…'), "injected credential shown shortened: {injected}");
    // The same request without the token is refused.
    let url = curl.split_whitespace().last().unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", "certs/dev-ca.pem", url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    assert!(dir.path().join("audit/audit.jsonl").exists());
    // SIGTERM drains and exits 0, like `serve`.
    let term = Command::new("kill").arg("-TERM").arg(guard.0.id().to_string()).status().unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || guard.0.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0), "dev exits 0 after SIGTERM: {status}");
}
