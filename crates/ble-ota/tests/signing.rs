//! Keys, signatures and a device that trusts a key, as a user drives them with the binary, and
//! the key and manifest files read and made by pyca `cryptography`, an independent Ed25519.

use std::path::Path;
use std::process::{Command, Output};

fn ble_ota(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ble-ota"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs `args` and asserts the exit code; returns stdout and stderr together.
fn expect(dir: &Path, code: i32, args: &[&str]) -> String {
    let out = ble_ota(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "ble-ota {args:?}:\n{text}");
    text
}

/// Writes a C3 app image with `secure_version` to `dir/name`.
fn image(dir: &Path, name: &str, version: &str, secure_version: u32) {
    let mut spec = virtual_esp32::app_image::AppImageSpec::new(
        ota_core::esp::Chip::Esp32c3,
        "signed-app",
        version,
        40_000,
        secure_version as u64 + 1,
    );
    spec.secure_version = secure_version;
    std::fs::write(dir.join(name), virtual_esp32::app_image::build_with(&spec)).unwrap();
}

/// Runs a Python script with `cryptography` (the pyca package, on OpenSSL) in `dir`.
fn python(dir: &Path, script: &str) -> Output {
    let python = std::env::var_os("BLE_OTA_PYTHON").expect(
        "BLE_OTA_PYTHON is not set: this test needs the Python venv; run it with `cargo xtask test`",
    );
    Command::new(python)
        .current_dir(dir)
        .args(["-c", script])
        .output()
        .expect("python runs")
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = expect(d, 0, &["keygen", "vendor"]);
    assert!(out.contains("key fingerprint"), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("vendor.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(d.join("vendor.key")).unwrap();
    let out = expect(d, 2, &["keygen", "vendor"]);
    assert!(out.contains("never overwrites"), "{out}");
    assert_eq!(std::fs::read(d.join("vendor.key")).unwrap(), before);
}

#[test]
#[ignore = "needs the Python venv: run via cargo xtask test"]
fn pyca_cryptography_reads_our_keys_and_signatures_and_we_sign_with_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect(d, 0, &["keygen", "vendor"]);
    image(d, "app.bin", "2.0.0", 1);
    expect(d, 0, &["sign", "app.bin", "--key", "vendor.key"]);
    // Our private key loads, its public half is our .pub byte for byte, and our manifest's
    // signature over its first 88 bytes verifies (RFC 8032 Ed25519).
    let out = python(
        d,
        r#"
from cryptography.hazmat.primitives import serialization as s
key = s.load_pem_private_key(open("vendor.key", "rb").read(), password=None)
pub = key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
assert pub == open("vendor.pub", "rb").read(), "public keys differ"
sig = open("app.bin.sig", "rb").read()
s.load_pem_public_key(pub).verify(sig[88:], sig[:88])
# A key made by cryptography, in the files openssl writes.
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
k = Ed25519PrivateKey.generate()
open("py.key", "wb").write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
open("py.pub", "wb").write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
print("ok")
"#,
    );
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect(
        d,
        0,
        &["sign", "app.bin", "--key", "py.key", "-o", "py.sig"],
    );
    let args = [
        "image", "inspect", "app.bin", "--sig", "py.sig", "--pub", "py.pub",
    ];
    let out = expect(d, 0, &args);
    assert!(out.contains("signature: valid"), "{out}");
}

#[test]
fn a_device_with_a_key_takes_the_signed_image_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect(d, 0, &["keygen", "vendor"]);
    expect(d, 0, &["keygen", "attacker"]);
    let out = expect(d, 0, &["sim", "create", "dev.bin", "--key", "vendor.pub"]);
    assert!(out.contains("takes only images signed by key"), "{out}");
    let info = expect(d, 0, &["--sim", "dev.bin", "info"]);
    assert!(info.contains("takes only signed images"), "{info}");
    image(d, "app.bin", "2.0.0", 2);

    let out = expect(
        d,
        3,
        &["--sim", "dev.bin", "flash", "app.bin", "--speed", "0"],
    );
    assert!(out.contains("SignatureRequired"), "{out}");
    let args = [
        "--sim",
        "dev.bin",
        "flash",
        "app.bin",
        "--speed",
        "0",
        "--key",
        "attacker.key",
    ];
    let out = expect(d, 3, &args);
    assert!(out.contains("UnknownKey"), "{out}");
    let out = expect(
        d,
        3,
        &[
            "--sim", "dev.bin", "flash", "app.bin", "--legacy", "--speed", "0",
        ],
    );
    assert!(out.contains("REQUEST_NAK"), "{out}");

    // Signed beside the image: `flash` sends IMAGE.sig by itself.
    expect(d, 0, &["sign", "app.bin", "--key", "vendor.key"]);
    let out = expect(
        d,
        0,
        &[
            "--json", "--sim", "dev.bin", "flash", "app.bin", "--speed", "0",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["booted"]["version"], "2.0.0");
    assert!(report["signed_by"].is_string(), "{report}");
    expect(d, 0, &["--sim", "dev.bin", "confirm"]);

    // A lower secure_version, properly signed: a downgrade.
    image(d, "old.bin", "1.5.0", 1);
    let args = [
        "--sim",
        "dev.bin",
        "flash",
        "old.bin",
        "--speed",
        "0",
        "--key",
        "vendor.key",
    ];
    let out = expect(d, 3, &args);
    assert!(out.contains("Downgrade"), "{out}");

    // A .sig left from another image is caught before connecting.
    std::fs::copy(d.join("app.bin.sig"), d.join("old.bin.sig")).unwrap();
    let out = expect(
        d,
        5,
        &["--sim", "dev.bin", "flash", "old.bin", "--speed", "0"],
    );
    assert!(out.contains("belongs to another image"), "{out}");
}

#[test]
fn inspect_shows_the_manifest_and_fails_when_it_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect(d, 0, &["keygen", "vendor"]);
    expect(d, 0, &["keygen", "other"]);
    image(d, "app.bin", "2.0.0", 3);
    let out = expect(
        d,
        5,
        &["image", "inspect", "app.bin", "--pub", "vendor.pub"],
    );
    assert!(out.contains("no signed manifest"), "{out}");
    expect(d, 0, &["sign", "app.bin", "--key", "vendor.key"]);
    let out = expect(
        d,
        0,
        &[
            "--json",
            "image",
            "inspect",
            "app.bin",
            "--pub",
            "vendor.pub",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["manifest"]["signature_valid"], true);
    assert_eq!(v["manifest"]["secure_version"], 3);
    assert_eq!(v["manifest"]["matches_image"], true);
    let out = expect(d, 5, &["image", "inspect", "app.bin", "--pub", "other.pub"]);
    assert!(out.contains("does not verify"), "{out}");
    // Signing takes the private key only, and says so.
    let out = expect(d, 2, &["sign", "app.bin", "--key", "vendor.pub"]);
    assert!(out.contains("it is a public key"), "{out}");
    // An invalid image is never signed.
    std::fs::write(d.join("junk.bin"), [0xE9u8; 100]).unwrap();
    let out = expect(d, 5, &["sign", "junk.bin", "--key", "vendor.key"]);
    assert!(out.contains("not signing it"), "{out}");
}
