#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Dict(#[from] glassbox_dictionary::DictError),
    #[error(transparent)]
    Store(#[from] glassbox_store::StoreError),
    #[error("{0}")]
    Io(String),
}

impl From<glassbox_model::candle::Error> for ServeError {
    fn from(e: glassbox_model::candle::Error) -> Self {
        Self::Model(e.into())
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
