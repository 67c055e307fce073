//! TLS of the TCP listener: the files named in `api.tls` are read and checked once, at start,
//! so that a wrong path, a file without a certificate or a key that does not match its
//! certificate stops the agent with a message naming the file, instead of failing each
//! client's handshake later.
//!
//! The TCP listener serves nothing but TLS (see [`crate::config::ApiConfig::validate`]); with a
//! client CA it requires a client certificate signed by it (mutual TLS), and a client without
//! one is refused during the handshake.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ApiConfig, TlsConfig};

/// How long a client gets to complete the TLS handshake: a connection that stalls in it
/// (slow or hostile) must not hold a task forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP listener's address and its loaded TLS settings.
#[derive(Debug, Clone)]
pub struct TcpEndpoint {
    pub addr: SocketAddr,
    pub tls: ServerTls,
}

/// Loaded and checked TLS settings of the TCP listener.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    /// The client CA file when clients must present a certificate.
    client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    /// Reads and checks the files of `config`.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let cert = read(&config.cert_file)?;
        let certificates = count_certificates(&config.cert_file, &cert)?;
        let key = read(&config.key_file)?;
        PrivateKeyDer::from_pem_slice(&key).map_err(|error| TlsError::NoKey {
            path: config.key_file.clone(),
            reason: error.to_string(),
        })?;
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&cert, &key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca_file) = &config.client_ca_file {
            let ca = read(ca_file)?;
            count_certificates(ca_file, &ca)?;
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        // Building the acceptor checks what is left: the key belongs to the leaf certificate,
        // the CA certificates are usable as trust anchors.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|source| TlsError::Unusable {
                cert_file: config.cert_file.clone(),
                key_file: config.key_file.clone(),
                client_ca_file: config.client_ca_file.clone(),
                reason: error_chain(&source),
            })?;
        tracing::debug!(
            cert_file = %config.cert_file.display(),
            certificates,
            "loaded the TLS certificate"
        );
        Ok(Self {
            config: tls,
            client_ca_file: config.client_ca_file.clone(),
        })
    }

    /// Settings for [`tonic::transport::Server::tls_config`].
    pub fn server_config(&self) -> ServerTlsConfig {
        self.config.clone()
    }

    /// The client CA file, when clients must present a certificate (mutual TLS).
    pub fn client_ca_file(&self) -> Option<&Path> {
        self.client_ca_file.as_deref()
    }
}

/// The TCP listener of `api`, with its TLS loaded; `None` when there is none. A TCP address
/// without TLS is refused (the configuration's validation says so first).
pub fn tcp_endpoint(api: &ApiConfig) -> Result<Option<TcpEndpoint>, TlsError> {
    let Some(addr) = api.tcp else {
        if api.tls.is_some() {
            tracing::warn!("api.tls is set but api.tcp is not: the TLS settings are not used");
        }
        return Ok(None);
    };
    let tls = api.tls.as_ref().ok_or(TlsError::Missing { addr })?;
    Ok(Some(TcpEndpoint {
        addr,
        tls: ServerTls::load(tls)?,
    }))
}

/// Why the TLS settings cannot be used. Every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the TCP listener {addr} serves only TLS, and no certificate is configured (api.tls, \
         or --tls-cert and --tls-key)"
    )]
    Missing { addr: SocketAddr },
    #[error("cannot read the TLS file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds an unreadable PEM certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{} holds no usable PEM private key: {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error(
        "the TLS certificate {} with key {}{} cannot be used: {reason}",
        cert_file.display(),
        key_file.display(),
        client_ca_file.as_ref().map(|ca| format!(" and client CA {}", ca.display())).unwrap_or_default()
    )]
    Unusable {
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: Option<PathBuf>,
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Number of PEM certificates in `pem`; at least one, or an error naming `path`.
fn count_certificates(path: &Path, pem: &[u8]) -> Result<usize, TlsError> {
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|error| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(count)
}

/// An error and its causes on one line (tonic's transport errors keep the reason in sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;

/// Test certificates (rcgen), shared with the end-to-end tests.
#[cfg(test)]
#[path = "../../../tests/support/certs.rs"]
pub(crate) mod test_certs;
