//! `gatehouse policy test`: runs the `[[test]]` cases of the policy files
//! against the compiled set, with the proxy's own router and normalizer.

use std::fmt;

use serde_json::{Map, Value};

use super::{AccessRequest, DEFAULT_DENY, Effect, PolicySet, PolicyTestCase};
use crate::identity::Identity;

/// Resolves `(host, raw path)` to the route and the path its policy sees,
/// or says why the request is refused before authorization (bad path, no
/// route). Provided by the caller, so that test cases are routed exactly as
/// live requests are.
pub type Resolve<'a> = &'a dyn Fn(Option<&str>, &str) -> Result<Resolved, String>;

/// Turns a test case's claims into the caller's identity, as authentication
/// does for a live token (the issuer's `scope_claim`).
pub type Identify<'a> = &'a dyn Fn(Map<String, Value>) -> Identity;

/// Where a request goes and the path the policy sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The route's name.
    pub route: String,
    /// The normalized path; in ASCII lower case when `fold_case`.
    pub path: String,
    /// The route is `case_insensitive`.
    pub fold_case: bool,
}

/// A `[[test]]` case that did not get the outcome it expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// The policy file of the case.
    pub file: String,
    /// The case's `name`.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: test {:?}: {}", self.file, self.name, self.message)
    }
}

/// Runs every test case of `set`, in load order; empty when all pass.
///
/// A case whose request cannot be routed passes only when it expects `deny`
/// and names no rule: the proxy refuses such a request (400/404) before any
/// rule is consulted.
pub fn run_tests(set: &PolicySet, resolve: Resolve<'_>, identify: Identify<'_>) -> Vec<TestFailure> {
    set.test_cases()
        .iter()
        .filter_map(|case| {
            check(set, case, resolve, identify).err().map(|message| TestFailure {
                file: case.file.clone(),
                name: case.name.clone(),
                message,
            })
        })
        .collect()
}

fn check(set: &PolicySet, case: &PolicyTestCase, resolve: Resolve<'_>, identify: Identify<'_>) -> Result<(), String> {
    let Resolved { route, path, fold_case } = match resolve(case.host.as_deref(), &case.path) {
        Ok(resolved) => resolved,
        Err(why) => {
            return match (case.expect, &case.rule) {
                (Effect::Deny, None) => Ok(()),
                (Effect::Deny, Some(rule)) => {
                    Err(format!("expected rule {rule:?} to decide, but the request is refused before authorization: {why}"))
                }
                (Effect::Allow, _) => Err(format!("expected allow, but the request is refused: {why}")),
            };
        }
    };
    let subject = identify(case.claims.clone());
    let decision = set.authorize(&AccessRequest { route: &route, method: &case.method, path: &path, fold_case, subject: &subject });
    let by = if decision.rule == DEFAULT_DENY {
        "by default-deny (no rule matched)".to_string()
    } else {
        format!("by rule {:?}", decision.rule.as_str())
    };
    if decision.effect != case.expect {
        return Err(format!("expected {}, got {} {by} ({} {} on route {route:?})", case.expect, decision.effect, case.method, path));
    }
    match &case.rule {
        Some(rule) if decision.rule != rule.as_str() => {
            Err(format!("expected rule {rule:?} to decide, but the request was {} {by}", decision.effect))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::SourceFile;

    /// A stand-in for the proxy's router: a prefix table, no normalization.
    fn fake_resolve(_host: Option<&str>, path: &str) -> Result<Resolved, String> {
        if path.contains("..") {
            return Err("bad path".to_string());
        }
        [("/echo/", "echo"), ("/crm/", "crm")]
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix) || path == prefix.trim_end_matches('/'))
            .map(|(_, route)| Resolved { route: route.to_string(), path: path.to_string(), fold_case: false })
            .ok_or_else(|| format!("no route for {path}"))
    }

    const POLICY: &str = r#"
[[rule]]
id = "crm-read"
route = "crm"
methods = ["GET"]
scopes_all = ["crm.read"]

[[test]]
name = "reader reads"
method = "GET"
path = "/crm/a"
claims = { scope = "crm.read" }
expect = "allow"
rule = "crm-read"

[[test]]
name = "wrong expectation"
method = "POST"
path = "/crm/a"
claims = { scope = "crm.read" }
expect = "allow"

[[test]]
name = "wrong rule"
method = "POST"
path = "/crm/a"
expect = "deny"
rule = "crm-read"

[[test]]
name = "no route is a deny"
method = "GET"
path = "/nowhere"
expect = "deny"

[[test]]
name = "no route cannot allow"
method = "GET"
path = "/nowhere"
expect = "allow"
"#;

    #[test]
    fn failing_cases_are_reported_with_file_name_and_why() {
        let set = PolicySet::from_sources(&[SourceFile::new("p.toml", POLICY)], &["crm", "echo"]).unwrap_or_else(|e| panic!("{e:?}"));
        let failures: Vec<String> =
            run_tests(&set, &fake_resolve, &|claims| Identity::from_claims(claims, crate::identity::ScopeClaim::Both))
                .iter()
                .map(ToString::to_string)
                .collect();
        assert_eq!(
            failures,
            [
                "p.toml: test \"wrong expectation\": expected allow, got deny by default-deny (no rule matched) (POST /crm/a on route \"crm\")",
                "p.toml: test \"wrong rule\": expected rule \"crm-read\" to decide, but the request was deny by default-deny (no rule matched)",
                "p.toml: test \"no route cannot allow\": expected allow, but the request is refused: no route for /nowhere",
            ]
        );
    }

    #[test]
    fn the_example_echo_policy_loads_and_its_tests_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load(&dir, &["echo"])
            .unwrap_or_else(|e| panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")));
        assert!(set.test_cases().len() >= 5, "the quickstart policy keeps at least 5 tests");
        let failures: Vec<String> =
            run_tests(&set, &fake_resolve, &|claims| Identity::from_claims(claims, crate::identity::ScopeClaim::Both))
                .iter()
                .map(ToString::to_string)
                .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
