//! Remote mode (`tls: {cert, key, client_ca?}`): server TLS for the admin
//! API (client certificates required when `client_ca` is set) and for the
//! `listen_tls` proxy listener, so neither the admin token nor a sandbox's
//! `Proxy-Authorization` crosses a network in clear. Ring provider only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why the TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be turned into a verifier.
    #[error("client_ca: {0}")]
    ClientCa(String),
}

fn pem_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate in file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptors of remote mode: `(admin, proxy)`. The admin one asks for
/// client certificates when `client_ca` is set; the proxy one never does
/// (sandboxes authenticate with `Proxy-Authorization` inside).
pub fn acceptors(cfg: &TlsConfig) -> Result<(TlsAcceptor, TlsAcceptor), TlsError> {
    let chain = certs(&cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| pem_err(&cfg.key, e))?;
    let builder = || {
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
    };
    let admin_builder = match &cfg.client_ca {
        None => builder()?.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| pem_err(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder()?.with_client_cert_verifier(verifier)
        }
    };
    let mut admin = admin_builder.with_single_cert(chain.clone(), key.clone_key())?;
    admin.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut proxy = builder()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    proxy.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        TlsAcceptor::from(Arc::new(admin)),
        TlsAcceptor::from(Arc::new(proxy)),
    ))
}
