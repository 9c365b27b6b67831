//! Exit codes, documented in the README, mapped in one place.

/// What `ble-ota` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Any other failure (I/O, link error, bug).
    Failure = 1,
    /// Bad arguments (clap also uses 2).
    Usage = 2,
    /// The device refused the update or the image (reason printed).
    Refused = 3,
    /// No device found, or no Bluetooth adapter.
    NoDevice = 4,
    /// `image inspect`: the image is invalid.
    InvalidImage = 5,
}

/// An error that decides the exit code; other errors exit with [`ExitCode::Failure`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// The exit code.
    pub code: ExitCode,
    /// What to tell the user, including what to do next.
    pub message: String,
}

impl CliError {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }
}

/// Returns the exit code for an error chain.
pub fn code_of(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<CliError>())
        .map(|e| e.code)
        .unwrap_or(ExitCode::Failure)
}
