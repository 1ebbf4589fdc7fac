//! Authentication of CONNECT credentials: the one place they are checked.
//!
//! Users and ACLs are the security issue's (issue 10); until it lands every
//! client is accepted. It plugs in here, in [`authenticate`], and nowhere
//! else: the driver calls it for every CONNECT with the user name, password,
//! client id and peer address, and answers a refusal with CONNACK 0x04
//! (3.1.1) / 0x86 (5.0) for bad credentials or 0x05 / 0x87 for "not
//! authorized".

use std::net::SocketAddr;
use switchyard_core::Broker;

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: Option<SocketAddr>,
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

/// Checks CONNECT credentials against the broker's users. Accepts every
/// client until users and ACLs exist (issue 10).
pub fn authenticate(_broker: &Broker, _credentials: &Credentials<'_>) -> Result<(), Refusal> {
    Ok(())
}
