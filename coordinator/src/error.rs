//! The coordinator's error type and its one mapping to `tonic::Status`.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("trial store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("i/o on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid spec:\n{0}")]
    InvalidSpec(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A report from a lease that is no longer the trial's current one.
    #[error("stale lease epoch for trial {trial}: presented {presented}, current {current}")]
    StaleEpoch { trial: String, presented: u64, current: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("coordinator is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

impl CoordinatorError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CoordinatorError::Io { path: path.display().to_string(), source }
    }
}

impl From<CoordinatorError> for Status {
    fn from(err: CoordinatorError) -> Status {
        match &err {
            CoordinatorError::InvalidSpec(_) | CoordinatorError::InvalidRequest(_) => {
                Status::invalid_argument(err.to_string())
            }
            CoordinatorError::NotFound(_) => Status::not_found(err.to_string()),
            CoordinatorError::AlreadyExists(_) => Status::already_exists(err.to_string()),
            CoordinatorError::StaleEpoch { .. } | CoordinatorError::FailedPrecondition(_) => {
                Status::failed_precondition(err.to_string())
            }
            CoordinatorError::ShuttingDown => Status::unavailable(err.to_string()),
            CoordinatorError::Store(_)
            | CoordinatorError::Parquet(_)
            | CoordinatorError::Arrow(_)
            | CoordinatorError::Io { .. }
            | CoordinatorError::Corrupt(_) => Status::internal(err.to_string()),
        }
    }
}
