//! TLS on TCP listeners (rustls, `ring` provider): a listener's `tls`
//! table, the acceptor it builds, reload on SIGHUP, and the client
//! certificate's name for mutual TLS.
//!
//! The certificate chain, key and client CA bundle are PEM files. A reload
//! reads them again and swaps the acceptor's configuration: handshakes that
//! start afterwards use the new certificate, connections already open keep
//! the session they have. A reload that fails (a missing or bad file) keeps
//! the old configuration and logs the error.
//!
//! Identity (mutual TLS, `client_auth = "optional" | "required"`): the
//! verified client certificate's subject common name (CN); when the subject
//! has no CN, its first subjectAltName of type DNS or email (rfc822Name), in
//! certificate order. A certificate with neither gives no identity.

use serde::Deserialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_core::spi::Stream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Whether a TLS listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; a client without one is let in (with no
    /// identity), one with a certificate that does not verify is refused.
    Optional,
    /// A client without a certificate signed by `client_ca` is refused.
    Required,
}

/// `[listeners.NAME] tls = { ... }`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates client certificates must chain to;
    /// needed when `client_auth` is not `none`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// NATS only (TLS after INFO): also serve clients that do not start TLS
    /// (INFO says `tls_available` instead of `tls_required`).
    #[serde(default)]
    pub allow_non_tls: bool,
}

/// Builds the rustls configuration from the files a `tls` table names.
pub fn load(section: &TlsSection, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(&section.cert)?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            section.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&section.key)
        .map_err(|e| format!("{}: no usable private key ({e})", section.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (section.client_auth, &section.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => return Err("client_auth needs client_ca".to_owned()),
        (auth, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no CA certificate in the file", ca.display()));
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", section.cert.display()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A listener's TLS acceptor; [`Tls::reload`] swaps its configuration.
#[derive(Debug)]
pub struct Tls {
    pub(crate) listener: String,
    section: TlsSection,
    alpn: &'static [&'static [u8]],
    current: parking_lot::RwLock<Arc<rustls::ServerConfig>>,
    /// The protocol starts TLS after its greeting (see `registry::Protocol`).
    pub(crate) after_greeting: bool,
    /// `[limits] handshake_timeout`.
    pub(crate) timeout: Duration,
}

/// A finished server-side handshake.
pub(crate) struct Accepted {
    pub(crate) stream: tokio_rustls::server::TlsStream<Box<dyn Stream>>,
    pub(crate) identity: Option<String>,
}

impl Tls {
    pub fn new(
        listener: &str,
        section: &TlsSection,
        alpn: &'static [&'static [u8]],
    ) -> Result<Tls, String> {
        let config = load(section, alpn)?;
        Ok(Tls {
            listener: listener.to_owned(),
            section: section.clone(),
            alpn,
            current: parking_lot::RwLock::new(config),
            after_greeting: false,
            timeout: Duration::from_secs(10),
        })
    }

    pub fn section(&self) -> &TlsSection {
        &self.section
    }

    /// Reads the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), String> {
        let config = load(&self.section, self.alpn)?;
        *self.current.write() = config;
        Ok(())
    }

    /// Runs the server side of a handshake on `stream`, bounded by `timeout`.
    pub(crate) async fn accept(
        &self,
        stream: Box<dyn Stream>,
        timeout: Duration,
    ) -> io::Result<Accepted> {
        let config = self.current.read().clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ));
            }
        };
        let identity = if self.section.client_auth == ClientAuth::None {
            None
        } else {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity(c.as_ref()))
        };
        Ok(Accepted { stream, identity })
    }
}

/// The name a client certificate stands for: the subject CN, else the first
/// DNS or email subjectAltName (see the module docs).
pub fn identity(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::RFC822Name(s) if !s.is_empty() => {
            Some((*s).to_owned())
        }
        _ => None,
    })
}
