//! Property tests over the parsers a caller or an operator feeds: path
//! normalization, JWT validation, the policy loader, the config parser and
//! the audit line reader. No input may panic or hang, and every result is
//! deterministic. Each target runs `GATEHOUSE_FUZZ_CASES` cases (default
//! 1,000, CI's short pass); `scripts/fuzz` runs 1,000,000 per target.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

use crate::authn::Authenticator;
use crate::authz::PolicySet;
use crate::config::Config;
use crate::diagnostic::SourceFile;
use crate::request::{PathAllowances, check_ambiguity, normalize_path};

fn runner() -> TestRunner {
    let cases = std::env::var("GATEHOUSE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    TestRunner::new(RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() })
}

/// Path-like text: mostly the characters that matter to normalization.
fn path_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%".to_owned()),
        Just(";".to_owned()),
        Just("\\\\".to_owned()),
        "%[0-9a-fA-F]{2}",
        "[a-zA-Z0-9~_.-]{1,4}",
        "[\u{0}-\u{7f}]",
        "[\u{80}-\u{10ffff}]",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| format!("/{}", p.concat()))
}

#[test]
fn path_normalization_is_idempotent_and_never_yields_what_it_refuses() {
    runner()
        .run(&path_text(), |raw| {
            let once = normalize_path(&raw);
            prop_assert_eq!(&once, &normalize_path(&raw), "deterministic");
            if let Ok(path) = once {
                prop_assert_eq!(normalize_path(&path), Ok(path.clone()), "idempotent");
                prop_assert!(path.starts_with('/'));
                prop_assert!(path.is_ascii(), "bytes >= 0x80 are percent-encoded: {}", path);
                prop_assert!(!path.contains("//") && !path.contains('\\') && !path.chars().any(|c| c.is_ascii_control()));
                let upper = path.to_ascii_uppercase();
                prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"), "{}", path);
                prop_assert!(path.split('/').all(|s| s != "." && s != ".."), "{}", path);
                if check_ambiguity(&path, PathAllowances::default()).is_ok() {
                    prop_assert!(!path.contains(';') && !path.contains("%25"));
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// JSON values of the shapes a JWT header or claims set may take.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just("RS256".to_owned()), Just("none".to_owned()), Just("https://idp.fuzz".to_owned()), ".{0,12}"]
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("alg".to_owned()),
                    Just("kid".to_owned()),
                    Just("typ".to_owned()),
                    Just("crit".to_owned()),
                    Just("iss".to_owned()),
                    Just("exp".to_owned()),
                    Just("aud".to_owned()),
                    Just("scope".to_owned()),
                    "[a-z]{1,5}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn jwt_validation_never_panics_and_refuses_every_forged_token_alike() {
    use base64::Engine;
    let config = Config::parse(
        Path::new("/fuzz/gatehouse.toml"),
        &SourceFile::new(
            "gatehouse.toml",
            "[listen]\naddr = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"\n\
             [[issuer]]\nissuer = \"https://idp.fuzz\"\naudiences = [\"gatehouse\"]\njwks_uri = \"http://127.0.0.1:9/jwks\"\n",
        ),
    );
    let issuers = config.unwrap_or_else(|problems| panic!("{problems:?}")).issuers;
    let metrics = Arc::new(crate::metrics::Metrics::new(std::iter::empty(), issuers.iter().map(|i| i.issuer.as_str()), std::iter::empty()));
    let authn = Authenticator::new(&issuers, metrics).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let token =
        (json(), json(), proptest::collection::vec(any::<u8>(), 0..80), 0usize..4).prop_map(move |(h, c, sig, shape)| match shape {
            0 => format!("{}.{}.{}", b64(h.to_string().as_bytes()), b64(c.to_string().as_bytes()), b64(&sig)),
            1 => format!("{}.{}", b64(h.to_string().as_bytes()), b64(&sig)),
            2 => String::from_utf8_lossy(&sig).into_owned(),
            _ => format!("{}.{}.{}.{}.{}", b64(h.to_string().as_bytes()), b64(&sig), b64(&sig), b64(&sig), b64(&sig)),
        });
    runner()
        .run(&token, |token| {
            let mut headers = http::HeaderMap::new();
            let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {token}")) else { return Ok(()) };
            headers.insert(http::header::AUTHORIZATION, value);
            let first = rt.block_on(authn.authenticate_uncached(&headers)).map(|_| ());
            let second = rt.block_on(authn.authenticate_uncached(&headers)).map(|_| ());
            prop_assert!(first.is_err(), "a forged token was accepted");
            prop_assert_eq!(&first, &second, "deterministic");
            if let Err(e) = first {
                prop_assert!(!e.to_string().chars().any(char::is_control), "caller text escaped: {}", e);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Mutations of a valid file: characters replaced, inserted and cut.
fn mutated(base: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((0..base.len(), prop_oneof![Just(String::new()), ".{0,3}", "[\\[\\]=\"\n#.]{1,2}"]), 0..6).prop_map(
        move |edits| {
            let mut text = base.to_owned();
            for (at, insert) in edits {
                let at = at.min(text.len());
                let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
                let end = (at + 1..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                text.replace_range(at..end, &insert);
            }
            text
        },
    )
}

const POLICY: &str = "[[rule]]\nid = \"crm-read\"\nroute = \"crm\"\nmethods = [\"GET\"]\npaths = [\"/crm/v1/**\", \"/crm/*/x\"]\n\
                      effect = \"allow\"\nscopes_all = [\"crm.read\"]\n[rule.claims]\ngroups = [\"eng\"]\n\n\
                      [[test]]\nname = \"t\"\nmethod = \"GET\"\npath = \"/crm/v1/a\"\nclaims = { iss = \"i\", sub = \"s\", scope = \"crm.read\" }\nexpect = \"deny\"\n";

#[test]
fn the_policy_loader_never_panics_and_is_deterministic() {
    runner()
        .run(&mutated(POLICY), |text| {
            let load =
                || PolicySet::from_sources(&[SourceFile::new("p.toml", text.clone())], &["crm"]).map(|_| ()).map_err(|d| format!("{d:?}"));
            prop_assert_eq!(load(), load());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

const CONFIG: &str = "[listen]\naddr = \"127.0.0.1:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[limits]\nbody_timeout_ms = 5\n\
                      [[issuer]]\nissuer = \"https://idp.example\"\naudiences = [\"g\"]\nalgorithms = [\"ES256\"]\n\
                      [[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:9\"\n[upstream.credential]\nkind = \"client_credentials\"\n\
                      token_url = \"http://127.0.0.1:9/t\"\nclient_id = \"c\"\nclient_secret_env = \"S\"\n\
                      [[route]]\nname = \"r\"\npath_prefix = \"/r/\"\nupstream = \"u\"\nallow_path_params = true\n";

#[test]
fn the_config_parser_never_panics_and_is_deterministic() {
    runner()
        .run(&mutated(CONFIG), |text| {
            let src = SourceFile::new("gatehouse.toml", text);
            let parse = || Config::parse(Path::new("/nonexistent/gatehouse.toml"), &src).map(|_| ()).map_err(|d| format!("{d:?}"));
            prop_assert_eq!(parse(), parse());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

const AUDIT_LINE: &str = r#"{"ts":"2026-12-04T00:00:00.000Z","event":"request","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","request_id":"r","hash":"ab"}"#;

#[test]
fn the_audit_line_reader_never_panics_and_is_deterministic() {
    let line = prop_oneof![
        mutated(AUDIT_LINE),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
    ];
    runner()
        .run(&line, |line| {
            let read = || crate::audit::parse_line(line.as_bytes());
            prop_assert_eq!(read(), read());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
