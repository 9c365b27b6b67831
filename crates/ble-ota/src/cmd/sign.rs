//! `ble-ota keygen NAME` and `ble-ota sign IMAGE --key NAME.key`: the keys a device trusts
//! and the manifests it takes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ota_core::esp::Chip;
use ota_core::manifest::{Manifest, SignedManifest, TrustedKeys};
use serde::Serialize;

use crate::exit::{CliError, ExitCode};
use crate::input::{MAX_IMAGE_LEN, read_input};
use crate::keys;

/// Options of `keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Writes NAME.key (the private key, mode 0600: keep it secret, out of repositories) and
    /// NAME.pub (build it into the firmware, or `sim create --key NAME.pub`).
    pub name: PathBuf,
}

/// Options of `sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The app image to sign.
    pub image: PathBuf,
    /// The private key (NAME.key from `keygen`, or any Ed25519 PKCS#8 PEM).
    #[arg(long, value_name = "NAME.key")]
    pub key: PathBuf,
    /// Where to write the manifest [default: IMAGE.sig].
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// A manifest, as printed.
#[derive(Debug, Serialize)]
pub struct ManifestView {
    pub chip: String,
    pub size: u32,
    pub sha256: String,
    pub version: String,
    pub secure_version: u32,
    /// Fingerprint of the key that signed it (first 8 bytes of the public key's SHA-256).
    pub key: String,
    /// Whether it matches the image beside it (size, SHA-256, chip, versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches_image: Option<bool>,
    /// Whether the signature verifies under `--pub` (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_valid: Option<bool>,
}

impl ManifestView {
    pub fn new(s: &SignedManifest) -> Self {
        let m = &s.manifest;
        ManifestView {
            chip: Chip::from_id(m.chip_id)
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| format!("id {}", m.chip_id)),
            size: m.size,
            sha256: hex::encode(m.sha256),
            version: ota_core::esp::image::c_str(&m.version).to_string(),
            secure_version: m.secure_version,
            key: keys::fingerprint_hex(&s.key),
            matches_image: None,
            signature_valid: None,
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        format!(
            "{} {} bytes, version {}, secure_version {}, sha256 {}…, signed by key {}",
            self.chip,
            self.size,
            self.version,
            self.secure_version,
            &self.sha256[..16],
            self.key
        )
    }
}

pub fn keygen(args: KeygenArgs, json: bool) -> Result<()> {
    let (key, public, fp) = keys::generate(&args.name)?;
    let fp = keys::fingerprint_hex(&fp);
    if json {
        let v = serde_json::json!({
            "private_key": key.display().to_string(),
            "public_key": public.display().to_string(),
            "fingerprint": fp,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "wrote {} (private: keep it secret) and {}",
            key.display(),
            public.display()
        );
        println!("key fingerprint {fp}");
        println!(
            "build the firmware with BLE_OTA_TRUSTED_KEYS={} to make it take only images signed with it",
            public.display()
        );
    }
    Ok(())
}

/// Signs `image` with the key at `key_path`, after checking it is an image a device would
/// take: a signature never vouches for a broken image.
pub fn sign_image(image: &[u8], image_path: &Path, key_path: &Path) -> Result<SignedManifest> {
    let secret = keys::read_secret(key_path)?;
    let manifest = Manifest::for_image(image).map_err(|e| {
        CliError::new(
            ExitCode::InvalidImage,
            format!(
                "{} is not a valid app image ({e}); not signing it",
                image_path.display()
            ),
        )
    })?;
    Ok(manifest.sign(&secret))
}

pub fn sign(args: SignArgs, json: bool) -> Result<()> {
    let image = read_input(&args.image, MAX_IMAGE_LEN)?;
    let signed = sign_image(&image, &args.image, &args.key)?;
    let out = args.output.unwrap_or_else(|| keys::sig_path(&args.image));
    std::fs::write(&out, signed.encode())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    let view = ManifestView::new(&signed);
    if json {
        let v = serde_json::json!({ "manifest": view, "path": out.display().to_string() });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("signed {}: {}", args.image.display(), view.line());
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// The manifest to send with `image`: signed now with `key`, or read from `IMAGE.sig` when
/// one sits beside it; checked against the image either way, so a stale `.sig` is an error
/// here rather than a refusal by the device.
pub fn manifest_for(
    image: &[u8],
    image_path: &Path,
    key: Option<&Path>,
) -> Result<Option<SignedManifest>> {
    let signed = match key {
        Some(k) => sign_image(image, image_path, k)?,
        None => {
            let path = keys::sig_path(image_path);
            if !path.exists() {
                return Ok(None);
            }
            let signed = keys::read_manifest(&path)?;
            if !signed.is_for(image) {
                return Err(CliError::new(
                    ExitCode::InvalidImage,
                    format!(
                        "{} belongs to another image than {}: sign this one again (ble-ota sign {} --key NAME.key)",
                        path.display(),
                        image_path.display(),
                        image_path.display()
                    ),
                )
                .into());
            }
            signed
        }
    };
    Ok(Some(signed))
}

/// Verifies `signed` with the public key at `public` (for `image inspect --pub`).
pub fn verifies(signed: &SignedManifest, public: &Path) -> Result<bool> {
    let key = keys::read_public(public)?;
    Ok(signed.verify(&TrustedKeys::new(&[key])).is_ok())
}
