//! Decision latency with a large policy set: 1,000 rules over 50 routes,
//! written to a temporary folder and loaded with `PolicySet::load`, as the
//! proxy does. Target: one `authorize` well under 2 µs.
//!
//! Run: `cargo bench --bench policy`

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::authz::{AccessRequest, Effect, PolicySet};
use gatehouse::identity::{Identity, ScopeClaim};
use serde_json::json;

const ROUTES: usize = 50;
const RULES_PER_ROUTE: usize = 20;
const FILES: usize = 10;
const ISSUER: &str = "https://idp.example.com";

/// The route every benchmarked request goes to.
const TARGET_ROUTE: usize = 17;
/// The rule of the target route that allows the request: near the end.
const TARGET_RULE: usize = 18;

fn route_name(r: usize) -> String {
    format!("svc{r:02}")
}

/// One rule of route `r` at position `k` of that route. Positions 0 and 1
/// deny; the rest allow with a mix of methods, globs, scopes, claims and
/// issuers, similar enough to each other that the scan has to look closely.
/// The first four rules of the whole set apply to every route (`*`).
fn rule_text(r: usize, k: usize) -> String {
    let svc = route_name(r);
    let id = format!("{svc}-rule-{k:02}");
    let route = if r == 0 && k < 4 { "*".to_string() } else { svc.clone() };
    match k {
        0 => format!("[[rule]]\nid = \"{id}\"\nroute = \"{route}\"\neffect = \"deny\"\npaths = [\"/{svc}/admin/**\", \"/**/.git/**\"]\n\n"),
        1 => format!(
            "[[rule]]\nid = \"{id}\"\nroute = \"{route}\"\neffect = \"deny\"\nmethods = [\"DELETE\"]\npaths = [\"/{svc}/**\"]\n[rule.claims]\nemployment = [\"contractor\"]\n\n"
        ),
        TARGET_RULE => format!(
            "[[rule]]\nid = \"{id}\"\nroute = \"{route}\"\nmethods = [\"GET\", \"HEAD\"]\npaths = [\"/{svc}/v2/orders/*/lines\", \"/{svc}/v2/orders/*/lines/**\"]\nscopes_all = [\"{svc}.orders.read\"]\nissuers = [\"{ISSUER}\"]\n[rule.claims]\ngroups = [\"team-{r:02}\", \"sre\"]\n\n"
        ),
        _ => {
            let methods = if k.is_multiple_of(2) { "\"GET\", \"HEAD\"" } else { "\"POST\", \"PUT\", \"PATCH\"" };
            let version = k % 3;
            let mut text = format!(
                "[[rule]]\nid = \"{id}\"\nroute = \"{route}\"\nmethods = [{methods}]\npaths = [\"/{svc}/v{version}/res{k}/**\", \"/{svc}/v{version}/*/res{k}/items/*\"]\nscopes_all = [\"{svc}.res{k}.read\"]\n"
            );
            if k.is_multiple_of(4) {
                text.push_str(&format!("scopes_any = [\"{svc}.admin\", \"{svc}.res{k}.write\"]\n"));
            }
            if k % 2 == 1 {
                text.push_str(&format!("issuers = [\"{ISSUER}\", \"https://partners.example.com\"]\n"));
            }
            if k.is_multiple_of(3) {
                text.push_str(&format!("[rule.claims]\ngroups = [\"team-{r:02}\", \"platform\"]\n"));
            }
            text.push('\n');
            text
        }
    }
}

/// Writes the policy folder and loads it.
fn build_set(dir: &Path) -> Result<PolicySet, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let per_file = ROUTES / FILES;
    for f in 0..FILES {
        let mut text = String::new();
        for r in f * per_file..(f + 1) * per_file {
            for k in 0..RULES_PER_ROUTE {
                text.push_str(&rule_text(r, k));
            }
        }
        std::fs::write(dir.join(format!("team-{f:02}.toml")), text).map_err(|e| e.to_string())?;
    }
    let names: Vec<String> = (0..ROUTES).map(route_name).collect();
    let routes: Vec<&str> = names.iter().map(String::as_str).collect();
    PolicySet::load(dir, &routes).map_err(|found| found.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
}

fn subject() -> Identity {
    let claims = json!({
        "iss": ISSUER,
        "sub": "svc-orders-reader",
        "aud": "gatehouse",
        "scope": "openid profile svc17.res3.read svc17.res5.write svc03.res4.read svc17.orders.read svc22.orders.read",
        "groups": ["eng", "oncall", "team-17", "payments"],
        "employment": "employee",
        "exp": 1_900_000_000,
    });
    match claims {
        serde_json::Value::Object(map) => Identity::from_claims(map, ScopeClaim::Both),
        _ => Identity::default(),
    }
}

#[expect(clippy::expect_used, reason = "a benchmark without its fixture has nothing to measure")]
fn authorize(c: &mut Criterion) {
    let dir: PathBuf = std::env::temp_dir().join(format!("gatehouse-bench-policy-{}", std::process::id()));
    let set = build_set(&dir);
    let loaded_again = {
        let mut group = c.benchmark_group("policy");
        group.sample_size(10);
        group.bench_function("load_1000_rules_in_10_files", |b| b.iter(|| build_set(black_box(&dir)).is_ok()));
        group.finish();
        build_set(&dir).is_ok()
    };
    let _ = std::fs::remove_dir_all(&dir);
    let set = set.expect("the generated policy set loads");
    assert!(loaded_again);
    assert_eq!(set.rule_count(), ROUTES * RULES_PER_ROUTE);

    let subject = subject();
    let route = route_name(TARGET_ROUTE);
    let allowed_path = format!("/{route}/v2/orders/8812/lines/3");
    let allowed = AccessRequest { route: &route, method: "GET", path: &allowed_path, fold_case: false, subject: &subject };
    let decision = set.authorize(&allowed);
    assert_eq!(decision.effect, Effect::Allow);
    assert_eq!(decision.rule.as_str(), format!("{route}-rule-{TARGET_RULE:02}"));

    let denied_path = format!("/{route}/v9/unknown/thing");
    let denied = AccessRequest { route: &route, method: "GET", path: &denied_path, fold_case: false, subject: &subject };
    let decision = set.authorize(&denied);
    assert_eq!((decision.effect, decision.rule.as_str()), (Effect::Deny, "default-deny"));

    let mut group = c.benchmark_group("policy");
    group.bench_function("authorize_allow_by_rule_19_of_20", |b| b.iter(|| set.authorize(black_box(&allowed))));
    group.bench_function("authorize_default_deny", |b| b.iter(|| set.authorize(black_box(&denied))));
    group.finish();
}

criterion_group!(benches, authorize);
criterion_main!(benches);
