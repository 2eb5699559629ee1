//! Reading and compiling policy files: raw serde structs (unknown keys and
//! wrong types are reported by `parse_toml`), then semantic checks that
//! report every problem with its position, then compiled [`Rule`]s.
//!
//! Positions: a reference to a name that does not exist (`route =`, a test's
//! `rule =`) points at the name itself; a bad element of a list points at the
//! element; any other bad value points at its key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::decide::{ClaimCondition, RouteScope, Rule};
use super::glob::PathGlob;
use super::{DEFAULT_DENY, Effect, PolicyTestCase, RuleId};
use crate::diagnostic::{Diagnostic, SourceFile, parse_toml};

/// One policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    test: Vec<RawTest>,
}

/// One `[[rule]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    route: Spanned<String>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    effect: Option<Spanned<String>>,
    #[serde(default)]
    scopes_all: Vec<Spanned<String>>,
    #[serde(default)]
    scopes_any: Vec<Spanned<String>>,
    #[serde(default)]
    issuers: Vec<Spanned<String>>,
    #[serde(default)]
    claims: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>,
}

/// One `[[test]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: Spanned<String>,
    method: Spanned<String>,
    path: String,
    host: Option<String>,
    #[serde(default)]
    claims: toml::Table,
    expect: Spanned<String>,
    rule: Option<Spanned<String>>,
}

/// The result of compiling all files.
#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) rules: Vec<Rule>,
    pub(super) tests: Vec<PolicyTestCase>,
    pub(super) fingerprint: u64,
}

/// Reads every `*.toml` file of `dir` (not recursive, dotfiles skipped),
/// sorted by file name. Unreadable files are reported, all of them.
pub(super) fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    let folder = |message: String| Diagnostic { file: dir.display().to_string(), line: 1, col: 1, message };
    let entries = std::fs::read_dir(dir).map_err(|e| vec![folder(format!("cannot read policy folder: {e}"))])?;
    let mut paths = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(folder(format!("cannot list policy folder: {e}")));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if !name.starts_with('.') && name.ends_with(".toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut sources = Vec::with_capacity(paths.len());
    for path in paths {
        match SourceFile::read(&path) {
            Ok(source) => sources.push(source),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() { Ok(sources) } else { Err(problems) }
}

/// Compiles `sources` in order; every problem of every file, or the rules.
pub(super) fn compile(sources: &[SourceFile], routes: &[&str]) -> Result<Compiled, Vec<Diagnostic>> {
    let mut checker = Checker { routes, ids: HashMap::new(), problems: Vec::new() };
    let mut rules = Vec::new();
    let mut tests = Vec::new();
    // (file index, span of the `rule =` value, rule id): checked once every file is read.
    let mut test_rule_refs = Vec::new();
    for (index, src) in sources.iter().enumerate() {
        let raw: RawFile = match parse_toml(src) {
            Ok(raw) => raw,
            Err(found) => {
                checker.problems.extend(found.into_iter().map(|d| (index, d)));
                continue;
            }
        };
        let mut file = FileChecker { checker: &mut checker, src, index };
        for raw_rule in raw.rule {
            if let Some(rule) = file.rule(raw_rule) {
                rules.push(rule);
            }
        }
        for raw_test in raw.test {
            if let Some(reference) = &raw_test.rule {
                test_rule_refs.push((index, reference.span(), reference.get_ref().clone()));
            }
            if let Some(test) = file.test(raw_test) {
                tests.push(test);
            }
        }
    }
    let known: HashSet<&str> = checker.ids.keys().map(String::as_str).chain([DEFAULT_DENY]).collect();
    for (index, span, id) in test_rule_refs {
        let Some(src) = sources.get(index) else {
            continue;
        };
        if !known.contains(id.as_str()) {
            let message = format!("test names rule {id:?}, which no policy file defines");
            checker.problems.push((index, src.at(span, message)));
        }
    }
    if checker.problems.is_empty() {
        Ok(Compiled { rules, tests, fingerprint: fingerprint(sources) })
    } else {
        let mut problems = checker.problems;
        problems.sort_by_key(|(index, d)| (*index, d.line, d.col));
        Err(problems.into_iter().map(|(_, d)| d).collect())
    }
}

/// State shared across files: known routes, rule ids seen, problems found.
struct Checker<'a> {
    routes: &'a [&'a str],
    /// Rule id → where it was first defined (`FILE:LINE:COL`).
    ids: HashMap<String, String>,
    /// (file index, problem), sorted into reading order at the end.
    problems: Vec<(usize, Diagnostic)>,
}

/// The checks of one file.
struct FileChecker<'a, 'c> {
    checker: &'c mut Checker<'a>,
    src: &'c SourceFile,
    index: usize,
}

impl FileChecker<'_, '_> {
    fn report(&mut self, at: usize, message: String) {
        let d = self.src.at(at..at, message);
        self.checker.problems.push((self.index, d));
    }

    /// Reports at the key of the `key = value` whose value starts at `value`.
    fn report_key(&mut self, value: &Range<usize>, message: String) {
        let at = key_start(&self.src.text, value.start);
        self.report(at, message);
    }

    fn rule(&mut self, raw: RawRule) -> Option<Rule> {
        let before = self.checker.problems.len();
        let id = self.rule_id(&raw.id);
        let route = self.route(&raw.route);
        let effect = match raw.effect.as_ref() {
            None => Some(Effect::Allow),
            Some(effect) => self.effect(effect, "effect"),
        };
        let methods = raw.methods.as_ref().map(|m| self.methods(m));
        let paths = raw.paths.as_ref().map(|p| self.paths(p));
        let scopes_all = self.scopes(&raw.scopes_all, "scopes_all");
        let scopes_any = self.scopes(&raw.scopes_any, "scopes_any");
        let issuers = self.issuers(&raw.issuers);
        let claims = self.claims(&raw.claims);
        if self.checker.problems.len() != before {
            return None;
        }
        Some(Rule { id: id?, route: route?, effect: effect?, methods, paths, issuers, scopes_all, scopes_any, claims })
    }

    fn rule_id(&mut self, id: &Spanned<String>) -> Option<RuleId> {
        let text = id.get_ref().trim();
        if text.is_empty() {
            self.report_key(&id.span(), "rule id must not be empty".to_string());
            return None;
        }
        if text == DEFAULT_DENY {
            self.report_key(&id.span(), format!("rule id {DEFAULT_DENY:?} is reserved for the built-in rule"));
            return None;
        }
        let at = key_start(&self.src.text, id.span().start);
        if let Some(first) = self.checker.ids.get(text) {
            let message = format!("duplicate rule id {text:?}, first defined at {first}");
            self.report(at, message);
            return None;
        }
        let d = self.src.at(at..at, "");
        self.checker.ids.insert(text.to_string(), format!("{}:{}:{}", d.file, d.line, d.col));
        Some(RuleId::from(text))
    }

    fn route(&mut self, route: &Spanned<String>) -> Option<RouteScope> {
        let name = route.get_ref().as_str();
        if name == "*" {
            return Some(RouteScope::Any);
        }
        if self.checker.routes.contains(&name) {
            return Some(RouteScope::Named(name.into()));
        }
        let known = if self.checker.routes.is_empty() {
            "no routes are configured".to_string()
        } else {
            format!("routes are: {}, or \"*\"", self.checker.routes.join(", "))
        };
        // docs/commands.md: an unknown route name is reported at its `route =` value.
        self.report(route.span().start, format!("unknown route {name:?} ({known})"));
        None
    }

    fn effect(&mut self, effect: &Spanned<String>, key: &str) -> Option<Effect> {
        match effect.get_ref().as_str() {
            "allow" => Some(Effect::Allow),
            "deny" => Some(Effect::Deny),
            other => {
                self.report_key(&effect.span(), format!("{key} must be \"allow\" or \"deny\", not {other:?}"));
                None
            }
        }
    }

    fn methods(&mut self, methods: &Spanned<Vec<Spanned<String>>>) -> Vec<Box<str>> {
        if methods.get_ref().is_empty() {
            self.report_key(&methods.span(), "methods = [] matches no request; leave `methods` out to allow every method".to_string());
        }
        let mut out: Vec<Box<str>> = Vec::new();
        for method in methods.get_ref() {
            match self.method(method) {
                Some(m) if !out.contains(&m) => out.push(m),
                _ => {}
            }
        }
        out
    }

    /// An HTTP method token (RFC 9110 §9.1), upper-cased.
    fn method(&mut self, method: &Spanned<String>) -> Option<Box<str>> {
        let upper = method.get_ref().to_ascii_uppercase();
        if upper == "*" {
            self.report(method.span().start, "bad method \"*\": leave `methods` out to match every method".to_string());
            return None;
        }
        if http::Method::from_bytes(upper.as_bytes()).is_err() {
            self.report(method.span().start, format!("bad method {:?}: not an HTTP method token", method.get_ref()));
            return None;
        }
        Some(upper.into_boxed_str())
    }

    fn paths(&mut self, paths: &Spanned<Vec<Spanned<String>>>) -> Vec<PathGlob> {
        if paths.get_ref().is_empty() {
            self.report_key(&paths.span(), "paths = [] matches no request; leave `paths` out to match every path".to_string());
        }
        let mut out = Vec::new();
        for path in paths.get_ref() {
            match PathGlob::parse(path.get_ref()) {
                Ok(glob) => out.push(glob),
                Err(why) => self.report(path.span().start, format!("bad path glob {:?}: {why}", path.get_ref())),
            }
        }
        out
    }

    fn scopes(&mut self, scopes: &[Spanned<String>], key: &str) -> Vec<Box<str>> {
        let mut out: Vec<Box<str>> = Vec::new();
        for scope in scopes {
            let text = scope.get_ref().as_str();
            if text.is_empty() {
                self.report(scope.span().start, format!("empty scope in {key}"));
            } else if text.chars().any(char::is_whitespace) {
                self.report(scope.span().start, format!("scope {text:?} in {key} contains whitespace; list each scope separately"));
            } else if !out.iter().any(|s| &**s == text) {
                out.push(text.into());
            }
        }
        out
    }

    fn issuers(&mut self, issuers: &[Spanned<String>]) -> Vec<Box<str>> {
        let mut out = Vec::new();
        for issuer in issuers {
            if issuer.get_ref().is_empty() {
                self.report(issuer.span().start, "empty issuer in issuers".to_string());
            } else {
                out.push(issuer.get_ref().as_str().into());
            }
        }
        out
    }

    fn claims(&mut self, claims: &BTreeMap<Spanned<String>, Spanned<Vec<Spanned<String>>>>) -> Vec<ClaimCondition> {
        let mut out = Vec::new();
        for (name, values) in claims {
            if name.get_ref().is_empty() {
                self.report(name.span().start, "empty claim name in [rule.claims]".to_string());
                continue;
            }
            if values.get_ref().is_empty() {
                let message = format!("claims.{} = [] can never match; list the accepted values", name.get_ref());
                self.report(name.span().start, message);
                continue;
            }
            out.push(ClaimCondition {
                name: name.get_ref().as_str().into(),
                values: values.get_ref().iter().map(|v| v.get_ref().as_str().into()).collect(),
            });
        }
        out
    }

    fn test(&mut self, raw: RawTest) -> Option<PolicyTestCase> {
        let before = self.checker.problems.len();
        if raw.name.get_ref().trim().is_empty() {
            self.report_key(&raw.name.span(), "test name must not be empty".to_string());
        }
        let method = self.method(&raw.method);
        let expect = self.effect(&raw.expect, "expect");
        if self.checker.problems.len() != before {
            return None;
        }
        Some(PolicyTestCase {
            file: self.src.name.clone(),
            name: raw.name.into_inner(),
            method: method?.into(),
            path: raw.path,
            host: raw.host,
            claims: table_to_json(raw.claims),
            expect: expect?,
            rule: raw.rule.map(Spanned::into_inner),
        })
    }
}

/// Where the key of a `key = value` starts, given where its value starts;
/// the value's own position when it is not the first value after `key =`
/// (an element further down a multi-line array, say).
fn key_start(text: &str, value_start: usize) -> usize {
    let Some(before) = text.get(..value_start) else {
        return value_start;
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let Some(head) = before.get(line_start..).and_then(|h| h.trim_end().strip_suffix('=')) else {
        return value_start;
    };
    let head = head.trim_end();
    let key_from = head.rfind(|c: char| c == '{' || c == ',' || c.is_ascii_whitespace()).map_or(0, |i| i + 1);
    line_start + key_from
}

/// Test-case claims as JSON, as a token would carry them. Datetimes become
/// their RFC 3339 text; a NaN or infinite float becomes null.
fn table_to_json(table: toml::Table) -> Map<String, Value> {
    table.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(table_to_json(t)),
    }
}

/// 64-bit FNV-1a over each file's name and text, NUL-separated.
fn fingerprint(sources: &[SourceFile]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    for src in sources {
        for part in [src.name.as_bytes(), b"\0", src.text.as_bytes(), b"\0"] {
            for byte in part {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::super::PolicySet;
    use crate::diagnostic::{Diagnostic, SourceFile};

    const ROUTES: &[&str] = &["crm", "echo"];

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        let sources: Vec<SourceFile> = files.iter().map(|(n, t)| SourceFile::new(*n, *t)).collect();
        match PolicySet::from_sources(&sources, ROUTES) {
            Ok(_) => panic!("expected load errors"),
            Err(found) => found.iter().map(Diagnostic::to_string).collect(),
        }
    }

    fn assert_problems(files: &[(&str, &str)], want: &[&str]) {
        let got = problems(files);
        assert_eq!(got.len(), want.len(), "got: {got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "want a line starting with {w:?}, got: {got:#?}");
        }
    }

    #[test]
    fn two_mistakes_in_one_file_are_both_reported_with_line_and_column() {
        let text = "[[rule]]\nid = \"a\"\nroute = \"crm\"\nmethods = [\"GET\", \"GE T\"]\n\n[[rule]]\nid = \"b\"\nroute = \"crm\"\neffect = \"permit\"\n";
        assert_problems(
            &[("p.toml", text)],
            &["p.toml:4:19: bad method \"GE T\"", "p.toml:9:1: effect must be \"allow\" or \"deny\", not \"permit\""],
        );
    }

    #[test]
    fn two_unknown_keys_in_one_rule_are_both_reported_at_their_keys() {
        let text = "[[rule]]\nid = \"a\"\nroute = \"crm\"\nscope_all = [\"x\"]\n  method = [\"GET\"]\n";
        assert_problems(&[("p.toml", text)], &["p.toml:4:1: unknown field `scope_all`", "p.toml:5:3: unknown field `method`"]);
    }

    #[test]
    fn unknown_route_points_at_the_route_value() {
        let text = "[[rule]]\nid = \"a\"\nroute   =   \"crmm\"\n";
        assert_problems(&[("p.toml", text)], &["p.toml:3:13: unknown route \"crmm\" (routes are: crm, echo, or \"*\")"]);
    }

    #[test]
    fn duplicate_rule_id_across_two_files_points_at_the_second_id() {
        let a = "[[rule]]\nid = \"same\"\nroute = \"crm\"\n";
        let b = "# another team\n\n[[rule]]\n  id = \"same\"\nroute = \"echo\"\n";
        assert_problems(&[("a.toml", a), ("b.toml", b)], &["b.toml:4:3: duplicate rule id \"same\", first defined at a.toml:2:1"]);
    }

    #[test]
    fn broken_toml_syntax_is_reported_and_other_files_are_still_checked() {
        let broken = "[[rule]]\nid = \"a\nroute = \"crm\"\n";
        let other = "[[rule]]\nid = \"b\"\nroute = \"nope\"\n";
        let got = problems(&[("a.toml", broken), ("b.toml", other)]);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].starts_with("a.toml:2:"), "{got:#?}");
        assert!(got[1].starts_with("b.toml:3:9: unknown route"), "{got:#?}");
    }

    #[test]
    fn every_kind_of_semantic_mistake_is_reported_at_its_position() {
        let text = r#"[[rule]]
id = ""
route = "crm"

[[rule]]
id = "globs"
route = "crm"
paths = ["/ok/**", "/a**"]
methods = []

[[rule]]
id = "scopes"
route = "*"
scopes_all = ["", "a b"]
scopes_any = []
issuers = [""]
[rule.claims]
groups = []

[[rule]]
id = "default-deny"
route = "crm"

[[test]]
name = "t"
method = "GET"
path = "/crm"
expect = "maybe"
rule = "nope"
"#;
        assert_problems(
            &[("p.toml", text)],
            &[
                "p.toml:2:1: rule id must not be empty",
                "p.toml:8:20: bad path glob \"/a**\": \"**\" must be a whole segment",
                "p.toml:9:1: methods = [] matches no request",
                "p.toml:14:15: empty scope in scopes_all",
                "p.toml:14:19: scope \"a b\" in scopes_all contains whitespace",
                "p.toml:16:12: empty issuer in issuers",
                "p.toml:18:1: claims.groups = [] can never match",
                "p.toml:21:1: rule id \"default-deny\" is reserved",
                "p.toml:28:1: expect must be \"allow\" or \"deny\", not \"maybe\"",
                "p.toml:29:8: test names rule \"nope\", which no policy file defines",
            ],
        );
    }

    #[test]
    fn a_test_may_name_a_rule_of_another_file_or_default_deny() {
        let a = "[[test]]\nname = \"x\"\nmethod = \"get\"\npath = \"/crm\"\nexpect = \"deny\"\nrule = \"crm-deny\"\n\n[[test]]\nname = \"y\"\nmethod = \"GET\"\npath = \"/z\"\nexpect = \"deny\"\nrule = \"default-deny\"\n";
        let b = "[[rule]]\nid = \"crm-deny\"\nroute = \"crm\"\neffect = \"deny\"\n";
        let sources = [SourceFile::new("a.toml", a), SourceFile::new("b.toml", b)];
        let set = PolicySet::from_sources(&sources, ROUTES).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.test_cases().len(), 2);
        assert_eq!(set.test_cases()[0].method, "GET", "methods are stored upper-case");
        assert_eq!(set.test_cases()[0].file, "a.toml");
    }

    #[test]
    fn test_case_claims_become_json_claims() {
        let a = "[[test]]\nname = \"x\"\nmethod = \"GET\"\npath = \"/crm\"\nexpect = \"deny\"\nclaims = { iss = \"https://idp\", n = 3, ok = true, groups = [\"a\"] }\n";
        let set = PolicySet::from_sources(&[SourceFile::new("a.toml", a)], ROUTES).unwrap_or_else(|e| panic!("{e:?}"));
        let claims = serde_json::Value::Object(set.test_cases()[0].claims.clone());
        assert_eq!(claims, serde_json::json!({"iss": "https://idp", "n": 3, "ok": true, "groups": ["a"]}));
    }

    #[test]
    fn missing_folder_is_one_diagnostic() {
        let dir = std::env::temp_dir().join(format!("gatehouse-no-such-policies-{}", std::process::id()));
        match PolicySet::load(&dir, ROUTES) {
            Ok(_) => panic!("a missing folder must not load"),
            Err(found) => {
                assert_eq!(found.len(), 1, "{found:?}");
                assert!(found[0].message.starts_with("cannot read policy folder"), "{found:?}");
            }
        }
    }

    #[test]
    fn load_reads_toml_files_in_name_order_and_skips_others() {
        let dir = std::env::temp_dir().join(format!("gatehouse-policies-{}-order", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rule = |id: &str| format!("[[rule]]\nid = \"{id}\"\nroute = \"crm\"\n");
        std::fs::write(dir.join("b.toml"), rule("from-b")).unwrap();
        std::fs::write(dir.join("a.toml"), rule("from-a")).unwrap();
        std::fs::write(dir.join("c.toml.bak"), "not toml").unwrap();
        std::fs::write(dir.join(".hidden.toml"), "not toml").unwrap();
        let set = PolicySet::load(&dir, ROUTES);
        std::fs::remove_dir_all(&dir).unwrap();
        let set = set.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(set.rule_count(), 2);
        let subject = crate::identity::Identity::default();
        let d = set.authorize(&super::super::AccessRequest { route: "crm", method: "GET", path: "/", fold_case: false, subject: &subject });
        assert_eq!(d.rule, "from-a", "a.toml is loaded first");
    }

    #[test]
    fn fingerprint_changes_with_content_and_not_otherwise() {
        let load = |text: &str| PolicySet::from_sources(&[SourceFile::new("a.toml", text)], ROUTES).map(|s| s.fingerprint()).unwrap_or(0);
        let a = "[[rule]]\nid = \"a\"\nroute = \"crm\"\n";
        let b = "[[rule]]\nid = \"b\"\nroute = \"crm\"\n";
        assert_eq!(load(a), load(a));
        assert_ne!(load(a), load(b));
    }
}
