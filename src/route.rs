//! Routing: (host, normalized path) → [`Route`]; prefix stripping.

use std::sync::Arc;

use crate::config::RouteSettings;
use crate::request::PathAllowances;

/// A configured route, ready to match.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub prefix: String,
    pub strip_prefix: bool,
    pub host: Option<String>,
    /// Path spellings this route lets through (refused by default).
    pub allow: PathAllowances,
    /// Policy globs match this route's paths without regard to ASCII case.
    pub case_insensitive: bool,
    /// Index of the upstream in the gateway's upstream table.
    pub upstream_index: usize,
}

/// No route matched (404, audit reason `no_route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoute;

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no route matches this host and path")
    }
}

impl std::error::Error for NoRoute {}

/// All routes, most specific first: routes with a host before routes
/// without, then longer prefixes before shorter ones.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// `upstream_index` maps an upstream name to its index.
    pub fn new(settings: &[RouteSettings], upstream_index: impl Fn(&str) -> Option<usize>) -> Self {
        let mut routes: Vec<Arc<Route>> = settings
            .iter()
            .filter_map(|s| {
                Some(Arc::new(Route {
                    name: s.name.as_str().into(),
                    prefix: s.path_prefix.clone(),
                    strip_prefix: s.strip_prefix,
                    host: s.host.clone(),
                    allow: s.allow,
                    case_insensitive: s.case_insensitive,
                    upstream_index: upstream_index(&s.upstream)?,
                }))
            })
            .collect();
        routes.sort_by(|a, b| b.host.is_some().cmp(&a.host.is_some()).then(b.prefix.len().cmp(&a.prefix.len())));
        Self { routes }
    }

    /// The most specific route for a lower-cased, port-less host and a normalized path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Result<&Arc<Route>, NoRoute> {
        self.routes.iter().find(|r| r.host.as_deref().is_none_or(|h| Some(h) == host) && prefix_matches(&r.prefix, path)).ok_or(NoRoute)
    }
}

/// `/crm/` matches `/crm/x` and also `/crm` itself; `/crm` matches `/crm`,
/// `/crm/x` but not `/crmx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let bare = prefix.trim_end_matches('/');
    match path.strip_prefix(bare) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Route {
    /// The path to forward: with `strip_prefix`, `/crm/v1/x` under `/crm/` becomes `/v1/x`.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix || self.prefix == "/" {
            return path.into();
        }
        let rest = path.strip_prefix(self.prefix.trim_end_matches('/')).unwrap_or(path);
        if rest.starts_with('/') { rest.into() } else { format!("/{rest}").into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str, prefix: &str, host: Option<&str>, strip: bool) -> RouteSettings {
        RouteSettings {
            name: name.into(),
            path_prefix: prefix.into(),
            upstream: "u".into(),
            strip_prefix: strip,
            host: host.map(str::to_owned),
            allow: PathAllowances::default(),
            case_insensitive: false,
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let r = Router::new(
            &[
                settings("root", "/", None, false),
                settings("crm", "/crm/", None, true),
                settings("crm-v2", "/crm/v2/", None, false),
                settings("crm-internal", "/crm/", Some("api.internal"), false),
            ],
            |_| Some(0),
        );
        let name = |h: Option<&str>, p: &str| r.find(h, p).map(|r| r.name.to_string());
        assert_eq!(name(None, "/crm/v1/x").as_deref(), Ok("crm"));
        assert_eq!(name(None, "/crm").as_deref(), Ok("crm"));
        assert_eq!(name(None, "/crmx").as_deref(), Ok("root"));
        assert_eq!(name(None, "/crm/v2/a").as_deref(), Ok("crm-v2"));
        assert_eq!(name(Some("api.internal"), "/crm/v2/a").as_deref(), Ok("crm-internal"));
    }

    #[test]
    fn no_route_without_catch_all() {
        let r = Router::new(&[settings("crm", "/crm/", None, true)], |_| Some(0));
        assert_eq!(r.find(None, "/other").unwrap_err(), NoRoute);
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let r = Router::new(&[settings("crm", "/crm/", None, true)], |_| Some(0));
        let route = r.find(None, "/crm/v1/x").unwrap();
        assert_eq!(route.upstream_path("/crm/v1/x"), "/v1/x");
        assert_eq!(route.upstream_path("/crm/"), "/");
        assert_eq!(route.upstream_path("/crm"), "/");
    }
}
