//! Signed manifests: what a device that trusts a key needs before it writes a byte.
//!
//! A manifest names one image (size, SHA-256, chip, app version, `secure_version`) and carries
//! an Ed25519 signature (RFC 8032) over those fields, made by the holder of a private key whose
//! public half is built into the device. It is 152 bytes, fixed, so a device keeps it in a
//! fixed buffer and a host stores it as `IMAGE.sig` beside the image:
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 4 | magic `BOTM` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | reserved, 0 |
//! | 6 | 2 | chip id (`esp_chip_id_t`, as in the image header) |
//! | 8 | 4 | image size |
//! | 12 | 32 | image SHA-256 (of the whole file, as BEGIN announces it) |
//! | 44 | 4 | `secure_version` (the image's `esp_app_desc_t.secure_version`) |
//! | 48 | 32 | app version (`esp_app_desc_t.version`, NUL padded) |
//! | 80 | 8 | fingerprint of the signing key ([`fingerprint`]) |
//! | 88 | 64 | Ed25519 signature of bytes 0..88 |
//!
//! The magic and format version are signed, so a signature over anything else (another
//! format, another tool's message) never verifies as a manifest.
//!
//! Verification is ed25519-dalek's `verify_strict` (no allocator, no RNG): it also refuses
//! small-order keys and non-canonical signatures, so one image has exactly one valid
//! signature per key.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::esp::image::{ImageError, ImageValidator};

/// Length of an encoded, signed manifest.
pub const MANIFEST_LEN: usize = 152;
/// Length of the signed part (everything but the signature).
pub const SIGNED_LEN: usize = 88;
/// The manifest's magic.
pub const MAGIC: [u8; 4] = *b"BOTM";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Public keys a device trusts at most.
pub const MAX_TRUSTED_KEYS: usize = 4;

/// An Ed25519 public key, as RFC 8032 encodes it.
pub type PublicKey = [u8; 32];
/// The first 8 bytes of a public key's SHA-256: names the key in manifests, INFO and messages.
pub type Fingerprint = [u8; 8];

/// Returns the public key of `secret`, an Ed25519 secret key (its 32-byte seed).
pub fn public_key(secret: &[u8; 32]) -> PublicKey {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Returns the fingerprint of `key`.
pub fn fingerprint(key: &PublicKey) -> Fingerprint {
    let digest: [u8; 32] = Sha256::digest(key).into();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// What a manifest says about its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Manifest {
    /// Chip id of the image header (`esp_chip_id_t`).
    pub chip_id: u16,
    /// Image length in bytes.
    pub size: u32,
    /// SHA-256 of the whole image.
    pub sha256: [u8; 32],
    /// The image's anti-rollback version: a device refuses one lower than its running app's.
    pub secure_version: u32,
    /// The image's app version, NUL padded as in `esp_app_desc_t`.
    pub version: [u8; 32],
}

/// A manifest with the fingerprint of the key that signed it and the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SignedManifest {
    /// The signed fields.
    pub manifest: Manifest,
    /// Which key signed it.
    pub key: Fingerprint,
    /// Ed25519 signature over the first [`SIGNED_LEN`] bytes of the encoding.
    pub signature: [u8; 64],
}

/// Why a manifest was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ManifestError {
    /// Not [`MANIFEST_LEN`] bytes.
    #[error("a signed manifest is {MANIFEST_LEN} bytes, not {0}")]
    BadLength(usize),
    /// The magic is not `BOTM`: not a manifest of this format.
    #[error("not a ble-ota manifest (magic is not BOTM)")]
    BadMagic,
    /// A format version this code does not know.
    #[error("manifest format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// The reserved byte is not 0: a manifest of a later format revision, or a corrupt one.
    #[error(
        "the manifest's reserved byte is {0:#04x}, not 0: a newer or corrupt manifest; sign the image again with this version of ble-ota"
    )]
    Reserved(u8),
    /// Signed by a key that is not trusted.
    #[error("signed by key {} that is not trusted", Hex(.0))]
    UnknownKey(Fingerprint),
    /// The signature does not verify under the named key.
    #[error("the signature does not verify: the manifest was altered or forged")]
    BadSignature,
}

/// Formats bytes as lowercase hex, without allocating.
pub struct Hex<'a>(pub &'a [u8]);

impl core::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Manifest {
    /// Describes `image`, a whole ESP app image: its size and SHA-256, the chip of its header,
    /// the version and `secure_version` of its app descriptor. The image must pass every check
    /// a device makes (see [`ImageValidator`]): a signature never vouches for an image the
    /// device would refuse anyway.
    pub fn for_image(image: &[u8]) -> Result<Manifest, ImageError> {
        let mut v = ImageValidator::new(None, u32::MAX);
        v.feed(image)?;
        let info = v.finish()?;
        let app = info.app.ok_or(ImageError::NoAppDescriptor)?;
        Ok(Manifest {
            chip_id: info.header.chip_id,
            size: image.len() as u32,
            sha256: Sha256::digest(image).into(),
            secure_version: app.secure_version,
            version: app.version,
        })
    }

    /// Signs it with `secret`, an Ed25519 secret key (its 32-byte seed, RFC 8032).
    pub fn sign(&self, secret: &[u8; 32]) -> SignedManifest {
        let key = SigningKey::from_bytes(secret);
        let fp = fingerprint(&key.verifying_key().to_bytes());
        let signature = key.sign(&self.signed_bytes(&fp)).to_bytes();
        SignedManifest {
            manifest: *self,
            key: fp,
            signature,
        }
    }

    /// Encodes the signed part, for `key`'s fingerprint.
    pub fn signed_bytes(&self, key: &Fingerprint) -> [u8; SIGNED_LEN] {
        let mut out = [0u8; SIGNED_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = FORMAT_VERSION;
        out[6..8].copy_from_slice(&self.chip_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.size.to_le_bytes());
        out[12..44].copy_from_slice(&self.sha256);
        out[44..48].copy_from_slice(&self.secure_version.to_le_bytes());
        out[48..80].copy_from_slice(&self.version);
        out[80..88].copy_from_slice(key);
        out
    }
}

impl SignedManifest {
    /// Encodes it ([`MANIFEST_LEN`] bytes).
    pub fn encode(&self) -> [u8; MANIFEST_LEN] {
        let mut out = [0u8; MANIFEST_LEN];
        out[..SIGNED_LEN].copy_from_slice(&self.manifest.signed_bytes(&self.key));
        out[SIGNED_LEN..].copy_from_slice(&self.signature);
        out
    }

    /// Whether it describes `image` (size, SHA-256, chip and versions), so a client can tell a
    /// stale `.sig` before a device refuses it.
    pub fn is_for(&self, image: &[u8]) -> bool {
        Manifest::for_image(image).is_ok_and(|m| m == self.manifest)
    }

    /// Decodes one, without verifying it.
    pub fn decode(bytes: &[u8]) -> Result<SignedManifest, ManifestError> {
        let b: &[u8; MANIFEST_LEN] = bytes
            .try_into()
            .map_err(|_| ManifestError::BadLength(bytes.len()))?;
        if b[0..4] != MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if b[4] != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(b[4]));
        }
        if b[5] != 0 {
            return Err(ManifestError::Reserved(b[5]));
        }
        let arr = |r: core::ops::Range<usize>| -> [u8; 4] { b[r].try_into().unwrap_or([0; 4]) };
        let mut sha256 = [0; 32];
        sha256.copy_from_slice(&b[12..44]);
        let mut version = [0; 32];
        version.copy_from_slice(&b[48..80]);
        let mut key = [0; 8];
        key.copy_from_slice(&b[80..88]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&b[SIGNED_LEN..]);
        Ok(SignedManifest {
            manifest: Manifest {
                chip_id: u16::from_le_bytes([b[6], b[7]]),
                size: u32::from_le_bytes(arr(8..12)),
                sha256,
                secure_version: u32::from_le_bytes(arr(44..48)),
                version,
            },
            key,
            signature,
        })
    }

    /// Checks the signature against the trusted key it names.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<&Manifest, ManifestError> {
        let key = trusted
            .find(&self.key)
            .ok_or(ManifestError::UnknownKey(self.key))?;
        let key = VerifyingKey::from_bytes(key).map_err(|_| ManifestError::BadSignature)?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.manifest.signed_bytes(&self.key), &signature)
            .map_err(|_| ManifestError::BadSignature)?;
        Ok(&self.manifest)
    }
}

/// The public keys a device accepts manifests from (at most [`MAX_TRUSTED_KEYS`]), built into
/// its firmware. Empty: the device takes unsigned images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TrustedKeys {
    keys: [PublicKey; MAX_TRUSTED_KEYS],
    len: u8,
}

impl TrustedKeys {
    /// No key: signatures are not required.
    pub const NONE: TrustedKeys = TrustedKeys {
        keys: [[0; 32]; MAX_TRUSTED_KEYS],
        len: 0,
    };

    /// Trusts `keys`; more than [`MAX_TRUSTED_KEYS`] is a build error in a `const`.
    pub const fn new(keys: &[PublicKey]) -> TrustedKeys {
        assert!(keys.len() <= MAX_TRUSTED_KEYS, "too many trusted keys");
        let mut out = TrustedKeys::NONE;
        let mut i = 0;
        while i < keys.len() {
            out.keys[i] = keys[i];
            i += 1;
        }
        out.len = keys.len() as u8;
        out
    }

    /// Returns the keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys[..self.len as usize]
    }

    /// Returns true when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the key with fingerprint `fp`.
    pub fn find(&self, fp: &Fingerprint) -> Option<&PublicKey> {
        self.keys().iter().find(|k| fingerprint(k) == *fp)
    }
}

impl Default for TrustedKeys {
    fn default() -> Self {
        TrustedKeys::NONE
    }
}
