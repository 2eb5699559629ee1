//! Attacks on caller authentication, grouped by threat. Every case checks
//! the status, the `WWW-Authenticate` error, the audit reason, and that a
//! refused token never reached the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::client::{self, TestClient};
use common::idp::{Key, TestIdp, now};
use common::upstream::TestUpstream;
use common::{ALLOW_ALL, Proxy, TestEnv};
use serde_json::json;

/// How a case presents its credentials.
enum Auth {
    Bearer(String),
    Raw(Vec<String>),
    None,
    Query(String),
}

struct Case {
    name: &'static str,
    auth: Auth,
    status: u16,
    /// `error=` in WWW-Authenticate; "" for the bare challenge; None when no header is expected.
    www_error: Option<&'static str>,
    /// Audit reason; None for an accepted request.
    reason: Option<&'static str>,
}

fn refused(name: &'static str, token: String, reason: &'static str) -> Case {
    Case { name, auth: Auth::Bearer(token), status: 401, www_error: Some("invalid_token"), reason: Some(reason) }
}

fn accepted(name: &'static str, token: String) -> Case {
    Case { name, auth: Auth::Bearer(token), status: 200, www_error: None, reason: None }
}

struct Setup {
    env: TestEnv,
    idp: Arc<TestIdp>,
    up: TestUpstream,
    proxy: Proxy,
    client: TestClient,
}

async fn setup(issuer_extra: &str) -> Setup {
    let env = TestEnv::new().await;
    let idp = TestIdp::start().await;
    let up = TestUpstream::http().await;
    env.write_policy("all.toml", ALLOW_ALL);
    let issuer = format!("[[issuer]]\nissuer = \"{}\"\naudiences = [\"gatehouse\", \"other\"]\n{issuer_extra}\n", idp.issuer);
    let routes = format!(
        "[[upstream]]\nname = \"svc\"\nurl = \"{}\"\n\n[[route]]\nname = \"svc\"\npath_prefix = \"/svc/\"\nupstream = \"svc\"\n",
        up.http_url()
    );
    let proxy = Proxy::start(&env.write_config_with(&issuer, &routes)).await;
    let client = client::h1(&env.certs.ca);
    Setup { env, idp, up, proxy, client }
}

async fn run(s: Setup, cases: Vec<Case>) {
    let mut seen = Vec::new();
    for case in &cases {
        let before = s.up.count();
        let mut uri = format!("https://localhost:{}/svc/x", s.proxy.addr.port());
        let mut req = http::Request::get(&uri);
        match &case.auth {
            Auth::Bearer(t) => req = req.header("authorization", format!("Bearer {t}")),
            Auth::Raw(values) => {
                for v in values {
                    req = req.header("authorization", v.as_str());
                }
            }
            Auth::None => {}
            Auth::Query(t) => {
                uri.push_str(&format!("?access_token={t}"));
                req = http::Request::get(&uri);
            }
        }
        let r = client::send(&s.client, req.body(gatehouse::body::empty()).unwrap()).await;
        let name = case.name;
        assert_eq!(r.status.as_u16(), case.status, "{name}: {}", String::from_utf8_lossy(&r.body));
        let www = r.header("www-authenticate").to_owned();
        match case.www_error {
            None => assert!(www.is_empty(), "{name}: unexpected WWW-Authenticate {www}"),
            Some("") => assert_eq!(www, "Bearer realm=\"gatehouse\"", "{name}"),
            Some(e) => assert!(www.starts_with("Bearer realm=\"gatehouse\"") && www.contains(&format!("error=\"{e}\"")), "{name}: {www}"),
        }
        let reached = s.up.count() > before;
        assert_eq!(reached, case.status == 200, "{name}: reached the upstream = {reached}");
        seen.push((name, r.header("x-request-id").to_owned(), case.reason));
    }
    s.proxy.stop().await;
    let records = s.env.audit_records();
    for (name, rid, reason) in seen {
        let rec = records.iter().find(|r| r["request_id"] == rid.as_str()).unwrap_or_else(|| panic!("{name}: no audit record"));
        assert_eq!(rec["reason"].as_str(), reason, "{name}: audit reason");
        if reason.is_some() {
            assert_eq!(rec["decision"], "deny", "{name}");
        }
    }
}

#[tokio::test]
async fn algorithm_confusion_and_downgrade_are_refused() {
    let s = setup("").await;
    let i = &s.idp;
    let c = i.claims(json!({}));
    let unsigned = |alg: &str| format!("{}.{}.", B64.encode(json!({"alg": alg, "kid": "rsa-1"}).to_string()), B64.encode(c.to_string()));
    let rs = i.token(Key::Rsa, "RS256", Some("rsa-1"), json!({}));
    let rs_sig = rs.rsplit('.').next().unwrap().to_owned();
    let pubkey: &'static [u8] = Box::leak(i.rsa_public_der().into_boxed_slice());
    let cases = vec![
        refused("alg none without signature", unsigned("none"), "bad_algorithm"),
        refused("alg none with a signature", format!("{}{rs_sig}", unsigned("none")), "bad_algorithm"),
        refused("alg NONE upper case", unsigned("NONE"), "bad_algorithm"),
        refused(
            "HS256 signed with the RSA public key",
            i.sign(Key::Hmac(pubkey), "HS256", json!({"alg": "HS256", "kid": "rsa-1"}), c.clone()),
            "bad_algorithm",
        ),
        refused("HS256 without kid", i.sign(Key::Hmac(b"secret"), "HS256", json!({"alg": "HS256"}), c.clone()), "bad_algorithm"),
        refused(
            "ES256 header on an RSA key",
            i.sign(Key::Rsa, "RS256", json!({"alg": "ES256", "kid": "rsa-1"}), c.clone()),
            "bad_algorithm",
        ),
        refused("RS256 header on an EC key", i.sign(Key::Ec, "ES256", json!({"alg": "RS256", "kid": "ec-1"}), c.clone()), "bad_algorithm"),
        refused("PS256 on a JWK pinned to RS256", i.token(Key::Rsa, "PS256", Some("rsa-1"), json!({})), "bad_algorithm"),
        refused(
            "algorithm outside the allow-list",
            i.sign(Key::Rsa, "RS256", json!({"alg": "RS1", "kid": "rsa-1"}), c.clone()),
            "bad_algorithm",
        ),
        refused(
            "EdDSA header on an RSA key",
            i.sign(Key::Rsa, "RS256", json!({"alg": "EdDSA", "kid": "rsa-2"}), c.clone()),
            "bad_algorithm",
        ),
    ];
    run(s, cases).await;
}

#[tokio::test]
async fn key_injection_through_token_headers_is_ignored() {
    let attacker = TestUpstream::http().await;
    let s = setup("").await;
    let i = &s.idp;
    let c = i.claims(json!({}));
    let jwk = i.attacker_rsa_jwk("evil");
    let known_kid_jwk = i.attacker_rsa_jwk("rsa-1");
    let url = format!("{}/jwks", attacker.http_url());
    let cases = vec![
        refused(
            "embedded jwk with its own kid",
            i.sign(Key::AttackerRsa, "RS256", json!({"alg": "RS256", "kid": "evil", "jwk": jwk}), c.clone()),
            "unknown_key",
        ),
        refused(
            "embedded jwk under a known kid",
            i.sign(Key::AttackerRsa, "RS256", json!({"alg": "RS256", "kid": "rsa-1", "jwk": known_kid_jwk}), c.clone()),
            "bad_signature",
        ),
        refused(
            "jku to an attacker server",
            i.sign(Key::AttackerRsa, "RS256", json!({"alg": "RS256", "kid": "evil2", "jku": url}), c.clone()),
            "unknown_key",
        ),
        refused(
            "x5u to an attacker server",
            i.sign(Key::AttackerRsa, "RS256", json!({"alg": "RS256", "kid": "evil3", "x5u": url}), c.clone()),
            "unknown_key",
        ),
        refused(
            "x5c with an attacker certificate under a known kid",
            i.sign(Key::AttackerRsa, "RS256", json!({"alg": "RS256", "kid": "rsa-2", "x5c": ["MIIBattacker"]}), c.clone()),
            "bad_signature",
        ),
    ];
    run(s, cases).await;
    assert_eq!(attacker.count(), 0, "gatehouse fetched a key from a URL named in a token");
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let s = setup("").await;
    let i = &s.idp;
    let c = i.claims(json!({}));
    let es = i.token(Key::Ec, "ES256", Some("ec-1"), json!({}));
    let es_input = es.rsplit_once('.').unwrap().0.to_owned();
    let rs = i.token(Key::Rsa, "RS256", Some("rsa-1"), json!({}));
    let (rs_input, rs_sig) = rs.rsplit_once('.').unwrap();
    let tampered_payload = B64.encode(i.claims(json!({"sub": "admin"})).to_string());
    let rs_head = rs_input.split('.').next().unwrap();
    let cases = vec![
        refused("ES256 with r = s = 0 (CVE-2022-21449)", format!("{es_input}.{}", B64.encode([0u8; 64])), "bad_signature"),
        refused(
            "signature from another RSA key under a known kid",
            i.sign(Key::AttackerRsa, "RS256", json!({"alg": "RS256", "kid": "rsa-1"}), c.clone()),
            "bad_signature",
        ),
        refused(
            "signature from another EC key under a known kid",
            i.sign(Key::AttackerEc, "ES256", json!({"alg": "ES256", "kid": "ec-1"}), c.clone()),
            "bad_signature",
        ),
        refused(
            "signature from another Ed25519 key",
            i.sign(Key::AttackerEd, "EdDSA", json!({"alg": "EdDSA", "kid": "ed-1"}), c.clone()),
            "bad_signature",
        ),
        refused("payload changed after signing", format!("{rs_head}.{tampered_payload}.{rs_sig}"), "bad_signature"),
        refused("signature stripped", format!("{rs_input}."), "bad_signature"),
        refused("truncated signature", format!("{rs_input}.{}", &rs_sig[..20]), "bad_signature"),
    ];
    run(s, cases).await;
}

#[tokio::test]
async fn time_issuer_and_audience_claims_are_enforced() {
    let s = setup("").await;
    let i = &s.idp;
    let t = |extra| i.token(Key::Rsa, "RS256", Some("rsa-1"), extra);
    let other_issuer = i.sign(Key::Rsa, "RS256", json!({"alg": "RS256", "kid": "rsa-1"}), i.claims(json!({"iss": "https://evil.example"})));
    let cases = vec![
        refused("expired beyond the leeway", t(json!({"exp": now() - 120})), "token_expired"),
        accepted("expired within the 30 s leeway", t(json!({"exp": now() - 5}))),
        refused("not valid before a future nbf", t(json!({"nbf": now() + 600})), "token_not_yet_valid"),
        refused("issued in the future", t(json!({"iat": now() + 600})), "token_not_yet_valid"),
        refused("missing exp", t(json!({"exp": null})), "malformed_token"),
        refused("exp as a string", t(json!({"exp": "tomorrow"})), "malformed_token"),
        refused("unknown issuer", other_issuer, "bad_issuer"),
        refused("missing iss", t(json!({"iss": null})), "bad_issuer"),
        refused("wrong audience", t(json!({"aud": "someone-else"})), "bad_audience"),
        refused("missing audience", t(json!({"aud": null})), "bad_audience"),
        accepted("audience list containing ours", t(json!({"aud": ["x", "other"]}))),
        refused("audience list without ours", t(json!({"aud": ["x", "y"]})), "bad_audience"),
        refused("audience as a number", t(json!({"aud": 7})), "bad_audience"),
        accepted("nbf within the leeway", t(json!({"nbf": now() + 5}))),
        refused("nbf as a string", t(json!({"nbf": "soon"})), "malformed_token"),
        refused("missing sub", t(json!({"sub": null})), "malformed_token"),
    ];
    run(s, cases).await;
}

#[tokio::test]
async fn malformed_tokens_and_headers_are_refused() {
    let s = setup("").await;
    let i = &s.idp;
    let c = i.claims(json!({}));
    let good = i.token(Key::Rsa, "RS256", Some("rsa-1"), json!({}));
    let h = |v: serde_json::Value| B64.encode(v.to_string());
    let cases = vec![
        refused(
            "unknown crit header",
            i.sign(Key::Rsa, "RS256", json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp-ext"], "exp-ext": 1}), c.clone()),
            "malformed_token",
        ),
        refused(
            "typ of a different token kind",
            i.sign(Key::Rsa, "RS256", json!({"alg": "RS256", "kid": "rsa-1", "typ": "secevent+jwt"}), c.clone()),
            "malformed_token",
        ),
        refused("JWE compact shape", format!("{}.a.b.c.d", h(json!({"alg": "RSA-OAEP", "enc": "A256GCM"}))), "malformed_token"),
        refused(
            "JWE header on three parts",
            format!("{}.{}.c2ln", h(json!({"alg": "RS256", "enc": "A256GCM"})), h(c.clone())),
            "malformed_token",
        ),
        refused("garbage base64", "%%%.###.$$$".into(), "malformed_token"),
        refused("header is not JSON", format!("{}.{}.c2ln", B64.encode("not json"), h(c.clone())), "malformed_token"),
        refused("two parts only", "abc.def".into(), "malformed_token"),
        refused("oversize token", format!("{good}{}", "A".repeat(20_000)), "malformed_token"),
        refused("unknown kid", i.token(Key::Rsa, "RS256", Some("no-such-kid"), json!({})), "unknown_key"),
        Case {
            name: "two Authorization headers",
            auth: Auth::Raw(vec![format!("Bearer {good}"), format!("Bearer {good}")]),
            status: 400,
            www_error: Some("invalid_request"),
            reason: Some("malformed_token"),
        },
        Case { name: "no token", auth: Auth::None, status: 401, www_error: Some(""), reason: Some("missing_token") },
        Case {
            name: "empty Bearer",
            auth: Auth::Raw(vec!["Bearer ".into()]),
            status: 401,
            www_error: Some(""),
            reason: Some("missing_token"),
        },
        Case {
            name: "Basic scheme",
            auth: Auth::Raw(vec!["Basic YTpi".into()]),
            status: 401,
            www_error: Some(""),
            reason: Some("missing_token"),
        },
        Case {
            name: "token in the query string only",
            auth: Auth::Query(good.clone()),
            status: 401,
            www_error: Some(""),
            reason: Some("missing_token"),
        },
    ];
    run(s, cases).await;
}

#[tokio::test]
async fn valid_tokens_of_every_supported_algorithm_pass() {
    let s = setup("").await;
    let i = &s.idp;
    let cases = vec![
        accepted("RS256", i.token(Key::Rsa, "RS256", Some("rsa-1"), json!({}))),
        accepted("RS256 on a JWK without alg", i.token(Key::Rsa2, "RS256", Some("rsa-2"), json!({}))),
        accepted("PS256", i.token(Key::Rsa2, "PS256", Some("rsa-2"), json!({}))),
        accepted("ES256", i.token(Key::Ec, "ES256", Some("ec-1"), json!({}))),
        accepted("EdDSA", i.token(Key::Ed, "EdDSA", Some("ed-1"), json!({}))),
        accepted("EdDSA without kid (one Ed25519 key)", i.token(Key::Ed, "EdDSA", None, json!({}))),
        accepted(
            "RFC 9068 at+jwt",
            i.sign(
                Key::Ec,
                "ES256",
                json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"}),
                i.claims(json!({"scp": ["test"], "scope": null})),
            ),
        ),
        Case {
            name: "lower-case bearer scheme",
            auth: Auth::Raw(vec![format!("bearer {}", i.token(Key::Ec, "ES256", Some("ec-1"), json!({"jti": "lc"})))]),
            status: 200,
            www_error: None,
            reason: None,
        },
    ];
    run(s, cases).await;
}

#[tokio::test]
async fn an_issuer_allow_list_without_es256_refuses_es256() {
    let s = setup("algorithms = [\"RS256\"]").await;
    let i = &s.idp;
    let cases = vec![
        refused("ES256 not allowed for this issuer", i.token(Key::Ec, "ES256", Some("ec-1"), json!({})), "bad_algorithm"),
        accepted("RS256 allowed", i.token(Key::Rsa, "RS256", Some("rsa-1"), json!({}))),
    ];
    run(s, cases).await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_one_refetch_and_rotation_is_picked_up() {
    let s = setup("").await;
    let before = s.idp.jwks_hits.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for n in 0..500 {
        let token = s.idp.token(Key::AttackerRsa, "RS256", Some(&format!("random-{n}")), json!({}));
        let (client, port) = (s.client.clone(), s.proxy.addr.port());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://localhost:{port}/svc/x")).header("authorization", format!("Bearer {token}"));
            client::send(&client, req.body(gatehouse::body::empty()).unwrap()).await.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let fetched = s.idp.jwks_hits.load(Ordering::SeqCst) - before;
    assert!(fetched <= 2, "500 forged kids caused {fetched} JWKS fetches");
    s.proxy.stop().await;

    // A fresh proxy: a key rotated in at the issuer works after one refetch.
    let s = setup("").await;
    let before = s.idp.jwks_hits.load(Ordering::SeqCst);
    let key = s.idp.rotate_in("rot-2");
    let token = s.idp.sign_with(&key, "rot-2", json!({}));
    let r = client::get(&s.client, s.proxy.addr, "/svc/x", Some(&token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.idp.jwks_hits.load(Ordering::SeqCst) - before, 1, "exactly one refetch picked up the new key");
    s.proxy.stop().await;
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_issuer_is_down() {
    let s = setup("").await;
    s.idp.failing.store(true, Ordering::SeqCst);
    for n in 0..20 {
        // Distinct tokens: every one is verified with the cached keys.
        let token = s.idp.token(Key::Ec, "ES256", Some("ec-1"), json!({"jti": format!("outage-{n}")}));
        assert_eq!(client::get(&s.client, s.proxy.addr, "/svc/x", Some(&token)).await.status, 200);
    }
    // Unknown kids still get a fast, clean refusal.
    let forged = s.idp.token(Key::AttackerEc, "ES256", Some("new-kid"), json!({}));
    assert_eq!(client::get(&s.client, s.proxy.addr, "/svc/x", Some(&forged)).await.status, 401);
    s.proxy.stop().await;
}

#[tokio::test]
async fn keys_older_than_max_stale_fail_closed() {
    let s = setup("max_stale_s = 1").await;
    s.idp.failing.store(true, Ordering::SeqCst);
    let token = s.idp.token(Key::Ec, "ES256", Some("ec-1"), json!({"jti": "stale-1"}));
    assert_eq!(client::get(&s.client, s.proxy.addr, "/svc/x", Some(&token)).await.status, 200, "fresh keys work");
    // Let the cached keys pass their staleness bound while the issuer stays down.
    let refused = common::eventually("stale keys distrusted after max_stale_s", std::time::Duration::from_secs(5), || async {
        let fresh = s.idp.token(Key::Ec, "ES256", Some("ec-1"), json!({"jti": format!("stale-{:?}", std::time::Instant::now())}));
        let r = client::get(&s.client, s.proxy.addr, "/svc/x", Some(&fresh)).await;
        (r.status == 401).then_some(r)
    })
    .await;
    assert!(refused.header("www-authenticate").contains("invalid_token"));
    assert_eq!(client::admin_get(s.proxy.admin, "/readyz").await.unwrap().0, 503, "not ready without usable keys");
    s.proxy.stop().await;
}
