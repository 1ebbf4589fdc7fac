//! Authentication of API requests: `Authorization: Basic` (user and
//! password) or `Authorization: Bearer` (a token), checked by the broker's
//! authenticator on every request (a successful check is cached by the
//! broker, so a client repeating its credentials pays the hashing cost
//! once). No header: the anonymous principal when anonymous access is on.
//!
//! A refusal is `401 Unauthorized` with `WWW-Authenticate: Basic
//! realm="switchyard", Bearer realm="switchyard"` and the JSON error body
//! (`unauthorized`). `/healthz`, `/readyz` and `/metrics` are served by the
//! listener itself and stay open (probes and scrapers carry no credentials).

use crate::error::ApiError;
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine as _;
use std::net::SocketAddr;
use switchyard_core::{Broker, Credentials, Principal};

/// The `WWW-Authenticate` challenge of a 401.
pub const CHALLENGE: &str = "Basic realm=\"switchyard\", Bearer realm=\"switchyard\"";

/// What the request presents.
pub fn credentials(parts: &Parts) -> Result<Credentials, ApiError> {
    let mut c = Credentials {
        protocol: "http",
        peer: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip()),
        ..Default::default()
    };
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(c);
    };
    let bad = || unauthorized("malformed Authorization header");
    let value = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        c.user = Some(user.to_owned());
        c.password = Some(pass.as_bytes().to_vec());
    } else if scheme.eq_ignore_ascii_case("bearer") {
        c.token = Some(rest.to_owned());
    } else {
        return Err(unauthorized(
            "unsupported authentication scheme (use Basic or Bearer)",
        ));
    }
    Ok(c)
}

/// 401 with the challenge.
pub fn unauthorized(detail: impl Into<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
    e.challenge = true;
    e
}

/// Authenticates the request.
pub async fn login(broker: &Broker, parts: &Parts) -> Result<Principal, ApiError> {
    let c = credentials(parts)?;
    broker
        .authenticate(c)
        .await
        .map_err(|e| unauthorized(e.to_string()))
}
