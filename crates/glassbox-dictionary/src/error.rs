use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DictError {
    #[error("cannot access {path}: {cause}")]
    Io {
        path: PathBuf,
        /// Not `source`: the message already includes it, and error chains would repeat it.
        cause: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("invalid dictionary config: {0}")]
    Config(String),
    #[error("input has {got} dimensions, the dictionary expects {expected}")]
    Width { got: usize, expected: usize },
    #[error("training diverged at step {step}: {msg}")]
    Diverged { step: usize, msg: String },
    /// A [`crate::sweep::BatchSource`] could not produce its rows.
    #[error("{0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// Inputs that do not fit what reads them (a probe and a model of other widths).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
}

impl From<glassbox_model::candle::Error> for DictError {
    fn from(e: glassbox_model::candle::Error) -> Self {
        Self::Model(e.into())
    }
}

pub type Result<T, E = DictError> = std::result::Result<T, E>;

impl DictError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
    pub fn format(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
