//! `gatehouse policy explain`: the decision plus, for every rule that could
//! apply to the route, which of its conditions held and which failed.

use std::fmt;

use serde_json::{Value, json};

use super::decide::{RouteScope, Rule};
use super::{AccessRequest, Decision, Effect, RuleId};

/// A decision with its reasons, printed by `policy explain`.
///
/// `Display` prints `decision: allow|deny`, `route: NAME` and `rule: ID`
/// lines, then one line per rule considered, in load order:
/// `  rule ID (EFFECT): held: ...; failed: ...` (`none` for an empty list).
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Exactly what [`super::PolicySet::authorize`] decides for the request.
    pub decision: Decision,
    /// The route the request was decided on.
    pub route: String,
    /// Every rule of the route and every `*` rule, in load order.
    pub rules: Vec<RuleExplanation>,
}

/// How one rule fared against the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleExplanation {
    /// The rule's id.
    pub id: RuleId,
    /// What the rule does when it matches.
    pub effect: Effect,
    /// True when every condition held.
    pub matched: bool,
    /// The conditions that held, e.g. `methods [GET, HEAD]`.
    pub held: Vec<String>,
    /// The conditions that failed, with what was wanted and what was found.
    pub failed: Vec<String>,
}

impl Explanation {
    /// The explanation as JSON, for `policy explain --json`:
    /// `{"decision","route","rule","reason","rules":[{"id","effect","matched","held","failed"}]}`.
    pub fn to_json(&self) -> Value {
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                json!({
                    "id": r.id.as_str(),
                    "effect": r.effect.as_str(),
                    "matched": r.matched,
                    "held": r.held,
                    "failed": r.failed,
                })
            })
            .collect();
        json!({
            "decision": self.decision.effect.as_str(),
            "route": self.route,
            "rule": self.decision.rule.as_str(),
            "reason": self.decision.reason.map(|r| r.as_str()),
            "rules": rules,
        })
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision.effect)?;
        writeln!(f, "route: {}", self.route)?;
        writeln!(f, "rule: {}", self.decision.rule)?;
        for rule in &self.rules {
            writeln!(
                f,
                "  rule {} ({}): held: {}; failed: {}",
                rule.id,
                rule.effect,
                list_or_none(&rule.held),
                list_or_none(&rule.failed)
            )?;
        }
        Ok(())
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".to_string() } else { items.join(", ") }
}

/// `[a, b]`
fn bracketed<T: fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", inner.join(", "))
}

/// Checks each condition of `rule` on its own, with the same predicates as
/// `authorize`. Conditions the rule does not have are not listed.
pub(super) fn explain_rule(rule: &Rule, req: &AccessRequest<'_>) -> RuleExplanation {
    let mut held = Vec::new();
    let mut failed = Vec::new();
    let subject = req.subject;
    // The rule was picked from the route's index, so its route condition held.
    held.push(match rule.route {
        RouteScope::Any => "route *".to_string(),
        RouteScope::Named(_) => "route".to_string(),
    });
    if let Some(methods) = &rule.methods {
        if rule.method_holds(req.method) {
            held.push(format!("methods {}", bracketed(methods)));
        } else {
            failed.push(format!("methods wanted one of {}, got {}", bracketed(methods), req.method));
        }
    }
    if let Some(paths) = &rule.paths {
        if rule.path_holds(req.path, req.fold_case) {
            held.push(format!("paths {}", bracketed(paths)));
        } else {
            failed.push(format!("paths wanted one of {}, got {}", bracketed(paths), req.path));
        }
    }
    if !rule.issuers.is_empty() {
        if rule.issuer_holds(subject) {
            held.push(format!("issuers {}", bracketed(&rule.issuers)));
        } else {
            failed.push(format!("issuers wanted one of {}, got {:?}", bracketed(&rule.issuers), subject.iss));
        }
    }
    if !rule.scopes_all.is_empty() {
        if rule.missing_scope(subject).is_none() {
            held.push(format!("scopes_all {}", bracketed(&rule.scopes_all)));
        } else {
            let missing: Vec<&str> = rule.scopes_all.iter().map(|s| &**s).filter(|s| !subject.has_scope(s)).collect();
            failed.push(format!("scopes_all wanted all of {}, missing {}", bracketed(&rule.scopes_all), bracketed(&missing)));
        }
    }
    if !rule.scopes_any.is_empty() {
        if rule.scopes_any_holds(subject) {
            held.push(format!("scopes_any {}", bracketed(&rule.scopes_any)));
        } else {
            failed.push(format!("scopes_any wanted one of {}, token has none", bracketed(&rule.scopes_any)));
        }
    }
    for claim in &rule.claims {
        if claim.holds(&subject.claims) {
            held.push(format!("claims.{} {}", claim.name, bracketed(&claim.values)));
        } else {
            let found = match subject.claims.get(&*claim.name) {
                Some(value) => format!("got {value}"),
                None => "claim missing".to_string(),
            };
            failed.push(format!("claims.{} wanted one of {}, {found}", claim.name, bracketed(&claim.values)));
        }
    }
    RuleExplanation { id: rule.id.clone(), effect: rule.effect, matched: failed.is_empty(), held, failed }
}

#[cfg(test)]
mod tests {
    use super::super::{AccessRequest, PolicySet};
    use crate::diagnostic::SourceFile;
    use crate::identity::{Identity, ScopeClaim};
    use serde_json::json;

    const POLICY: &str = r#"
[[rule]]
id = "crm-read"
route = "crm"
methods = ["GET"]
paths = ["/crm/v1/**"]
scopes_all = ["crm.read"]
[rule.claims]
groups = ["data-eng"]

[[rule]]
id = "crm-admin-deny"
route = "crm"
effect = "deny"
paths = ["/crm/v1/admin/**"]

[[rule]]
id = "other-route"
route = "echo"

[[rule]]
id = "probe"
route = "*"
methods = ["HEAD"]
"#;

    fn set() -> PolicySet {
        PolicySet::from_sources(&[SourceFile::new("p.toml", POLICY)], &["crm", "echo"]).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn subject(claims: serde_json::Value) -> Identity {
        match claims {
            serde_json::Value::Object(m) => Identity::from_claims(m, ScopeClaim::Both),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn explain_of_an_allowed_request_lists_what_held_for_every_rule_of_the_route() {
        let set = set();
        let subject = subject(json!({"scope": "crm.read", "groups": ["data-eng"]}));
        let req = AccessRequest { route: "crm", method: "GET", path: "/crm/v1/accounts", fold_case: false, subject: &subject };
        let text = set.explain(&req).to_string();
        assert_eq!(
            text,
            "decision: allow\n\
             route: crm\n\
             rule: crm-read\n  \
             rule crm-read (allow): held: route, methods [GET], paths [/crm/v1/**], scopes_all [crm.read], claims.groups [data-eng]; failed: none\n  \
             rule crm-admin-deny (deny): held: route; failed: paths wanted one of [/crm/v1/admin/**], got /crm/v1/accounts\n  \
             rule probe (allow): held: route *; failed: methods wanted one of [HEAD], got GET\n"
        );
    }

    #[test]
    fn explain_of_a_denied_request_says_which_conditions_failed() {
        let set = set();
        let subject = subject(json!({"scope": "crm.write", "groups": "sales"}));
        let req = AccessRequest { route: "crm", method: "GET", path: "/crm/v1/accounts", fold_case: false, subject: &subject };
        let explained = set.explain(&req);
        assert_eq!(
            explained.to_string(),
            "decision: deny\n\
             route: crm\n\
             rule: default-deny\n  \
             rule crm-read (allow): held: route, methods [GET], paths [/crm/v1/**]; failed: scopes_all wanted all of [crm.read], missing [crm.read], claims.groups wanted one of [data-eng], got \"sales\"\n  \
             rule crm-admin-deny (deny): held: route; failed: paths wanted one of [/crm/v1/admin/**], got /crm/v1/accounts\n  \
             rule probe (allow): held: route *; failed: methods wanted one of [HEAD], got GET\n"
        );
        assert_eq!(
            explained.to_json(),
            json!({
                "decision": "deny", "route": "crm", "rule": "default-deny", "reason": "insufficient_scope",
                "rules": [
                    {"id": "crm-read", "effect": "allow", "matched": false,
                     "held": ["route", "methods [GET]", "paths [/crm/v1/**]"],
                     "failed": ["scopes_all wanted all of [crm.read], missing [crm.read]",
                                "claims.groups wanted one of [data-eng], got \"sales\""]},
                    {"id": "crm-admin-deny", "effect": "deny", "matched": false,
                     "held": ["route"], "failed": ["paths wanted one of [/crm/v1/admin/**], got /crm/v1/accounts"]},
                    {"id": "probe", "effect": "allow", "matched": false,
                     "held": ["route *"], "failed": ["methods wanted one of [HEAD], got GET"]},
                ]
            })
        );
    }

    #[test]
    fn explain_of_a_policy_deny_marks_the_deny_rule_matched() {
        let set = set();
        let subject = subject(json!({"scope": "crm.read", "groups": "data-eng"}));
        let req = AccessRequest { route: "crm", method: "GET", path: "/crm/v1/admin/x", fold_case: false, subject: &subject };
        let explained = set.explain(&req);
        assert_eq!(explained.decision.rule, "crm-admin-deny");
        let matched: Vec<&str> = explained.rules.iter().filter(|r| r.matched).map(|r| r.id.as_str()).collect();
        assert_eq!(matched, ["crm-read", "crm-admin-deny"]);
        assert_eq!(explained.to_json()["reason"], "policy_deny");
    }
}
