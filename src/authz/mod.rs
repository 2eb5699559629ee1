//! Authorization: the policy files of docs/policy.md, compiled once into an
//! immutable [`PolicySet`], and a pure decision function over it.
//!
//! Decision order: a matching `deny` rule wins (the first one in load order;
//! reason `policy_deny`); else the first matching `allow` rule allows; else
//! the request is denied by the built-in rule `default-deny` (reason
//! `insufficient_scope`). Load order is file name order, then order in file.
//!
//! A [`PolicySet`] is built off the request path by [`PolicySet::load`], which
//! reports every problem of every file at once; the proxy swaps a whole new
//! set in (`Arc<PolicySet>`) only when loading succeeded.

mod decide;
mod explain;
mod glob;
mod load;
mod testcases;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::identity::Identity;
use decide::Rule;

pub use explain::{Explanation, RuleExplanation};
pub use testcases::{Identify, Resolve, Resolved, TestFailure, run_tests};

/// The id of the built-in rule that decides when no policy rule matches.
pub const DEFAULT_DENY: &str = "default-deny";

/// A compiled, immutable set of policy rules and the `[[test]]` cases that
/// came with them. `Send + Sync`; share it as `Arc<PolicySet>`.
#[derive(Debug)]
pub struct PolicySet {
    /// Every rule, in load order.
    rules: Vec<Rule>,
    /// For each configured route: indices into `rules` of its own rules and
    /// the `*` rules, in load order.
    by_route: HashMap<Box<str>, RouteRules>,
    /// The `*` rules alone, for a route the set was not loaded with.
    any_route: RouteRules,
    tests: Vec<PolicyTestCase>,
    fingerprint: u64,
    default_deny: RuleId,
}

/// Indices into `PolicySet::rules` that can apply to one route.
#[derive(Debug, Default, Clone)]
struct RouteRules {
    deny: Vec<usize>,
    allow: Vec<usize>,
    /// Both, in load order (for `explain`).
    all: Vec<usize>,
}

impl PolicySet {
    /// Loads every `*.toml` in `dir` (sorted by file name, not recursive;
    /// dotfiles are skipped, as the shell's `*.toml` would). `routes` are the
    /// route names that exist in the config.
    ///
    /// All problems of all files are returned at once, as `FILE:LINE:COL`
    /// diagnostics: TOML syntax, unknown keys, wrong types, unknown route
    /// names (at the `route =` value), duplicate rule ids across files (at the
    /// second `id`), bad globs and methods, bad `effect`/`expect`, empty ids
    /// and scopes, tests naming an unknown rule. A missing or unreadable
    /// folder is one diagnostic.
    pub fn load(dir: &Path, routes: &[&str]) -> Result<PolicySet, Vec<Diagnostic>> {
        let sources = load::read_dir(dir)?;
        Self::from_sources(&sources, routes)
    }

    /// Compiles policy files already read into memory, in the given order.
    /// Same checks and diagnostics as [`PolicySet::load`].
    pub fn from_sources(sources: &[SourceFile], routes: &[&str]) -> Result<PolicySet, Vec<Diagnostic>> {
        let compiled = load::compile(sources, routes)?;
        let mut by_route: HashMap<Box<str>, RouteRules> = routes.iter().map(|r| (Box::<str>::from(*r), RouteRules::default())).collect();
        let mut any_route = RouteRules::default();
        for (i, rule) in compiled.rules.iter().enumerate() {
            let targets: Vec<&mut RouteRules> = match &rule.route {
                decide::RouteScope::Any => std::iter::once(&mut any_route).chain(by_route.values_mut()).collect(),
                decide::RouteScope::Named(name) => by_route.get_mut(name).into_iter().collect(),
            };
            for target in targets {
                target.all.push(i);
                match rule.effect {
                    Effect::Allow => target.allow.push(i),
                    Effect::Deny => target.deny.push(i),
                }
            }
        }
        Ok(PolicySet {
            rules: compiled.rules,
            by_route,
            any_route,
            tests: compiled.tests,
            fingerprint: compiled.fingerprint,
            default_deny: RuleId::from(DEFAULT_DENY),
        })
    }

    /// Number of `[[rule]]`s loaded.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// A 64-bit FNV-1a hash of every file's name and content, in load order:
    /// equal sets of files give equal fingerprints. For logs, not for security.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Decides one request. Pure; scans only the rules of `req.route` and the
    /// `*` rules; does not allocate (the rule id is a reference-counted clone).
    pub fn authorize(&self, req: &AccessRequest<'_>) -> Decision {
        let candidates = self.rules_for(req.route);
        let first = |indices: &[usize]| indices.iter().filter_map(|&i| self.rules.get(i)).find(|rule| rule.matches(req));
        if let Some(rule) = first(&candidates.deny) {
            return Decision { effect: Effect::Deny, rule: rule.id.clone(), reason: Some(DenyReason::PolicyDeny) };
        }
        if let Some(rule) = first(&candidates.allow) {
            return Decision { effect: Effect::Allow, rule: rule.id.clone(), reason: None };
        }
        Decision { effect: Effect::Deny, rule: self.default_deny.clone(), reason: Some(DenyReason::InsufficientScope) }
    }

    /// The decision of [`PolicySet::authorize`] plus, for every rule of the
    /// route and every `*` rule in load order, which conditions held and
    /// which failed.
    pub fn explain(&self, req: &AccessRequest<'_>) -> Explanation {
        let rules =
            self.rules_for(req.route).all.iter().filter_map(|&i| self.rules.get(i)).map(|rule| explain::explain_rule(rule, req)).collect();
        Explanation { decision: self.authorize(req), route: req.route.to_string(), rules }
    }

    /// The `[[test]]` cases of all files, in load order.
    pub fn test_cases(&self) -> &[PolicyTestCase] {
        &self.tests
    }

    fn rules_for(&self, route: &str) -> &RouteRules {
        self.by_route.get(route).unwrap_or(&self.any_route)
    }
}

/// What is being asked: may this subject make this request on this route?
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The matched route's name.
    pub route: &'a str,
    /// The HTTP method (compared case-insensitively).
    pub method: &'a str,
    /// The normalized request path, before prefix stripping; in ASCII
    /// lower case when `fold_case`.
    pub path: &'a str,
    /// The route's upstream reads paths without regard to ASCII case
    /// (`case_insensitive`): globs match so too.
    pub fold_case: bool,
    /// The caller.
    pub subject: &'a Identity,
}

/// The outcome of [`PolicySet::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub effect: Effect,
    /// The rule that decided; [`DEFAULT_DENY`] when no rule matched.
    pub rule: RuleId,
    /// Why the request was denied; `None` when allowed.
    pub reason: Option<DenyReason>,
}

/// What a rule does when it matches; also what a test case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse it with 403.
    Deny,
}

impl Effect {
    /// `"allow"` or `"deny"`, as written in policy files and the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was denied, as the audit record's `reason` (docs/audit.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// A `deny` rule matched.
    PolicyDeny,
    /// No rule matched (`default-deny`).
    InsufficientScope,
}

impl DenyReason {
    /// `"policy_deny"` or `"insufficient_scope"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::PolicyDeny => "policy_deny",
            DenyReason::InsufficientScope => "insufficient_scope",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule id, as written in the policy (`id = "..."`); cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(Arc<str>);

impl RuleId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for RuleId {
    fn from(id: &str) -> Self {
        RuleId(Arc::from(id))
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for RuleId {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for RuleId {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// One `[[test]]` case of a policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyTestCase {
    /// The policy file it came from, as printed in diagnostics.
    pub file: String,
    /// Its `name`.
    pub name: String,
    /// Upper-case HTTP method.
    pub method: String,
    /// The raw request path, to be normalized and routed by the caller.
    pub path: String,
    /// The `Host` to route with, when routes match on host.
    pub host: Option<String>,
    /// The token's claims.
    pub claims: Map<String, Value>,
    /// The effect the case expects.
    pub expect: Effect,
    /// The rule that must decide, when given (may be `default-deny`).
    pub rule: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_set_and_decision_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<PolicySet>();
        shareable::<Arc<PolicySet>>();
        shareable::<Decision>();
    }

    #[test]
    fn effect_and_reason_print_as_the_audit_record_spells_them() {
        assert_eq!(Effect::Allow.as_str(), "allow");
        assert_eq!(Effect::Deny.to_string(), "deny");
        assert_eq!(DenyReason::PolicyDeny.as_str(), "policy_deny");
        assert_eq!(DenyReason::InsufficientScope.to_string(), "insufficient_scope");
        assert_eq!(serde_json::to_value(DenyReason::PolicyDeny).ok(), Some(json!("policy_deny")));
        assert_eq!(serde_json::to_value(Effect::Deny).ok(), Some(json!("deny")));
        assert_eq!(serde_json::to_value(RuleId::from("r")).ok(), Some(json!("r")));
    }
}
