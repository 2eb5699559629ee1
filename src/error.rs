//! Every stage's error becomes one answer here, in one exhaustive match
//! (SPEC §5): status, `WWW-Authenticate`, JSON body and audit reason. Who
//! caused the failure picks the class: caller → 4xx, upstream → 502/504.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::authn::AuthnError;
use crate::authz::{Decision, DenyReason};
use crate::body::ProxyBody;
use crate::credential::CredentialError;
use crate::forward::ForwardError;
use crate::request::RequestError;
use crate::route::NoRoute;

/// Why the proxy answered itself instead of the upstream.
#[derive(Debug)]
pub enum ProxyError {
    BadRequest(RequestError),
    NoRoute(NoRoute),
    Unauthenticated(AuthnError),
    Forbidden(Decision),
    Credential(CredentialError),
    Forward(ForwardError),
    /// The audit log cannot be written: nothing is served unaudited.
    AuditUnavailable,
}

/// The parts of an answer, before it is rendered.
struct Answer {
    status: StatusCode,
    error: &'static str,
    description: String,
    www_authenticate: Option<String>,
}

const REALM: &str = "Bearer realm=\"gatehouse\"";

impl ProxyError {
    /// The audit reason code (SPEC §7).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_path",
            Self::NoRoute(_) => "no_route",
            Self::Unauthenticated(e) => e.reason(),
            Self::Forbidden(d) => d.reason.map_or("insufficient_scope", DenyReason::as_str),
            Self::Credential(_) => "credential_unavailable",
            Self::Forward(e) => e.reason(),
            Self::AuditUnavailable => "audit_unavailable",
        }
    }

    fn answer(&self) -> Answer {
        let plain = |status, error, description: String| Answer { status, error, description, www_authenticate: None };
        match self {
            Self::BadRequest(e) => plain(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
            Self::NoRoute(e) => plain(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            Self::Unauthenticated(AuthnError::MissingToken) => Answer {
                status: StatusCode::UNAUTHORIZED,
                error: "missing_token",
                description: AuthnError::MissingToken.to_string(),
                www_authenticate: Some(REALM.to_owned()),
            },
            Self::Unauthenticated(AuthnError::DuplicateAuthorization) => Answer {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: AuthnError::DuplicateAuthorization.to_string(),
                www_authenticate: Some(format!("{REALM}, error=\"invalid_request\"")),
            },
            Self::Unauthenticated(
                e @ (AuthnError::Malformed(_)
                | AuthnError::Expired
                | AuthnError::NotYetValid
                | AuthnError::BadSignature
                | AuthnError::UnknownKey
                | AuthnError::BadIssuer
                | AuthnError::BadAudience
                | AuthnError::BadAlgorithm(_)),
            ) => {
                let description = e.to_string();
                Answer {
                    status: StatusCode::UNAUTHORIZED,
                    error: "invalid_token",
                    www_authenticate: Some(format!(
                        "{REALM}, error=\"invalid_token\", error_description=\"{}\"",
                        quoted_safe(&description)
                    )),
                    description,
                }
            }
            Self::Forbidden(d) => Answer {
                status: StatusCode::FORBIDDEN,
                error: "insufficient_scope",
                description: format!("denied by policy rule {}", d.rule),
                www_authenticate: Some(format!("{REALM}, error=\"insufficient_scope\"")),
            },
            Self::Credential(e) => plain(StatusCode::SERVICE_UNAVAILABLE, "credential_unavailable", e.to_string()),
            Self::Forward(e @ ForwardError::Unreachable(_)) => plain(StatusCode::BAD_GATEWAY, "upstream_error", e.to_string()),
            Self::Forward(e @ ForwardError::Timeout) => plain(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", e.to_string()),
            Self::Forward(e @ ForwardError::CredentialRejected) => {
                plain(StatusCode::BAD_GATEWAY, "upstream_credential_rejected", e.to_string())
            }
            Self::AuditUnavailable => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit log cannot be written; requests are refused until it can".into(),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.answer().status
    }

    /// The answer to send, with the request id in the header and the body.
    pub fn into_response(&self, request_id: &str) -> Response<ProxyBody> {
        let a = self.answer();
        let body = serde_json::json!({
            "error": a.error,
            "error_description": a.description,
            "request_id": request_id,
        });
        let mut resp = Response::new(crate::body::full(Bytes::from(body.to_string())));
        *resp.status_mut() = a.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(crate::forward::X_REQUEST_ID, v);
        }
        if let Some(w) = a.www_authenticate
            && let Ok(v) = HeaderValue::from_str(&w)
        {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// Makes text safe inside a quoted-string header parameter.
fn quoted_safe(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c)).collect()
}
