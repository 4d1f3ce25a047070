//! The library's one error type: every variant names the file, key or setting at fault.

use std::path::PathBuf;

/// Errors of the prdit library. Binaries wrap them with `anyhow` context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value that cannot describe a valid model or run.
    #[error("invalid configuration `{key}`: {reason}")]
    Invalid { key: String, reason: String },

    /// A model name that the official grammar does not accept.
    #[error("unknown model name `{name}`: {reason}")]
    ModelName { name: String, reason: String },

    /// Reading or writing a file failed. (The OS error is part of the message, not a separate
    /// cause, so that a printed chain names it once.)
    #[error("{}: {}", path.display(), plain_os_error(cause))]
    Io { path: PathBuf, cause: std::io::Error },

    /// A weights file (PyTorch, safetensors or a prdit checkpoint) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },

    /// A data file (volume, dataset list) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Data { path: PathBuf, reason: String },

    /// Several files that cannot be used, each named with its problem.
    #[error("{} of the {what} cannot be used:\n  - {}", problems.len(), problems.join("\n  - "))]
    Files { what: String, problems: Vec<String> },

    /// A device that cannot be used (not compiled in, not present, bad spelling).
    #[error("device `{spec}`: {reason}")]
    Device { spec: String, reason: String },

    /// A folder that another prdit process is writing.
    #[error("{} is in use by another prdit process ({holder}); wait for it to finish, or stop it", dir.display())]
    Locked { dir: PathBuf, holder: String },

    /// Starting a run in a folder that already holds one (resume it, or use another folder).
    #[error("{} already holds a run (checkpoint at step {step})", dir.display())]
    RunExists { dir: PathBuf, step: u64 },

    /// Copying a tensor from the device to the host failed (never read as zeros).
    #[error("copying {what} from the device failed: {reason}")]
    Transfer { what: String, reason: String },

    /// Work on the device that failed (a synchronisation, an allocation the backend refused).
    #[error("{what} failed: {reason}")]
    Failed { what: String, reason: String },

    /// A training run that kept producing non-finite or huge losses.
    #[error(
        "the run diverged: {bad_steps} consecutive steps with a non-finite or huge loss at step {step} \
         (last checkpoint: {}); lower the learning rate or check the data",
        checkpoint.as_ref().map_or("none written in this process".to_string(), |c| c.display().to_string())
    )]
    Diverged { step: u64, bad_steps: u64, checkpoint: Option<PathBuf> },
}

/// An OS error without Rust's " (os error N)" suffix: "No such file or directory".
fn plain_os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { key: key.into(), reason: reason.into() }
    }

    /// Shorthand for [`Error::Weights`].
    pub fn weights(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), reason: reason.into() }
    }

    /// Shorthand for [`Error::Data`].
    pub fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Data { path: path.into(), reason: reason.into() }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }

    /// The process exit status for this error: 2 for a usage or input problem (a bad value,
    /// name, missing or unreadable file, device, or a folder in use), 1 for a failure while
    /// working (a write that fails, the device, a diverged run).
    pub fn exit_code(&self) -> u8 {
        use std::io::ErrorKind as K;
        match self {
            // A path that names nothing usable is the user's input; a write that fails is not.
            Error::Io { cause, .. } => match cause.kind() {
                K::NotFound | K::PermissionDenied | K::NotADirectory | K::IsADirectory | K::InvalidInput => 2,
                _ => 1,
            },
            Error::Transfer { .. } | Error::Diverged { .. } | Error::Failed { .. } => 1,
            _ => 2,
        }
    }

    /// Shorthand for [`Error::Failed`].
    pub fn failed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Failed { what: what.into(), reason: reason.into() }
    }

    /// Shorthand for [`Error::Transfer`].
    pub fn transfer(what: impl Into<String>, reason: impl std::fmt::Debug) -> Self {
        Error::Transfer { what: what.into(), reason: format!("{reason:?}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_named_once() {
        let e = Error::io("x/y.nii", std::io::Error::from_raw_os_error(2));
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
        assert!(shown.starts_with("x/y.nii: "), "{shown}");
        assert!(!shown.contains("os error"), "{shown}");
    }
}
