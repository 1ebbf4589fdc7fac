//! SASL authentication of `connection.start-ok`.
//!
//! [`parse`] reads the PLAIN or AMQPLAIN response; the driver hands the
//! user name and password to the broker's authenticator
//! (`Broker::authenticate`, async: hashing runs off the runtime's workers,
//! failures are answered after a back-off) before the frame reaches the
//! connection state machine, which then answers `connection.tune` or closes
//! with 403 ACCESS_REFUSED (RabbitMQ's `authentication_failure_close`). A
//! client certificate verified by a TLS listener logs in by itself.

use crate::codec::Reader;
use bytes::Bytes;

/// The mechanisms offered in `connection.start`, in order of preference.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// Why a `start-ok` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A mechanism not offered (closed with 503 COMMAND_INVALID, as
    /// RabbitMQ does).
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
    /// Bad credentials or a malformed response (closed with 403
    /// ACCESS_REFUSED).
    #[error("{0}")]
    Refused(String),
}

/// Checks a SASL response's form and returns the user name it presents.
pub fn authenticate(mechanism: &str, response: &Bytes) -> Result<String, AuthError> {
    parse(mechanism, response).map(|(user, _)| user)
}

/// The user name and password of a SASL response.
pub fn parse(mechanism: &str, response: &Bytes) -> Result<(String, String), AuthError> {
    match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        other => Err(AuthError::UnknownMechanism(other.to_owned())),
    }
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`.
fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Refused(
            "PLAIN response is not 'authzid NUL user NUL password'".to_owned(),
        ));
    };
    Ok((
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(pass).into_owned(),
    ))
}

/// AMQPLAIN: a field table without its length prefix, with `LOGIN` and
/// `PASSWORD` strings.
fn parse_amqplain(response: &Bytes) -> Result<(String, String), AuthError> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(
        &u32::try_from(response.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(response);
    let table = Reader::new(Bytes::from(framed))
        .table()
        .map_err(|_| AuthError::Refused("AMQPLAIN response is not a field table".to_owned()))?;
    let get = |k: &str| table.get(k).map(|v| v.to_text());
    match (get("LOGIN"), get("PASSWORD")) {
        (Some(u), Some(p)) => Ok((u, p)),
        _ => Err(AuthError::Refused(
            "AMQPLAIN response lacks LOGIN or PASSWORD".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::put_table;
    use bytes::BytesMut;
    use switchyard_model::Headers;

    #[test]
    fn plain_and_amqplain_are_accepted() {
        let r = authenticate("PLAIN", &Bytes::from_static(b"\0guest\0secret")).unwrap();
        assert_eq!(r, "guest");
        let mut t = Headers::new();
        t.push("LOGIN", "alice");
        t.push("PASSWORD", "pw");
        let mut b = BytesMut::new();
        put_table(&mut b, &t);
        let body = Bytes::from(b).slice(4..);
        assert_eq!(authenticate("AMQPLAIN", &body).unwrap(), "alice");
        assert!(matches!(
            authenticate("EXTERNAL", &Bytes::new()),
            Err(AuthError::UnknownMechanism(_))
        ));
        assert!(authenticate("PLAIN", &Bytes::from_static(b"nonul")).is_err());
    }
}
