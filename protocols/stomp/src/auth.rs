//! Authentication of the `login` / `passcode` headers of CONNECT.
//!
//! The driver hands what CONNECT presented ([`credentials`]) to the
//! broker's authenticator (`Broker::authenticate`, async: password hashing
//! runs off the runtime's workers and failures are answered after a
//! back-off) before the frame reaches the session, and gives the session the
//! answer ([`crate::session::StompSession::set_login`]). A certificate
//! verified by a TLS listener (mutual TLS) logs in by itself. A refusal is an
//! `ERROR` frame (`message:access refused`) and the connection is closed.

use switchyard_core::Broker;

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `login` header as given (`None`: none given).
    pub login: Option<String>,
    /// Who the broker authenticated (the ACL applies to this one).
    pub user: switchyard_core::Principal,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// The authenticator's answer for one CONNECT.
pub type Login = Result<switchyard_core::Principal, switchyard_core::AuthError>;

/// What a CONNECT frame presents.
pub fn credentials(
    login: Option<&str>,
    passcode: Option<&str>,
    peer: Option<std::net::IpAddr>,
    tls_identity: Option<&str>,
) -> switchyard_core::Credentials {
    switchyard_core::Credentials {
        protocol: "stomp",
        user: login.map(str::to_owned),
        password: passcode.map(|p| p.as_bytes().to_vec()),
        token: None,
        tls_identity: tls_identity.map(str::to_owned),
        peer,
    }
}

/// Turns the authenticator's answer into a [`Principal`]. Without an answer
/// (a session driven directly, in tests) the client is let in only when
/// anonymous access is on.
pub fn authenticate(
    broker: &Broker,
    login: Option<&str>,
    answer: Option<Login>,
) -> Result<Principal, AuthError> {
    let answer = answer.unwrap_or_else(|| {
        if broker.anonymous_allowed() {
            Ok(switchyard_core::Principal::anonymous())
        } else {
            Err(switchyard_core::AuthError::Required)
        }
    });
    match answer {
        Ok(user) => Ok(Principal {
            login: login.map(str::to_owned),
            user,
        }),
        Err(e) => Err(AuthError(e.to_string())),
    }
}
