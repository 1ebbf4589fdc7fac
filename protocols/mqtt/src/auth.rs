//! Authentication of CONNECT credentials: the one place they are checked.
//!
//! The user name and password go to the broker's authenticator
//! ([`Broker::authenticate`]); a certificate verified by a TLS listener
//! (mutual TLS) logs in by itself. A refusal is answered with CONNACK 0x04
//! (3.1.1) / 0x86 (5.0) for bad credentials, and 0x05 / 0x87 ("not
//! authorized") when the client presented none and anonymous access is off.

use std::net::SocketAddr;
use switchyard_core::{AuthError, Broker, Principal};

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: Option<SocketAddr>,
    /// The verified client-certificate name (mutual TLS).
    pub tls_identity: Option<&'a str>,
}

/// A refusal, as CONNACK codes of both versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub v3: u8,
    pub v5: u8,
}

/// Bad user name or password.
pub const BAD_CREDENTIALS: Refusal = Refusal { v3: 4, v5: 0x86 };
/// Known, but not allowed to connect.
pub const NOT_AUTHORIZED: Refusal = Refusal { v3: 5, v5: 0x87 };

/// Checks CONNECT credentials against the broker's users.
pub async fn authenticate(
    broker: &Broker,
    credentials: &Credentials<'_>,
) -> Result<Principal, Refusal> {
    broker
        .authenticate(switchyard_core::Credentials {
            protocol: "mqtt",
            user: credentials.username.map(str::to_owned),
            password: credentials.password.map(<[u8]>::to_vec),
            token: None,
            tls_identity: credentials.tls_identity.map(str::to_owned),
            peer: credentials.peer.map(|p| p.ip()),
        })
        .await
        .map_err(|e| match e {
            AuthError::BadCredentials => BAD_CREDENTIALS,
            AuthError::Required => NOT_AUTHORIZED,
        })
}
