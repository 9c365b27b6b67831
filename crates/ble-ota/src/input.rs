//! Reading the files a user names: capped before they are read, so a wrong path (a device
//! node, a huge file) is refused with a reason instead of filling memory.

use std::io::Read;
use std::path::Path;

use anyhow::Result;

use crate::exit::{CliError, ExitCode};

/// The most bytes a kind of input file may hold, and why.
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    pub bytes: u64,
    /// What the limit is, for the message.
    pub limit: &'static str,
}

/// App images: 16 MiB, the most flash the ESP32, C3, C6 and H2 address, so no app slot is
/// larger.
pub const MAX_IMAGE_LEN: Cap = Cap {
    bytes: 16 << 20,
    limit: "the 16 MiB any ESP32 app slot can hold at most",
};
/// Merged flash images (`sim create --merged`): 128 MiB, the largest flash ESP-IDF's
/// partition tools know.
pub const MAX_MERGED_LEN: Cap = Cap {
    bytes: 128 << 20,
    limit: "the 128 MiB of the largest ESP32 flash",
};
/// Partitions CSV files.
pub const MAX_CSV_LEN: Cap = Cap {
    bytes: 1 << 20,
    limit: "1 MiB, far more than any partitions CSV",
};

/// Key files: PEM keys are a few hundred bytes.
pub const MAX_KEY_FILE_LEN: Cap = Cap {
    bytes: 16 << 10,
    limit: "16 KiB, far more than any PEM key",
};
/// Signed manifests: exactly 152 bytes.
pub const MAX_MANIFEST_LEN: Cap = Cap {
    bytes: ota_core::manifest::MANIFEST_LEN as u64,
    limit: "the 152 bytes of a signed manifest",
};

/// Reads the file at `path`, refusing one larger than `cap` without reading more than one
/// byte past it.
pub fn read_input(path: &Path, cap: Cap) -> Result<Vec<u8>> {
    let what = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        CliError::new(
            ExitCode::Failure,
            format!("cannot read {what}: {}", io_cause(&e)),
        )
    })?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(CliError::new(
            ExitCode::Usage,
            format!("{what} is a directory: name a file"),
        )
        .into());
    }
    if meta.is_file() && meta.len() > cap.bytes {
        return Err(too_large(path, meta.len(), cap));
    }
    let mut bytes = Vec::new();
    file.take(cap.bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            CliError::new(
                ExitCode::Failure,
                format!("cannot read {what}: {}", io_cause(&e)),
            )
        })?;
    if bytes.len() as u64 > cap.bytes {
        return Err(too_large(path, bytes.len() as u64, cap));
    }
    Ok(bytes)
}

fn too_large(path: &Path, len: u64, cap: Cap) -> anyhow::Error {
    let more = if len > cap.bytes { "more than " } else { "" };
    CliError::new(
        ExitCode::InvalidImage,
        format!(
            "{} holds {more}{} bytes, more than {}: is it the right file?",
            path.display(),
            len.min(cap.bytes),
            cap.limit
        ),
    )
    .into()
}

/// An I/O error's cause in words, once (without the "(os error N)" the OS adds).
pub fn io_cause(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
