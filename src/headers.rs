//! Names of the headers gatehouse itself sets, shared by the stages that set
//! them (forward), answer with them (error, proxy) and test them.

use http::header::HeaderName;

/// The request id: the same value in the answer, the error body, the
/// upstream request and the audit record.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The verified caller's `sub`, for the upstream.
pub const X_GATEHOUSE_SUB: HeaderName = HeaderName::from_static("x-gatehouse-sub");
/// The verified caller's `iss`, for the upstream.
pub const X_GATEHOUSE_ISS: HeaderName = HeaderName::from_static("x-gatehouse-iss");
