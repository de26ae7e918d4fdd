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

/// Longest message a status carries: it travels in an HTTP/2 header, which peers cap at 16 KiB.
const MAX_STATUS_MESSAGE: usize = 8 * 1024;

fn capped(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (message cut at {MAX_STATUS_MESSAGE} bytes)", &message[..end])
}

impl From<CoordinatorError> for Status {
    fn from(err: CoordinatorError) -> Status {
        let message = capped(err.to_string());
        match &err {
            CoordinatorError::InvalidSpec(_) | CoordinatorError::InvalidRequest(_) => Status::invalid_argument(message),
            CoordinatorError::NotFound(_) => Status::not_found(message),
            CoordinatorError::AlreadyExists(_) => Status::already_exists(message),
            CoordinatorError::StaleEpoch { .. } | CoordinatorError::FailedPrecondition(_) => {
                Status::failed_precondition(message)
            }
            CoordinatorError::ShuttingDown => Status::unavailable(message),
            CoordinatorError::Store(_)
            | CoordinatorError::Parquet(_)
            | CoordinatorError::Arrow(_)
            | CoordinatorError::Io { .. }
            | CoordinatorError::Corrupt(_) => Status::internal(message),
        }
    }
}
