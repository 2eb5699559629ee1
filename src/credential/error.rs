//! Why no upstream token could be had. Each variant names a cause and so
//! whose move it is: an operator's (nothing stored, a refused client), the
//! token endpoint's (unreachable, a bad answer), or gatehouse's own. The
//! text (`Display`) reaches the caller's 503, the audit record and the log:
//! it never holds a secret, an address or a connection error (those are
//! logged where they happen).

use std::fmt;

/// Why one attempt at a token endpoint gave no token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// `refresh_token` without a `[store]`.
    NoStore { upstream: String },
    /// No refresh token is stored: an operator runs `credentials set`.
    NotStored { upstream: String },
    /// The stored refresh token was refused (`invalid_grant`): an operator
    /// stores a new one.
    StoredTokenRejected { upstream: String },
    /// The stored refresh token changed while it was being used; the next
    /// attempt uses the stored one.
    RotationRaced { upstream: String },
    /// The rotated refresh token could not be committed, so the new access
    /// token is not used.
    RotationNotStored { upstream: String, why: String },
    /// The store could not be read.
    Store(String),
    /// Another replica holds the refresh lease and gave no token in time.
    LeaseHeld { upstream: String },
    /// The token endpoint answered an OAuth error (only a registered code is
    /// repeated, never its free text).
    Refused { upstream: String, status: u16, code: &'static str },
    /// The token endpoint gave no usable answer.
    Endpoint { upstream: String, why: EndpointFailure },
    /// Gatehouse itself failed (a task died, a token unusable as a header).
    Internal(String),
}

/// What went wrong talking to a token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointFailure {
    /// No connection or no answer (the cause is logged, not shown).
    Unreachable,
    /// No answer within the request timeout, in seconds.
    Timeout(u64),
    /// An error status without an OAuth error body.
    Status(u16),
    /// A success answer gatehouse cannot use.
    BadAnswer(String),
    /// Our own client authentication could not be made (key, header).
    ClientAuth(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rerun = |f: &mut fmt::Formatter<'_>, u: &str| write!(f, "run `gatehouse credentials set {u} --refresh-token-stdin`");
        match self {
            Self::NoStore { upstream } => write!(f, "upstream {upstream} uses refresh_token but no [store] is configured"),
            Self::NotStored { upstream } => {
                write!(f, "no refresh token stored for upstream {upstream}; ")?;
                rerun(f, upstream)
            }
            Self::StoredTokenRejected { upstream } => {
                write!(f, "stored refresh token for upstream {upstream} was rejected (invalid_grant); ")?;
                rerun(f, upstream)
            }
            Self::RotationRaced { upstream } => write!(
                f,
                "the stored refresh token for upstream {upstream} changed during the refresh; \
                 the new access token is not used and the next attempt uses the stored one"
            ),
            Self::RotationNotStored { upstream, why } => {
                write!(f, "rotated refresh token for upstream {upstream} could not be stored, so the new access token is not used: {why}")
            }
            Self::Store(why) => f.write_str(why),
            Self::LeaseHeld { upstream } => {
                write!(f, "another replica is refreshing the token of upstream {upstream} and has not finished; try again")
            }
            Self::Refused { upstream, status, code } => write!(f, "token endpoint for upstream {upstream} answered {status}: {code}"),
            Self::Endpoint { upstream, why } => write!(f, "upstream {upstream}: {why}"),
            Self::Internal(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("token endpoint unreachable"),
            Self::Timeout(s) => write!(f, "token endpoint did not answer within {s} s"),
            Self::Status(status) => write!(f, "token endpoint answered {status}"),
            Self::BadAnswer(why) | Self::ClientAuth(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for FetchError {}
