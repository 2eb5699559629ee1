//! Every stage's error becomes one answer here, in one exhaustive match:
//! status, `WWW-Authenticate`, JSON body and audit reason. Who caused the
//! failure picks the class: caller → 4xx, upstream → 502/504, gatehouse
//! itself → 500. Answers never show internal addresses or connection errors:
//! those go to the log, under the request id the answer carries.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::authn::AuthnError;
use crate::authz::{Decision, DenyReason};
use crate::body::{BodyFailure, ProxyBody};
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
    /// The caller's own request body failed while it was forwarded.
    CallerBody(BodyFailure),
    /// A failure that is nobody's fault outside gatehouse (500).
    Internal(String),
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
    /// The audit reason code (docs/audit.md).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_path",
            Self::NoRoute(_) => "no_route",
            Self::Unauthenticated(e) => e.reason(),
            Self::Forbidden(d) => d.reason.map_or("insufficient_scope", DenyReason::as_str),
            Self::Credential(_) => "credential_unavailable",
            Self::Forward(e) => e.reason(),
            Self::AuditUnavailable => "audit_unavailable",
            Self::CallerBody(BodyFailure::Closed) => "client_closed",
            Self::CallerBody(BodyFailure::Malformed | BodyFailure::TimedOut) => "bad_request",
            Self::Internal(_) => "internal_error",
        }
    }

    /// Logs what the answer does not show: the cause of a failure on the
    /// upstream's or gatehouse's side (caller errors are logged where they
    /// are found).
    pub fn log(&self, request_id: &str) {
        match self {
            Self::Credential(e) => tracing::warn!(request_id, error = %e, "no upstream credential"),
            Self::Forward(e) => tracing::warn!(request_id, error = %e, "upstream failed"),
            Self::Internal(e) => tracing::error!(request_id, error = %e, "internal error"),
            Self::BadRequest(_)
            | Self::NoRoute(_)
            | Self::Unauthenticated(_)
            | Self::Forbidden(_)
            | Self::AuditUnavailable
            | Self::CallerBody(_) => {}
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
            // Credential messages name a cause and what an operator does about
            // it, never an address or a connection error (those are logged).
            Self::Credential(e) => plain(StatusCode::SERVICE_UNAVAILABLE, "credential_unavailable", e.to_string()),
            Self::Forward(ForwardError::Unreachable(_)) => plain(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the upstream could not be reached; the gatehouse log has the cause under this request id".into(),
            ),
            Self::Forward(e @ ForwardError::Timeout) => plain(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", e.to_string()),
            Self::Forward(e @ ForwardError::CredentialRejected) => {
                plain(StatusCode::BAD_GATEWAY, "upstream_credential_rejected", e.to_string())
            }
            Self::CallerBody(BodyFailure::Closed) => {
                plain(StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "client_closed", "the caller went away".into())
            }
            Self::CallerBody(BodyFailure::Malformed) => {
                plain(StatusCode::BAD_REQUEST, "invalid_request", "the request body is malformed".into())
            }
            Self::CallerBody(BodyFailure::TimedOut) => {
                plain(StatusCode::REQUEST_TIMEOUT, "request_timeout", "no part of the request body arrived in time".into())
            }
            Self::Internal(_) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "gatehouse failed internally; the gatehouse log has the cause under this request id".into(),
            ),
            Self::AuditUnavailable => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit log cannot be written; requests are refused until it can".into(),
            ),
        }
    }

    /// The answer to send, with the request id in the header and the body.
    pub fn to_response(&self, request_id: &str) -> Response<ProxyBody> {
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
            h.insert(crate::headers::X_REQUEST_ID, v);
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
