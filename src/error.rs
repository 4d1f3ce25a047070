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

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A weights file (PyTorch, safetensors or a prdit checkpoint) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },

    /// A data file (volume, dataset list) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Data { path: PathBuf, reason: String },

    /// A device that cannot be used (not compiled in, not present, bad spelling).
    #[error("device `{spec}`: {reason}")]
    Device { spec: String, reason: String },
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
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
