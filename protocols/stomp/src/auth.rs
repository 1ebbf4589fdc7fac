//! Authentication of the `login` / `passcode` headers of CONNECT.
//!
//! Users and ACLs are issue 10. Until it lands, [`authenticate`] accepts
//! every login (and none); it is the one place issue 10 plugs into, and the
//! [`Principal`] it returns is kept by the session for authorisation checks.

use switchyard_core::Broker;

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `login` header as given (`None`: anonymous).
    pub login: Option<String>,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Checks a CONNECT frame's credentials against the broker's users.
///
/// Accepts everything until users and ACLs exist (issue 10).
pub fn authenticate(
    broker: &Broker,
    login: Option<&str>,
    passcode: Option<&str>,
) -> Result<Principal, AuthError> {
    let _ = (broker, passcode);
    Ok(Principal {
        login: login.map(str::to_owned),
    })
}
