//! Puts `ld/` on the linker search path for `rwtext_hook.x`, and builds in the public keys the
//! update engine trusts.
//!
//! `BLE_OTA_TRUSTED_KEYS` names up to four Ed25519 public keys (`NAME.pub` from `ble-ota
//! keygen`, or `openssl pkey -pubout`), separated by commas; relative paths are taken from this
//! folder (`cargo xtask firmware` makes them absolute first). Set it in the environment, or in
//! `.cargo/config.toml`'s `[env]` for a product that always signs. Unset or empty: the firmware
//! takes unsigned images.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;

const KEYS_VAR: &str = "BLE_OTA_TRUSTED_KEYS";
const PASSKEY_VAR: &str = "BLE_OTA_PASSKEY";

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-search={}", dir.join("ld").display());
    println!("cargo:rerun-if-changed=ld/rwtext_hook.x");
    println!("cargo:rerun-if-changed=partitions.csv");
    println!("cargo:rerun-if-env-changed={KEYS_VAR}");

    let spec = std::env::var(KEYS_VAR).unwrap_or_default();
    let paths: Vec<PathBuf> = spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| dir.join(p))
        .collect();
    if paths.len() > 4 {
        panic!(
            "{KEYS_VAR}: the update engine trusts at most 4 keys, not {}",
            paths.len()
        );
    }
    let mut out = String::from(
        "/// The Ed25519 public keys this firmware trusts (`BLE_OTA_TRUSTED_KEYS` at build time).\n\
         pub const TRUSTED_KEYS: &[[u8; 32]] = &[\n",
    );
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
        let pem = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{KEYS_VAR}: cannot read {}: {e}", path.display()));
        let key = VerifyingKey::from_public_key_pem(&pem).unwrap_or_else(|e| {
            panic!(
                "{KEYS_VAR}: {} is not an Ed25519 public key in PEM ({e}); give NAME.pub from `ble-ota keygen NAME`",
                path.display()
            )
        });
        let bytes = key.to_bytes();
        let _ = writeln!(out, "    {bytes:?}, // {}", path.display());
    }
    out.push_str("];\n");

    // The pairing passkey of the `secure-link` feature.
    println!("cargo:rerun-if-env-changed={PASSKEY_VAR}");
    let passkey = std::env::var(PASSKEY_VAR).ok();
    let secure = std::env::var_os("CARGO_FEATURE_SECURE_LINK").is_some();
    let passkey = match (secure, passkey.as_deref().map(str::trim)) {
        (false, _) => "None".to_string(),
        (true, Some(p)) if p.len() == 6 && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("Some({})", p.parse::<u32>().unwrap_or(0))
        }
        (true, Some(p)) => panic!("{PASSKEY_VAR}: `{p}` is not 6 digits"),
        (true, None) => panic!(
            "the secure-link feature needs {PASSKEY_VAR}=NNNNNN, the 6-digit passkey a user types to pair"
        ),
    };
    let _ = writeln!(
        out,
        "/// The passkey of LE Secure Connections pairing (`secure-link`, `BLE_OTA_PASSKEY`).\n\
         pub const PASSKEY: Option<u32> = {passkey};"
    );
    let file = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("trusted_keys.rs");
    std::fs::write(&file, out).expect("writing trusted_keys.rs");
}
