#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Model(#[from] glassbox_model::ModelError),
    #[error(transparent)]
    Dict(#[from] glassbox_dictionary::DictError),
    #[error(transparent)]
    Store(#[from] glassbox_store::StoreError),
    #[error("{0}")]
    Mismatch(String),
    /// The LLM endpoint failed or answered off-format.
    #[error("{0}")]
    Llm(String),
}

impl From<glassbox_model::candle::Error> for AnalysisError {
    fn from(e: glassbox_model::candle::Error) -> Self {
        Self::Model(e.into())
    }
}

pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;
