//! The interception CA and per-host leaf certificates.
//!
//! - [`CertificateAuthority::load_or_create`]: loads `ca.cert` / `ca.key`, or
//!   creates both on first start (ECDSA P-256, `CN=Airlock Vault Proxy CA`,
//!   CA:true with path length 0, key usage keyCertSign + cRLSign, valid 10
//!   years, backdated 1 day). The key file is written with mode 0600; an
//!   existing key file readable or writable by *others* is refused, one
//!   accessible to the group is loaded with a warning (Kubernetes secret
//!   volumes: set `defaultMode: 0400`). Only one of the two files present
//!   is an error (never silently replace a CA that sandboxes trust). A
//!   loaded certificate must carry the key's public key and our CA subject:
//!   vault-proxy issues leaves only under a CA it created.
//! - [`LeafCache`]: one leaf per host — DNS SAN for names, IP SAN for IP
//!   literals, a fresh P-256 key per leaf (never the CA key), EKU serverAuth,
//!   valid 7 days, backdated 1 day, reissued after 1 day in the cache —
//!   signed off the async executor (`spawn_blocking`), cached in a bounded
//!   least-recently-used map, and handed out as a ready
//!   `Arc<rustls::ServerConfig>` (ALPN `h2`, `http/1.1` by default) since the
//!   proxy knows the CONNECT host before the handshake. Concurrent misses for
//!   one host issue a single certificate.
//!
//! rustls is used with the ring provider only.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use time::{Duration, OffsetDateTime};

/// Subject common name of the CA.
pub const CA_COMMON_NAME: &str = "Airlock Vault Proxy CA";
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 7;
const BACKDATE_DAYS: i64 = 1;
/// Cached leaves older than this are reissued (long before they expire).
const LEAF_REISSUE_AFTER: StdDuration = StdDuration::from_secs(24 * 3600);

/// Errors from loading, creating or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a CA file failed.
    #[error("CA file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Only one of the certificate and key files exists.
    #[error(
        "CA {present} exists but {missing} does not; refusing to create a new CA over \
         one sandboxes may trust (restore the missing file, or remove both to start over)"
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The key file is accessible to other users.
    #[error("CA key {path} has mode {mode:o}: it must not be accessible to others (chmod 600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA file does not hold what it should.
    #[error("CA file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The host is neither a valid DNS name nor an IP literal.
    #[error("cannot issue a certificate for `{0}`: not a valid host name or IP address")]
    InvalidHost(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// Building the rustls configuration failed.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
}

fn gen_err(e: impl std::fmt::Display) -> CaError {
    CaError::Generate(e.to_string())
}

// === CertificateAuthority ===

/// The proxy's CA: issues leaf certificates for intercepted hosts.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &CA_COMMON_NAME)
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Airlock");
    p.distinguished_name = dn;
    // Path length 0: this CA can sign leaves, never another CA.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| gen_err("system random source failed"))?;
    bytes[0] &= 0x7f; // positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

impl CertificateAuthority {
    /// Loads the CA from `cert_path` (PEM) and `key_path` (PEM, PKCS#8), or
    /// creates both if both are missing. See the module docs for the checks.
    pub fn load_or_create(
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<CertificateAuthority, CaError> {
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => Self::create(cert_path, key_path),
            (true, true) => Self::load(cert_path, key_path),
            (true, false) => Err(CaError::Incomplete {
                present: cert_path.to_path_buf(),
                missing: key_path.to_path_buf(),
            }),
            (false, true) => Err(CaError::Incomplete {
                present: key_path.to_path_buf(),
                missing: cert_path.to_path_buf(),
            }),
        }
    }

    /// A CA that lives only in memory (tests, ephemeral setups).
    pub fn generate() -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        Self::self_sign(key)
    }

    fn self_sign(key: KeyPair) -> Result<CertificateAuthority, CaError> {
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(BACKDATE_DAYS);
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    fn create(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        let ca = Self::self_sign(key)?;
        // Key first: a crash between the two writes leaves `Incomplete`,
        // which is reported, never a CA cert whose key is lost.
        write_new_file(key_path, key_pem.as_bytes(), 0o600)?;
        write_new_file(cert_path, ca.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(cert = %cert_path.display(), "created the vault proxy CA");
        Ok(ca)
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Io { path, source }
        };
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_path_buf(),
            reason,
        };

        let mode = std::fs::metadata(key_path)
            .map_err(io(key_path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o007 != 0 {
            return Err(CaError::KeyPermissions {
                path: key_path.to_path_buf(),
                mode,
            });
        }
        if mode & 0o070 != 0 {
            tracing::warn!(
                key = %key_path.display(),
                mode = format!("{mode:o}"),
                "CA key file is accessible to its group; expected mode 0600"
            );
        }
        let key_pem =
            zeroize::Zeroizing::new(std::fs::read_to_string(key_path).map_err(io(key_path))?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(key_path, format!("not a PEM private key: {e}")))?;

        let cert_pem = std::fs::read_to_string(cert_path).map_err(io(cert_path))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| invalid(cert_path, format!("not a PEM certificate: {e}")))?;
        let (subject, spki) = der::subject_and_spki(&cert_der)
            .ok_or_else(|| invalid(cert_path, "not a parsable X.509 certificate".into()))?;
        if spki != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                cert_path,
                format!("does not match the key in {}", key_path.display()),
            ));
        }
        // Leaves name their issuer with our DN; the loaded CA must carry the
        // same subject bytes or clients could not chain them.
        let reference = ca_params().self_signed(&key).map_err(gen_err)?;
        let (ref_subject, _) = der::subject_and_spki(reference.der())
            .ok_or_else(|| gen_err("cannot parse the reference certificate"))?;
        if subject != ref_subject {
            return Err(invalid(
                cert_path,
                format!(
                    "subject is not `CN={CA_COMMON_NAME}, O=Airlock`: vault-proxy only loads CAs it created"
                ),
            ));
        }
        Ok(CertificateAuthority {
            issuer: Issuer::new(ca_params(), key),
            cert_pem,
            cert_der,
        })
    }

    /// The CA certificate, PEM (what sandboxes add to their trust stores).
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a leaf for `host` (DNS name or IP literal, IPv6 with or
    /// without brackets) with a fresh key. CPU-bound: call it off the async
    /// executor ([`LeafCache`] does).
    pub fn issue_leaf(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let host = normalize_leaf_host(host)?;
        let san = match IpAddr::from_str(&host) {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|_| CaError::InvalidHost(host.clone()))?,
            ),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        // CN is informational (clients use the SAN); X.509 caps it at 64.
        dn.push(
            DnType::CommonName,
            host.chars().take(64).collect::<String>(),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(BACKDATE_DAYS);
        params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
        params.serial_number = Some(random_serial()?);

        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| CaError::Tls(e.to_string()))?;
        Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
    }
}

/// Lower-cases, strips a trailing dot and IPv6 brackets, and validates.
fn normalize_leaf_host(host: &str) -> Result<String, CaError> {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(ip) = IpAddr::from_str(h) {
        return Ok(ip.to_string());
    }
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower).to_string();
    match rustls::pki_types::DnsName::try_from(name.as_str()) {
        Ok(_) if !name.is_empty() && !name.contains('*') => Ok(name),
        _ => Err(CaError::InvalidHost(host.to_string())),
    }
}

/// Creates a file that must not exist yet, with `mode`, via a temporary
/// file and rename so a crash never leaves a half-written file.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        // hard_link fails if `path` appeared meanwhile: never overwrite.
        std::fs::hard_link(&tmp, path)?;
        std::fs::remove_file(&tmp)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// === LeafCache ===

/// Per-host leaf certificates, issued on demand off the executor and cached
/// (bounded, least-recently-used eviction).
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    capacity: usize,
    alpn: Vec<Vec<u8>>,
    provider: Arc<CryptoProvider>,
    slots: Mutex<HashMap<String, Slot>>,
    tick: AtomicU64,
}

struct Slot {
    cell: Arc<tokio::sync::OnceCell<Leaf>>,
    last_used: u64,
}

#[derive(Clone)]
struct Leaf {
    key: Arc<CertifiedKey>,
    config: Arc<rustls::ServerConfig>,
    issued: Instant,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// A cache of at most `capacity` hosts (at least 1), ALPN `h2` + `http/1.1`.
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize) -> LeafCache {
        LeafCache {
            ca,
            capacity: capacity.max(1),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            slots: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
        }
    }

    /// Replaces the ALPN protocols offered to clients (e.g. only `http/1.1`).
    pub fn with_alpn(mut self, alpn: Vec<Vec<u8>>) -> LeafCache {
        self.alpn = alpn;
        self
    }

    /// The CA behind this cache.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Number of cached hosts.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A server config presenting the leaf for `host` (cached).
    pub async fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        Ok(self.leaf(host).await?.config)
    }

    /// The leaf for `host` as a rustls certified key (cached).
    pub async fn certified_key(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        Ok(self.leaf(host).await?.key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // The map stays consistent even if a holder panicked (no invariant
        // spans the lock), so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn leaf(&self, host: &str) -> Result<Leaf, CaError> {
        let key = normalize_leaf_host(host)?;
        let cell = {
            let mut slots = self.lock();
            let now = self.tick.fetch_add(1, Ordering::Relaxed);
            let stale = slots
                .get(&key)
                .and_then(|s| s.cell.get())
                .is_some_and(|l| l.issued.elapsed() >= LEAF_REISSUE_AFTER);
            if stale {
                slots.remove(&key);
            }
            if !slots.contains_key(&key) && slots.len() >= self.capacity {
                let oldest = slots
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    slots.remove(&k);
                }
            }
            let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
                cell: Arc::new(tokio::sync::OnceCell::new()),
                last_used: now,
            });
            slot.last_used = now;
            slot.cell.clone()
        };
        let leaf = cell
            .get_or_try_init(|| async {
                let ca = self.ca.clone();
                let h = key.clone();
                let certified = tokio::task::spawn_blocking(move || ca.issue_leaf(&h))
                    .await
                    .map_err(|e| gen_err(format!("leaf task failed: {e}")))??;
                let certified = Arc::new(certified);
                let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| CaError::Tls(e.to_string()))?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified.clone())));
                config.alpn_protocols = self.alpn.clone();
                Ok::<_, CaError>(Leaf {
                    key: certified,
                    config: Arc::new(config),
                    issued: Instant::now(),
                })
            })
            .await?;
        Ok(leaf.clone())
    }
}

// === minimal DER reading (certificate subject and SPKI) ===

mod der {
    /// (tag, whole element, content, rest of input).
    type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// Splits one TLV off `input`.
    fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = input.len() - rest.len();
        Some((tag, &input[..header + len], &rest[..len], &rest[len..]))
    }

    /// (subject Name, SubjectPublicKeyInfo), each as its full DER element.
    pub(super) fn subject_and_spki(cert: &[u8]) -> Option<(&[u8], &[u8])> {
        let (0x30, _, cert_body, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, _, tbs, _) = tlv(cert_body)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, _, r) = tlv(rest)?;
        if tag == 0xa0 {
            rest = r; // [0] version
        }
        let (_serial, _, _, r) = tlv(rest)?;
        let (_sig_alg, _, _, r) = tlv(r)?;
        let (_issuer, _, _, r) = tlv(r)?;
        let (_validity, _, _, r) = tlv(r)?;
        let (0x30, subject, _, r) = tlv(r)? else {
            return None;
        };
        let (0x30, spki, _, _) = tlv(r)? else {
            return None;
        };
        Some((subject, spki))
    }
}

#[cfg(test)]
mod tests;
