//! The encrypted secret store (config key `secrets_store`, default
//! `secrets.enc` next to the config file).
//!
//! File format (JSON, one document):
//!
//! ```json
//! {"version":1,"entries":[
//!   {"name":"GITHUB_TOKEN","allowed_hosts":["api.github.com"],
//!    "nonce":"<base64, 12 bytes>","ciphertext":"<base64, value + 16-byte GCM tag>"}]}
//! ```
//!
//! - Cipher: AES-256-GCM (`ring::aead`) under the 32-byte key from env
//!   `AIRLOCK_VAULT_KEY` (64 hex digits, or base64), e.g. `openssl rand -hex 32`.
//! - Nonce: fresh 96-bit random nonce from the system RNG on every write of an entry.
//! - AAD: `airlock-vault-store-v1\n<name>\n<allowed_hosts joined by ",">`, so a
//!   ciphertext moved to another name, or an entry whose bindings were edited
//!   (e.g. to point a secret at an attacker's host), fails to decrypt. (This
//!   binds more than the name alone would: the bindings are policy and sit
//!   in the clear.)
//! - Writes are atomic (temporary file in the same directory, fsync, rename,
//!   fsync of the directory) and the file is created with mode 0600.
//!   Concurrent writers are not coordinated: run one `secrets put/rm` at a time.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{SecretError, SecretValue, validate_value};
use crate::config::{HostPattern, is_credential_name};

/// Environment variable holding the store key.
pub const VAULT_KEY_ENV: &str = "AIRLOCK_VAULT_KEY";

const STORE_VERSION: u32 = 1;
const AAD_PREFIX: &str = "airlock-vault-store-v1";

// === StoreKey ===

/// The 32-byte store key. Zeroized on drop, never printed.
pub struct StoreKey(pub(super) Zeroizing<[u8; 32]>);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey([REDACTED])")
    }
}

impl StoreKey {
    /// Parses a key written as 64 hex digits or as base64 (standard or
    /// URL-safe, padded or not) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<StoreKey, SecretError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(SecretError::StoreKey(format!("{VAULT_KEY_ENV} is empty")));
        }
        let decoded: Zeroizing<Vec<u8>> = if t.len() == 64
            && t.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Zeroizing::new(hex::decode(t).map_err(|_| SecretError::StoreKey("invalid hex".into()))?)
        } else {
            let mut found = None;
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                if let Ok(v) = engine.decode(t) {
                    found = Some(Zeroizing::new(v));
                    break;
                }
            }
            found.ok_or_else(|| {
                SecretError::StoreKey(format!(
                    "{VAULT_KEY_ENV} is neither 64 hex digits nor base64 \
                     (generate one with `openssl rand -hex 32`)"
                ))
            })?
        };
        if decoded.len() != 32 {
            return Err(SecretError::StoreKey(format!(
                "{VAULT_KEY_ENV} must decode to 32 bytes, not {} \
                 (generate one with `openssl rand -hex 32`)",
                decoded.len()
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&decoded);
        Ok(StoreKey(key))
    }

    /// Reads the key from `AIRLOCK_VAULT_KEY`.
    pub fn from_env() -> Result<StoreKey, SecretError> {
        Self::from_lookup(&|n| std::env::var_os(n))
    }

    pub(crate) fn from_lookup(
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<StoreKey, SecretError> {
        let raw = env(VAULT_KEY_ENV).ok_or_else(|| {
            SecretError::StoreKey(format!(
                "{VAULT_KEY_ENV} is not set; it holds the 32-byte key of the encrypted \
                 secret store (generate one with `openssl rand -hex 32`)"
            ))
        })?;
        let text = Zeroizing::new(
            raw.into_string()
                .map_err(|_| SecretError::StoreKey(format!("{VAULT_KEY_ENV} is not UTF-8")))?,
        );
        StoreKey::parse(&text)
    }

    fn aead(&self) -> Result<LessSafeKey, SecretError> {
        let unbound = UnboundKey::new(&AES_256_GCM, &self.0[..])
            .map_err(|_| SecretError::Crypto("AES-256-GCM key setup"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

// === file format ===

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    entries: Vec<StoreEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreEntry {
    name: String,
    allowed_hosts: Vec<String>,
    nonce: String,
    ciphertext: String,
}

fn aad_for(name: &str, hosts: &[String]) -> Vec<u8> {
    format!("{AAD_PREFIX}\n{name}\n{}", hosts.join(",")).into_bytes()
}

/// Name and bindings of one stored secret (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntryInfo {
    /// Entry name.
    pub name: String,
    /// Hosts it is bound to.
    pub allowed_hosts: Vec<HostPattern>,
}

// === SecretStore ===

/// The encrypted store at one path, with its key.
#[derive(Debug)]
pub struct SecretStore {
    path: PathBuf,
    key: StoreKey,
}

impl SecretStore {
    /// A store at `path` (the file need not exist yet).
    pub fn new(path: impl Into<PathBuf>, key: StoreKey) -> SecretStore {
        SecretStore {
            path: path.into(),
            key,
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names and bindings of all entries; needs no key.
    pub fn list_entries(path: &Path) -> Result<Vec<StoredEntryInfo>, SecretError> {
        read_file(path)?
            .entries
            .iter()
            .map(|e| {
                Ok(StoredEntryInfo {
                    name: e.name.clone(),
                    allowed_hosts: parse_hosts(path, e)?,
                })
            })
            .collect()
    }

    /// Decrypts one entry: its value and its bindings.
    pub fn get(&self, name: &str) -> Result<(SecretValue, Vec<HostPattern>), SecretError> {
        let file = read_file(&self.path)?;
        let entry = file
            .entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| SecretError::NotFound {
                name: name.to_string(),
            })?;
        let hosts = parse_hosts(&self.path, entry)?;
        let format_err = |reason: &str| SecretError::StoreFormat {
            path: self.path.clone(),
            reason: format!("entry `{name}`: {reason}"),
        };
        let nonce_bytes = STANDARD
            .decode(&entry.nonce)
            .map_err(|_| format_err("nonce is not base64"))?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce_bytes)
            .map_err(|_| format_err("nonce is not 12 bytes"))?;
        let mut buf = Zeroizing::new(
            STANDARD
                .decode(&entry.ciphertext)
                .map_err(|_| format_err("ciphertext is not base64"))?,
        );
        let aad = aad_for(&entry.name, &entry.allowed_hosts);
        let plain_len = self
            .key
            .aead()?
            .open_in_place(nonce, Aad::from(&aad[..]), &mut buf[..])
            .map_err(|_| SecretError::Decrypt {
                name: name.to_string(),
            })?
            .len();
        buf.truncate(plain_len);
        let bytes = std::mem::take(&mut *buf);
        let value = match String::from_utf8(bytes) {
            Ok(s) => SecretValue::new(s),
            Err(e) => {
                let mut b = e.into_bytes();
                b.zeroize();
                return Err(SecretError::InvalidValue {
                    credential: name.to_string(),
                    reason: "the stored value is not valid UTF-8",
                });
            }
        };
        Ok((value, hosts))
    }

    /// Adds or replaces an entry (fresh nonce every time) and rewrites the
    /// file atomically with mode 0600.
    pub fn put(
        &self,
        name: &str,
        value: &SecretValue,
        allowed_hosts: &[HostPattern],
    ) -> Result<(), SecretError> {
        if !is_credential_name(name) {
            return Err(SecretError::InvalidName(name.to_string()));
        }
        validate_value(name, value.expose())?;
        if allowed_hosts.is_empty() {
            return Err(SecretError::NoAllowedHosts {
                credential: name.to_string(),
            });
        }
        let hosts: Vec<String> = allowed_hosts
            .iter()
            .map(|h| h.as_str().to_string())
            .collect();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Crypto("system random source"))?;
        let mut buf = Zeroizing::new(value.expose().as_bytes().to_vec());
        let aad = aad_for(name, &hosts);
        self.key
            .aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut *buf,
            )
            .map_err(|_| SecretError::Crypto("AES-256-GCM seal"))?;
        let entry = StoreEntry {
            name: name.to_string(),
            allowed_hosts: hosts,
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(&buf[..]),
        };
        let mut file = read_file(&self.path)?;
        match file.entries.iter_mut().find(|e| e.name == name) {
            Some(e) => *e = entry,
            None => file.entries.push(entry),
        }
        file.entries.sort_by(|a, b| a.name.cmp(&b.name));
        self.write(&file)
    }

    /// Removes an entry; `NotFound` if there is none.
    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        let mut file = read_file(&self.path)?;
        let before = file.entries.len();
        file.entries.retain(|e| e.name != name);
        if file.entries.len() == before {
            return Err(SecretError::NotFound {
                name: name.to_string(),
            });
        }
        self.write(&file)
    }

    fn write(&self, file: &StoreFile) -> Result<(), SecretError> {
        let mut text = serde_json::to_vec_pretty(file).map_err(|e| SecretError::StoreFormat {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        write_atomic(&self.path, &text).map_err(|source| SecretError::StoreIo {
            path: self.path.clone(),
            source,
        })
    }
}

fn parse_hosts(path: &Path, e: &StoreEntry) -> Result<Vec<HostPattern>, SecretError> {
    e.allowed_hosts
        .iter()
        .map(|h| {
            HostPattern::parse(h).map_err(|err| SecretError::StoreFormat {
                path: path.to_path_buf(),
                reason: format!("entry `{}`: {err}", e.name),
            })
        })
        .collect()
}

/// Reads the store; a missing file is an empty store.
fn read_file(path: &Path) -> Result<StoreFile, SecretError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StoreFile {
                version: STORE_VERSION,
                entries: Vec::new(),
            });
        }
        Err(source) => {
            return Err(SecretError::StoreIo {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "secret store file is accessible to group/others; expected mode 0600"
        );
    }
    let file: StoreFile = serde_json::from_slice(&bytes).map_err(|e| SecretError::StoreFormat {
        path: path.to_path_buf(),
        reason: format!("not a secret store: {e}"),
    })?;
    if file.version != STORE_VERSION {
        return Err(SecretError::StoreFormat {
            path: path.to_path_buf(),
            reason: format!("unsupported version {}", file.version),
        });
    }
    let mut names = std::collections::BTreeSet::new();
    for e in &file.entries {
        if !names.insert(e.name.as_str()) {
            return Err(SecretError::StoreFormat {
                path: path.to_path_buf(),
                reason: format!("duplicate entry `{}`", e.name),
            });
        }
    }
    Ok(file)
}

/// Writes `bytes` to `path` atomically: a 0600 temporary file in the same
/// directory, fsync, rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_string());
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| std::io::Error::other("system random source failed"))?;
    let tmp = dir.join(format!(".{file_name}.tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
