use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {path}: {cause}")]
    Io {
        path: PathBuf,
        /// Not `source`: the message already includes it, and error chains would repeat it.
        cause: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Corpus { path: PathBuf, msg: String },
    #[error("activation store {path}: {msg}")]
    Store { path: PathBuf, msg: String },
    #[error("catalog {at}: {msg}")]
    Catalog { at: String, msg: String },
    #[error("setting up corpus `{name}`: {msg}")]
    Setup { name: String, msg: String },
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error("tensor error: {0}")]
    Tensor(#[from] glassbox_model::candle::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }
    pub fn catalog(at: &str, msg: impl Into<String>) -> Self {
        Self::Catalog {
            at: at.to_string(),
            msg: msg.into(),
        }
    }

    pub fn catalog_file(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::catalog(&path.display().to_string(), msg)
    }

    pub fn store(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::Store {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
