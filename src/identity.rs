//! The caller's identity: the one type that the proxy, `policy test`,
//! `policy explain` and the audit record share, and the one function that
//! turns a token's claims into it. Authentication builds it from a verified
//! token; the tools build it from the claims they are given, with the same
//! function, so that a decision never depends on which of them asked.

use serde_json::{Map, Value};

/// Which claims carry scopes (`[[issuer]] scope_claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeClaim {
    /// `scope`, a space-separated string.
    Scope,
    /// `scp`, an array of strings (or a space-separated string).
    Scp,
    /// Both (the default).
    Both,
}

/// Who the caller is, from a token's claims.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// `iss` (empty when absent).
    pub iss: String,
    /// `sub` (empty when absent).
    pub sub: String,
    /// The `client_id` claim, else `azp`.
    pub client_id: Option<String>,
    /// Scopes from the claims `scope_claim` names, sorted, without duplicates.
    pub scopes: Vec<String>,
    /// `jti`.
    pub jti: Option<String>,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
}

impl Identity {
    /// The identity these claims describe. `scope` is split on spaces only
    /// (RFC 6749 §3.3: scope tokens are separated by `%x20`; a tab is part of
    /// a scope, which then matches nothing a policy names); `scp` may be an
    /// array of strings or such a string.
    pub fn from_claims(claims: Map<String, Value>, scope_claim: ScopeClaim) -> Identity {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let mut scopes: Vec<String> = Vec::new();
        let mut add = |value: Option<&Value>| match value {
            Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)),
            _ => {}
        };
        if matches!(scope_claim, ScopeClaim::Scope | ScopeClaim::Both)
            && let Some(v @ Value::String(_)) = claims.get("scope")
        {
            add(Some(v));
        }
        if matches!(scope_claim, ScopeClaim::Scp | ScopeClaim::Both) {
            add(claims.get("scp"));
        }
        scopes.sort();
        scopes.dedup();
        Identity {
            iss: text("iss").unwrap_or_default(),
            sub: text("sub").unwrap_or_default(),
            client_id: text("client_id").or_else(|| text("azp")),
            scopes,
            jti: text("jti"),
            claims,
        }
    }

    /// True when the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.binary_search_by(|s| s.as_str().cmp(scope)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: Value, which: ScopeClaim) -> Identity {
        let Value::Object(map) = claims else { panic!("object") };
        Identity::from_claims(map, which)
    }

    #[test]
    fn scopes_come_from_the_claims_the_issuer_names_split_on_spaces_only() {
        let claims = json!({"iss": "i", "sub": "s", "scope": "b a\tc a", "scp": ["x", "a"], "azp": "app"});
        let both = identity(claims.clone(), ScopeClaim::Both);
        assert_eq!(both.scopes, ["a", "a\tc", "b", "x"]);
        assert!(both.has_scope("x") && both.has_scope("a\tc") && !both.has_scope("c"));
        assert_eq!(identity(claims.clone(), ScopeClaim::Scope).scopes, ["a", "a\tc", "b"]);
        assert_eq!(identity(claims, ScopeClaim::Scp).scopes, ["a", "x"]);
        assert_eq!(both.client_id.as_deref(), Some("app"));
        let scp_string = identity(json!({"scp": "p q"}), ScopeClaim::Scp);
        assert_eq!(scp_string.scopes, ["p", "q"]);
        assert_eq!((scp_string.iss.as_str(), scp_string.sub.as_str(), scp_string.jti), ("", "", None));
    }
}
