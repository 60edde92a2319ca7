//! One error type for the runtime. Every variant names the file, field or value at fault
//! and, where there is one, the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        /// Not `source`: the message already includes it, and error chains would repeat it.
        cause: std::io::Error,
    },

    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("invalid config {path}: field `{field}`: {msg}")]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },

    #[error("invalid weights {path}: {msg}")]
    Weights { path: PathBuf, msg: String },

    #[error("invalid tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("model `{name}` not found: {msg}")]
    ModelNotFound { name: String, msg: String },

    #[error("unknown hook point `{name}`: {msg}")]
    UnknownHook { name: String, msg: String },

    #[error(
        "{what} reads {width}-dimensional rows at {hook}, but this model's rows there are \
         {expected} wide; it belongs to another model or hook"
    )]
    ReaderWidth {
        what: String,
        hook: String,
        width: usize,
        expected: usize,
    },

    #[error("hook `{hook}` returned a tensor of shape {got:?}, expected {expected:?}")]
    HookShape {
        hook: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("intervention at `{hook}` failed: {source}")]
    Intervention {
        hook: String,
        source: crate::hooks::InterventionError,
    },

    #[error(
        "input of {len} tokens is longer than the model's {max} positions; \
         shorten it or pass --truncate to keep the first {max}"
    )]
    InputTooLong { len: usize, max: usize },

    #[error("invalid input: {0}")]
    Input(String),

    #[error("chat template: {0}")]
    ChatTemplate(String),

    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn config(path: &std::path::Path, field: &str, msg: impl Into<String>) -> Self {
        Self::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
}
