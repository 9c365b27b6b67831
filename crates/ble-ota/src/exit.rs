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
    /// The image file is not a valid app image (`image inspect`, `flash` before sending).
    InvalidImage = 5,
    /// The virtual ESP32 is in use by another `ble-ota` process.
    InUse = 6,
}

/// An error that decides the exit code; other errors exit with [`ExitCode::Failure`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// The exit code.
    pub code: ExitCode,
    /// What to tell the user, including what to do next.
    pub message: String,
    /// The command already printed its result (as JSON): print nothing more in `--json` mode.
    pub reported: bool,
}

impl CliError {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
            reported: false,
        }
    }

    /// Marks the error as already shown in the command's JSON output.
    pub fn reported(mut self) -> Self {
        self.reported = true;
        self
    }
}

/// Returns true if the command already reported the error in its output.
pub fn was_reported(err: &anyhow::Error) -> bool {
    err.chain()
        .find_map(|e| e.downcast_ref::<CliError>())
        .is_some_and(|e| e.reported)
}

/// Returns the exit code for an error chain: the first [`CliError`]'s, else
/// [`ExitCode::InUse`] for a locked virtual ESP32, else [`ExitCode::Failure`].
pub fn code_of(err: &anyhow::Error) -> ExitCode {
    if let Some(e) = err.chain().find_map(|e| e.downcast_ref::<CliError>()) {
        return e.code;
    }
    let locked = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ResourceBusy)
    });
    if locked {
        ExitCode::InUse
    } else {
        ExitCode::Failure
    }
}
