//! Signing keys and signed manifests on disk.
//!
//! Keys are Ed25519 in the PEM files openssl and Python's `cryptography` read and write:
//! `NAME.key` holds the private key as PKCS#8 (`-----BEGIN PRIVATE KEY-----`, file mode 0600),
//! `NAME.pub` the public key as SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`). So
//! `openssl genpkey -algorithm ed25519 -out NAME.key` makes a key `ble-ota sign` takes, and
//! `openssl pkey -in NAME.key -pubout -out NAME.pub` its public half. A manifest sits beside
//! its image as `IMAGE.sig` (the image's file name plus `.sig`), 152 bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use ota_core::manifest::{Fingerprint, Hex, PublicKey, SignedManifest, TrustedKeys, fingerprint};

use crate::exit::{CliError, ExitCode};
use crate::input::{MAX_KEY_FILE_LEN, MAX_MANIFEST_LEN, read_input};

/// Returns `path` with `ext` appended to its file name (`app.bin` + `.sig` = `app.bin.sig`).
pub fn with_suffix(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(ext);
    PathBuf::from(name)
}

/// Where the manifest of `image` lives.
pub fn sig_path(image: &Path) -> PathBuf {
    with_suffix(image, ".sig")
}

/// Formats a key's fingerprint.
pub fn fingerprint_hex(fp: &Fingerprint) -> String {
    Hex(fp).to_string()
}

fn usage(m: String) -> anyhow::Error {
    CliError::new(ExitCode::Usage, m).into()
}

/// Makes a key pair from the OS's randomness and writes `NAME.key` (0600) and `NAME.pub`.
/// An existing `NAME.key` is never overwritten: losing a signing key locks its devices out of
/// updates for good.
pub fn generate(name: &Path) -> Result<(PathBuf, PathBuf, Fingerprint)> {
    let (key_path, pub_path) = (with_suffix(name, ".key"), with_suffix(name, ".pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(usage(format!(
                "{} exists; keygen never overwrites a key (devices built with it would take no update signed by a new one): pick another NAME or move it away first",
                p.display()
            )));
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    // PKCS#8 v1 (RFC 8410: the seed alone): OpenSSL 3.0 cannot read the v2 form, which
    // appends the public key.
    let secret_pem = KeypairBytes {
        secret_key: seed,
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| anyhow::anyhow!("encoding the private key: {e}"))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    write_private(&key_path, secret_pem.as_bytes())?;
    std::fs::write(&pub_path, public_pem.as_bytes())
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok((
        key_path,
        pub_path,
        fingerprint(&key.verifying_key().to_bytes()),
    ))
}

/// Creates `path` readable by its owner alone, and fails if it exists.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = read_input(path, MAX_KEY_FILE_LEN)?;
    String::from_utf8(bytes).map_err(|_| {
        usage(format!(
            "{} is not a PEM key file (not text)",
            path.display()
        ))
    })
}

/// Reads a private key (`NAME.key`, PKCS#8 PEM) and returns its 32-byte secret.
pub fn read_secret(path: &Path) -> Result<[u8; 32]> {
    let text = read_text(path)?;
    let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        let hint = if text.contains("PUBLIC KEY") {
            "it is a public key; signing takes the private NAME.key"
        } else {
            "make one with `ble-ota keygen NAME` or `openssl genpkey -algorithm ed25519`"
        };
        usage(format!(
            "{} is not an Ed25519 private key ({e}): {hint}",
            path.display()
        ))
    })?;
    Ok(key.to_bytes())
}

/// Reads a public key (`NAME.pub`, SubjectPublicKeyInfo PEM).
pub fn read_public(path: &Path) -> Result<PublicKey> {
    let text = read_text(path)?;
    let key = VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        let hint = if text.contains("PRIVATE KEY") {
            "it is a private key: give its NAME.pub, and keep NAME.key off devices and out of repositories"
        } else {
            "make one with `ble-ota keygen NAME` or `openssl pkey -in NAME.key -pubout`"
        };
        usage(format!(
            "{} is not an Ed25519 public key ({e}): {hint}",
            path.display()
        ))
    })?;
    Ok(key.to_bytes())
}

/// Reads up to four public keys for a device to trust.
pub fn read_trusted(paths: &[PathBuf]) -> Result<TrustedKeys> {
    if paths.len() > ota_core::manifest::MAX_TRUSTED_KEYS {
        return Err(usage(format!(
            "a device trusts at most {} keys, not {}",
            ota_core::manifest::MAX_TRUSTED_KEYS,
            paths.len()
        )));
    }
    let keys = paths
        .iter()
        .map(|p| read_public(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(TrustedKeys::new(&keys))
}

/// Reads a manifest file (`IMAGE.sig`).
pub fn read_manifest(path: &Path) -> Result<SignedManifest> {
    let bytes = read_input(path, MAX_MANIFEST_LEN)?;
    SignedManifest::decode(&bytes).map_err(|e| {
        CliError::new(
            ExitCode::InvalidImage,
            format!("{} is not a signed manifest: {e}", path.display()),
        )
        .into()
    })
}
