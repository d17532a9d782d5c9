//! The brain's HTTP client for a remote vault proxy's admin API (remote
//! mode, DESIGN.md "Contract: vault proxy"): over `https://` it trusts
//! exactly the pinned certificate (SHA-256 of the proxy's admin
//! certificate: `pin_sha256`, or `pin_cert`), presents a client certificate
//! when configured, and never sends the admin token or fetches the CA in
//! clear across a network (plain `http://` only to a loopback address).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::RemoteVaultConfig;

/// Accepts only the certificate whose SHA-256 is the pin (signatures still verified).
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        let diff = d
            .as_ref()
            .iter()
            .zip(self.pin.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parses a SHA-256 fingerprint: 64 hex digits, `:` separators allowed.
pub fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = s
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or("pin_sha256 is not hex")?;
    if digits.len() != 64 {
        return Err("pin_sha256 must be 32 bytes (64 hex digits)".into());
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *o = pair[0] << 4 | pair[1];
    }
    Ok(out)
}

fn pin_of(config: &RemoteVaultConfig) -> Result<Option<[u8; 32]>, String> {
    match (&config.pin_sha256, &config.pin_cert) {
        (Some(_), Some(_)) => Err("vault.remote: set pin_sha256 or pin_cert, not both".into()),
        (Some(p), None) => parse_pin(p).map(Some),
        (None, Some(path)) => {
            let cert = CertificateDer::from_pem_file(path)
                .map_err(|e| format!("vault.remote.pin_cert {}: {e}", path.display()))?;
            let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            Ok(Some(out))
        }
        (None, None) => Ok(None),
    }
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The admin API client for `config`. Errors (fail closed): `https://`
/// without a pin, a pin or client certificate that cannot be read, plain
/// `http://` to anything but loopback.
pub fn admin_client(config: &RemoteVaultConfig) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15));
    let pin = pin_of(config)?;
    if config.admin_url.starts_with("https://") {
        let pin = pin.ok_or(
            "vault.remote: an https admin_url needs pin_sha256 or pin_cert (the proxy's certificate)",
        )?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinVerifier {
            pin,
            provider: provider.clone(),
        });
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("vault.remote tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut tls = match &config.client_cert {
            None => tls.with_no_client_auth(),
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("vault.remote.client_cert {}: {e}", path.display()))?;
                let key = PrivateKeyDer::from_pem_file(path).map_err(|e| {
                    format!("vault.remote.client_cert {} (key): {e}", path.display())
                })?;
                tls.with_client_auth_cert(certs, key)
                    .map_err(|e| format!("vault.remote.client_cert: {e}"))?
            }
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        return builder
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| format!("vault.remote: http client: {e}"));
    }
    if !is_loopback_url(&config.admin_url) {
        return Err(format!(
            "vault.remote: admin_url {} is plain http to a non-loopback host: the admin token and \
             the CA would cross the network in clear; serve the admin API over TLS (`tls:` in \
             vault.yaml) and use https with pin_sha256/pin_cert",
            config.admin_url
        ));
    }
    if pin.is_some() || config.client_cert.is_some() {
        return Err("vault.remote: pin/client_cert need an https admin_url".into());
    }
    builder
        .build()
        .map_err(|e| format!("vault.remote: http client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_loopback() {
        assert!(parse_pin(&"ab:".repeat(31).to_string().replace(' ', "")).is_err());
        let hexpin = "AB".repeat(32);
        assert_eq!(parse_pin(&hexpin).unwrap(), [0xab; 32]);
        assert!(is_loopback_url("http://127.0.0.1:8898"));
        assert!(is_loopback_url("http://[::1]:8898/"));
        assert!(is_loopback_url("http://localhost"));
        assert!(!is_loopback_url("http://10.0.0.5:8898"));
        assert!(!is_loopback_url("http://vault.example.com:8898"));
    }
}
