//! Compiled rules and the conditions they test. Every predicate here is
//! pure and allocation-free; `authorize` and `explain` both use them, so the
//! two can never disagree about whether a condition held.

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};

use super::glob::PathGlob;
use super::{AccessRequest, Effect, RuleId};
use crate::identity::Identity;

/// Which routes a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteScope {
    /// `route = "*"`: every route.
    Any,
    /// One route, by name.
    Named(Box<str>),
}

/// One `[[rule]]`, validated and compiled.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) id: RuleId,
    pub(crate) route: RouteScope,
    pub(crate) effect: Effect,
    /// Upper-case method names; `None` = every method.
    pub(crate) methods: Option<Vec<Box<str>>>,
    /// `None` = every path.
    pub(crate) paths: Option<Vec<PathGlob>>,
    /// Empty = any issuer.
    pub(crate) issuers: Vec<Box<str>>,
    /// Empty = no condition.
    pub(crate) scopes_all: Vec<Box<str>>,
    /// Empty = no condition.
    pub(crate) scopes_any: Vec<Box<str>>,
    /// Every one must hold.
    pub(crate) claims: Vec<ClaimCondition>,
}

/// `[rule.claims] NAME = [VALUES]`: the claim must equal one of the values.
#[derive(Debug, Clone)]
pub(crate) struct ClaimCondition {
    pub(crate) name: Box<str>,
    pub(crate) values: Vec<Box<str>>,
}

impl Rule {
    /// True when every condition holds. The route was already matched by the
    /// per-route index. Cheap conditions first.
    pub(crate) fn matches(&self, req: &AccessRequest<'_>) -> bool {
        self.method_holds(req.method)
            && self.issuer_holds(req.subject)
            && self.missing_scope(req.subject).is_none()
            && self.scopes_any_holds(req.subject)
            && self.claims.iter().all(|c| c.holds(&req.subject.claims))
            && self.path_holds(req.path, req.fold_case)
    }

    /// `methods`: absent = every method; compared case-insensitively.
    pub(crate) fn method_holds(&self, method: &str) -> bool {
        self.methods.as_ref().is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    }

    /// `paths`: absent = every path; else any glob matches (without regard
    /// to ASCII case when `fold_case`; the path is then in lower case).
    pub(crate) fn path_holds(&self, path: &str, fold_case: bool) -> bool {
        self.paths.as_ref().is_none_or(|globs| globs.iter().any(|g| if fold_case { g.matches_folded(path) } else { g.matches(path) }))
    }

    /// `issuers`: empty = any issuer; else exact string equality with `iss`.
    pub(crate) fn issuer_holds(&self, subject: &Identity) -> bool {
        self.issuers.is_empty() || self.issuers.iter().any(|i| **i == *subject.iss)
    }

    /// `scopes_all`: the first required scope the token lacks, if any.
    pub(crate) fn missing_scope(&self, subject: &Identity) -> Option<&str> {
        self.scopes_all.iter().find(|s| !subject.has_scope(s)).map(|s| &**s)
    }

    /// `scopes_any`: empty = no condition; else the token has one of them.
    pub(crate) fn scopes_any_holds(&self, subject: &Identity) -> bool {
        self.scopes_any.is_empty() || self.scopes_any.iter().any(|s| subject.has_scope(s))
    }
}

impl ClaimCondition {
    /// A missing or null claim never holds. An array claim holds when any
    /// element does. Strings compare as strings; numbers and booleans compare
    /// by their JSON text (`42`, `true`); objects and nested arrays never hold.
    pub(crate) fn holds(&self, claims: &Map<String, Value>) -> bool {
        match claims.get(&*self.name) {
            None => false,
            Some(Value::Array(items)) => items.iter().any(|v| self.value_holds(v)),
            Some(value) => self.value_holds(value),
        }
    }

    fn value_holds(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.values.iter().any(|v| **v == **s),
            Value::Number(n) => self.values.iter().any(|v| displays_as(n, v)),
            Value::Bool(b) => {
                let text = if *b { "true" } else { "false" };
                self.values.iter().any(|v| &**v == text)
            }
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        }
    }
}

/// True when `value` formats exactly as `expected`, without allocating: the
/// formatter's output is compared piece by piece and stops at the first difference.
fn displays_as(value: &impl fmt::Display, expected: &str) -> bool {
    struct Compare<'a> {
        rest: &'a str,
    }
    impl fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(())
                }
                None => Err(fmt::Error),
            }
        }
    }
    let mut compare = Compare { rest: expected };
    write!(compare, "{value}").is_ok() && compare.rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::super::{AccessRequest, DenyReason, Effect, PolicySet};
    use crate::diagnostic::SourceFile;
    use crate::identity::{Identity, ScopeClaim};
    use proptest::prelude::*;
    use serde_json::json;

    const ROUTES: &[&str] = &["crm", "billing", "echo"];

    fn set(files: &[(&str, &str)]) -> PolicySet {
        let sources: Vec<SourceFile> = files.iter().map(|(n, t)| SourceFile::new(*n, *t)).collect();
        PolicySet::from_sources(&sources, ROUTES)
            .unwrap_or_else(|e| panic!("policy does not load: {}", e.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")))
    }

    fn subject(claims: serde_json::Value) -> Identity {
        match claims {
            serde_json::Value::Object(map) => Identity::from_claims(map, ScopeClaim::Both),
            other => panic!("claims must be an object: {other}"),
        }
    }

    /// One row of a decision table: request and the expected (effect, rule).
    struct Case {
        what: &'static str,
        route: &'static str,
        method: &'static str,
        path: &'static str,
        claims: serde_json::Value,
        effect: Effect,
        rule: &'static str,
    }

    fn check(set: &PolicySet, cases: &[Case]) {
        for c in cases {
            let subject = subject(c.claims.clone());
            let req = AccessRequest { route: c.route, method: c.method, path: c.path, fold_case: false, subject: &subject };
            let d = set.authorize(&req);
            assert_eq!((d.effect, d.rule.as_str()), (c.effect, c.rule), "case: {}", c.what);
            let want_reason = match (c.effect, c.rule) {
                (Effect::Allow, _) => None,
                (Effect::Deny, "default-deny") => Some(DenyReason::InsufficientScope),
                (Effect::Deny, _) => Some(DenyReason::PolicyDeny),
            };
            assert_eq!(d.reason, want_reason, "reason, case: {}", c.what);
            let explained = set.explain(&req);
            assert_eq!(explained.decision, d, "explain agrees with authorize, case: {}", c.what);
        }
    }

    const CONDITIONS: &str = r#"
[[rule]]
id = "crm-read"
route = "crm"
methods = ["get", "HEAD"]
paths = ["/crm/v1/**"]
scopes_all = ["crm.read"]

[[rule]]
id = "crm-item"
route = "crm"
methods = ["PUT"]
paths = ["/crm/v1/items/*"]
scopes_all = ["crm.write", "crm.items"]

[[rule]]
id = "billing-any"
route = "billing"
scopes_any = ["billing.read", "billing.admin"]
issuers = ["https://idp.example.com"]

[[rule]]
id = "echo-group"
route = "echo"
paths = ["/echo/groups/**"]
[rule.claims]
groups = ["data-eng", "ops"]

[[rule]]
id = "echo-level"
route = "echo"
paths = ["/echo/level/**"]
[rule.claims]
level = ["3"]
verified = ["true"]

[[rule]]
id = "health"
route = "*"
methods = ["GET"]
paths = ["/*/healthz"]
"#;

    fn c(
        what: &'static str,
        route: &'static str,
        method: &'static str,
        path: &'static str,
        claims: serde_json::Value,
        effect: Effect,
        rule: &'static str,
    ) -> Case {
        Case { what, route, method, path, claims, effect, rule }
    }

    #[test]
    fn every_condition_kind_decides_as_specified() {
        use Effect::{Allow, Deny};
        let set = set(&[("conditions.toml", CONDITIONS)]);
        let reader = json!({"iss": "https://idp.example.com", "sub": "a", "scope": "crm.read"});
        let dd = "default-deny";
        check(
            &set,
            &[
                c("route, method, path, scope all hold", "crm", "GET", "/crm/v1/accounts", reader.clone(), Allow, "crm-read"),
                c("method compared case-insensitively", "crm", "get", "/crm/v1/accounts", reader.clone(), Allow, "crm-read"),
                c("HEAD listed too", "crm", "HEAD", "/crm/v1", reader.clone(), Allow, "crm-read"),
                c("method not listed", "crm", "POST", "/crm/v1/accounts", reader.clone(), Deny, dd),
                c("path outside the glob", "crm", "GET", "/crm/v2/accounts", reader.clone(), Deny, dd),
                c("rule of another route does not apply", "billing", "GET", "/crm/v1/accounts", reader.clone(), Deny, dd),
                c("scopes_all: missing scope", "crm", "GET", "/crm/v1/accounts", json!({"scope": "crm.write"}), Deny, dd),
                c(
                    "scopes_all: every scope present (scp array)",
                    "crm",
                    "PUT",
                    "/crm/v1/items/7",
                    json!({"scp": ["crm.write", "crm.items"]}),
                    Allow,
                    "crm-item",
                ),
                c("scopes_all: one of two is not enough", "crm", "PUT", "/crm/v1/items/7", json!({"scope": "crm.write"}), Deny, dd),
                c("* matches exactly one segment", "crm", "PUT", "/crm/v1/items/7/x", json!({"scope": "crm.write crm.items"}), Deny, dd),
                c("* does not match zero segments", "crm", "PUT", "/crm/v1/items", json!({"scope": "crm.write crm.items"}), Deny, dd),
                c(
                    "scopes_any: one of them is enough",
                    "billing",
                    "DELETE",
                    "/billing/x",
                    json!({"iss": "https://idp.example.com", "scope": "billing.admin"}),
                    Allow,
                    "billing-any",
                ),
                c(
                    "scopes_any: none of them",
                    "billing",
                    "GET",
                    "/billing/x",
                    json!({"iss": "https://idp.example.com", "scope": "crm.read"}),
                    Deny,
                    dd,
                ),
                c(
                    "issuers: other issuer",
                    "billing",
                    "GET",
                    "/billing/x",
                    json!({"iss": "https://evil.example.com", "scope": "billing.read"}),
                    Deny,
                    dd,
                ),
                c("issuers: no iss at all", "billing", "GET", "/billing/x", json!({"scope": "billing.read"}), Deny, dd),
                c("claims: string claim equals a value", "echo", "GET", "/echo/groups/x", json!({"groups": "ops"}), Allow, "echo-group"),
                c(
                    "claims: array claim, one element equals",
                    "echo",
                    "GET",
                    "/echo/groups/x",
                    json!({"groups": ["sales", "data-eng"]}),
                    Allow,
                    "echo-group",
                ),
                c("claims: array claim, no element equals", "echo", "GET", "/echo/groups/x", json!({"groups": ["sales"]}), Deny, dd),
                c("claims: missing claim", "echo", "GET", "/echo/groups/x", json!({}), Deny, dd),
                c("claims: other value", "echo", "GET", "/echo/groups/x", json!({"groups": "sales"}), Deny, dd),
                c(
                    "claims: number and bool compared by JSON text",
                    "echo",
                    "GET",
                    "/echo/level/1",
                    json!({"level": 3, "verified": true}),
                    Allow,
                    "echo-level",
                ),
                c("claims: number differs", "echo", "GET", "/echo/level/1", json!({"level": 30, "verified": true}), Deny, dd),
                c(
                    "claims: float text is not integer text",
                    "echo",
                    "GET",
                    "/echo/level/1",
                    json!({"level": 3.0, "verified": true}),
                    Deny,
                    dd,
                ),
                c("claims: bool false", "echo", "GET", "/echo/level/1", json!({"level": 3, "verified": false}), Deny, dd),
                c(
                    "claims: string \"3\" equals too",
                    "echo",
                    "GET",
                    "/echo/level/1",
                    json!({"level": "3", "verified": "true"}),
                    Allow,
                    "echo-level",
                ),
                c("claims: object claim never equals", "echo", "GET", "/echo/groups/x", json!({"groups": {"ops": true}}), Deny, dd),
                c("route * applies to every route", "billing", "GET", "/billing/healthz", json!({}), Allow, "health"),
                c("route * applies to an unknown route", "other", "GET", "/other/healthz", json!({}), Allow, "health"),
                c("route * still checks its path", "echo", "GET", "/echo/x/healthz", json!({}), Deny, dd),
            ],
        );
    }

    #[test]
    fn deny_wins_over_allow_regardless_of_file_order() {
        use Effect::{Allow, Deny};
        let allow = r#"
[[rule]]
id = "crm-all"
route = "crm"
scopes_all = ["crm.read"]
"#;
        let deny = r#"
[[rule]]
id = "crm-admin-deny"
route = "crm"
effect = "deny"
paths = ["/crm/admin/**"]
"#;
        let claims = json!({"scope": "crm.read"});
        for files in [[("a.toml", allow), ("b.toml", deny)], [("a.toml", deny), ("b.toml", allow)]] {
            let set = set(&files);
            check(
                &set,
                &[
                    c("deny rule matches", "crm", "GET", "/crm/admin/users", claims.clone(), Deny, "crm-admin-deny"),
                    c("trailing slash does not escape the deny", "crm", "GET", "/crm/admin/", claims.clone(), Deny, "crm-admin-deny"),
                    c("deny without allow still denies", "crm", "GET", "/crm/admin", json!({}), Deny, "crm-admin-deny"),
                    c("elsewhere the allow applies", "crm", "GET", "/crm/users", claims.clone(), Allow, "crm-all"),
                ],
            );
        }
    }

    #[test]
    fn first_matching_allow_and_first_matching_deny_in_load_order_decide() {
        use Effect::{Allow, Deny};
        let a = r#"
[[rule]]
id = "star-allow"
route = "*"
paths = ["/crm/**"]

[[rule]]
id = "first-deny"
route = "crm"
effect = "deny"
paths = ["/crm/secret"]
"#;
        let b = r#"
[[rule]]
id = "crm-allow"
route = "crm"

[[rule]]
id = "second-deny"
route = "*"
effect = "deny"
paths = ["/crm/secret", "/crm/other-secret"]
"#;
        let set = set(&[("a.toml", a), ("b.toml", b)]);
        check(
            &set,
            &[
                c("first allow in load order (a * rule) wins", "crm", "GET", "/crm/x", json!({}), Allow, "star-allow"),
                c("later allow applies where the first does not", "crm", "GET", "/elsewhere", json!({}), Allow, "crm-allow"),
                c("first deny in load order wins", "crm", "GET", "/crm/secret", json!({}), Deny, "first-deny"),
                c("a * deny applies too", "crm", "GET", "/crm/other-secret", json!({}), Deny, "second-deny"),
                c("no rule at all for this route: default deny", "billing", "GET", "/billing", json!({}), Deny, "default-deny"),
            ],
        );
    }

    #[test]
    fn an_empty_policy_set_denies_everything_by_default() {
        let set = set(&[]);
        check(&set, &[c("nothing loaded", "crm", "GET", "/crm", json!({"scope": "crm.read"}), Effect::Deny, "default-deny")]);
        assert_eq!(set.rule_count(), 0);
    }

    // ---- properties -------------------------------------------------------

    /// A rule in a small domain, so that random requests often match it.
    #[derive(Debug, Clone)]
    struct GenRule {
        deny: bool,
        route: &'static str,
        methods: Option<Vec<&'static str>>,
        path: Option<&'static str>,
        scopes_all: Vec<&'static str>,
        scopes_any: Vec<&'static str>,
        group: Option<&'static str>,
    }

    const METHODS: &[&str] = &["GET", "POST", "DELETE"];
    const GLOBS: &[&str] = &["/x/**", "/x/*", "/x/y", "/**", "/y/*/z", "/x/**/z"];
    const PATHS: &[&str] = &["/", "/x", "/x/y", "/x/y/z", "/y/q/z", "/x/z/"];
    const SCOPES: &[&str] = &["s1", "s2", "s3"];
    const GROUPS: &[&str] = &["g1", "g2"];

    fn gen_rule() -> impl Strategy<Value = GenRule> {
        (
            any::<bool>(),
            prop::sample::select(vec!["crm", "billing", "*"]),
            prop::option::of(prop::sample::subsequence(METHODS.to_vec(), 1..=3)),
            prop::option::of(prop::sample::select(GLOBS.to_vec())),
            prop::sample::subsequence(SCOPES.to_vec(), 0..=2),
            prop::sample::subsequence(SCOPES.to_vec(), 0..=2),
            prop::option::of(prop::sample::select(GROUPS.to_vec())),
        )
            .prop_map(|(deny, route, methods, path, scopes_all, scopes_any, group)| GenRule {
                deny,
                route,
                methods,
                path,
                scopes_all,
                scopes_any,
                group,
            })
    }

    fn render(rules: &[GenRule]) -> String {
        let mut out = String::new();
        for (i, r) in rules.iter().enumerate() {
            let list = |v: &[&str]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
            out.push_str(&format!("[[rule]]\nid = \"r{i}\"\nroute = {:?}\n", r.route));
            out.push_str(&format!("effect = {:?}\n", if r.deny { "deny" } else { "allow" }));
            if let Some(m) = &r.methods {
                out.push_str(&format!("methods = [{}]\n", list(m)));
            }
            if let Some(p) = r.path {
                out.push_str(&format!("paths = [{p:?}]\n"));
            }
            out.push_str(&format!("scopes_all = [{}]\nscopes_any = [{}]\n", list(&r.scopes_all), list(&r.scopes_any)));
            if let Some(g) = r.group {
                out.push_str(&format!("[rule.claims]\ngroups = [{g:?}]\n"));
            }
            out.push('\n');
        }
        out
    }

    /// Independent oracle for one rule, written from the spec, not from the code.
    fn oracle_matches(r: &GenRule, route: &str, method: &str, path: &str, scopes: &[&str], group: &str) -> bool {
        fn seg_match(g: &[&str], p: &[&str]) -> bool {
            match (g.split_first(), p.split_first()) {
                (None, None) => true,
                (Some((&"**", rest)), _) => seg_match(rest, p) || (!p.is_empty() && seg_match(g, &p[1..])),
                (Some((&"*", rest)), Some((_, prest))) => seg_match(rest, prest),
                (Some((lit, rest)), Some((s, prest))) => lit == s && seg_match(rest, prest),
                _ => false,
            }
        }
        let segs = |s: &'static str| -> Vec<&'static str> { s.split('/').filter(|x| !x.is_empty()).collect() };
        let path_segs: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
        (r.route == "*" || r.route == route)
            && r.methods.as_ref().is_none_or(|m| m.contains(&method))
            && r.path.is_none_or(|g| seg_match(&segs(g), &path_segs))
            && r.scopes_all.iter().all(|s| scopes.contains(s))
            && (r.scopes_any.is_empty() || r.scopes_any.iter().any(|s| scopes.contains(s)))
            && r.group.is_none_or(|g| g == group)
    }

    fn request() -> impl Strategy<Value = (&'static str, &'static str, &'static str, Vec<&'static str>, &'static str)> {
        (
            prop::sample::select(vec!["crm", "billing", "echo"]),
            prop::sample::select(METHODS.to_vec()),
            prop::sample::select(PATHS.to_vec()),
            prop::sample::subsequence(SCOPES.to_vec(), 0..=3),
            prop::sample::select(GROUPS.to_vec()),
        )
    }

    proptest! {
        #[test]
        fn whenever_a_deny_rule_matches_the_decision_is_policy_deny_by_the_first_such_rule(
            rules in prop::collection::vec(gen_rule(), 0..12),
            (route, method, path, scopes, group) in request(),
        ) {
            let set = set(&[("gen.toml", &render(&rules))]);
            let subject = subject(json!({"scope": scopes.join(" "), "groups": [group]}));
            let d = set.authorize(&AccessRequest { route, method, path, fold_case: false, subject: &subject });
            let first_deny = rules.iter().position(|r| r.deny && oracle_matches(r, route, method, path, &scopes, group));
            if let Some(i) = first_deny {
                prop_assert_eq!(d.effect, Effect::Deny);
                prop_assert_eq!(d.reason, Some(DenyReason::PolicyDeny));
                prop_assert_eq!(d.rule.as_str(), format!("r{i}"));
            } else if let Some(i) = rules.iter().position(|r| oracle_matches(r, route, method, path, &scopes, group)) {
                prop_assert_eq!(d.effect, Effect::Allow);
                prop_assert_eq!(d.rule.as_str(), format!("r{i}"));
            }
        }

        #[test]
        fn when_no_rule_matches_the_decision_is_default_deny(
            rules in prop::collection::vec(gen_rule(), 0..12),
            (route, method, path, scopes, group) in request(),
        ) {
            let set = set(&[("gen.toml", &render(&rules))]);
            let subject = subject(json!({"scope": scopes.join(" "), "groups": group}));
            let d = set.authorize(&AccessRequest { route, method, path, fold_case: false, subject: &subject });
            let any = rules.iter().any(|r| oracle_matches(r, route, method, path, &scopes, group));
            if !any {
                prop_assert_eq!(d.effect, Effect::Deny);
                prop_assert_eq!(d.rule.as_str(), "default-deny");
                prop_assert_eq!(d.reason, Some(DenyReason::InsufficientScope));
            }
        }
    }
}
