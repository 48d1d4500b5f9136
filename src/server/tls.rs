//! TLS for listeners: server certificates, client-certificate auth (mTLS),
//! and reloading on SIGHUP.
//!
//! Any listener can use a [`ReloadableTls`]: each accepted connection takes
//! the configuration current at that moment, so a reload affects only new
//! connections and never drops open ones. A reload that fails (unreadable
//! file, bad PEM, a key that does not match) is reported and the previous
//! configuration stays in use.
//!
//! Protocol versions are TLS 1.2 and 1.3 (rustls' safe defaults, ring
//! provider). rustls never renegotiates, so client renegotiation is refused by
//! construction. With `client_ca`, a client must present a certificate that
//! chains to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use serde::Deserialize;

/// `ingest.tls`: PEM files of the listener's certificate chain and key, and
/// optionally of the CA that client certificates must chain to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS configuration could not be built. Paths are named; the contents
/// of key files never appear.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}: no certificates in it")]
    NoCertificates(String),
    #[error("{path}: unusable CA certificate: {reason}")]
    BadCa { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<_, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates(path.display().to_string()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The PEM error names what is wrong (missing section, bad base64), never
    // the key's bytes.
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Builds a server configuration from the files named in `files`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not make a usable certificate and key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener's TLS configuration, replaceable while it serves.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    pub fn load(files: &TlsFiles) -> Result<ReloadableTls, TlsError> {
        Ok(ReloadableTls {
            current: RwLock::new(server_config(files)?),
            files: files.clone(),
        })
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        // A poisoned lock still holds a complete Arc: take it.
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        TlsAcceptor::from(config)
    }

    /// Reads the files again. On success new connections use them; on
    /// failure nothing changes and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}
