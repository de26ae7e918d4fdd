//! The worker's error type.

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot connect to the coordinator at {0}")]
    Connect(String),
    #[error("coordinator refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the lease of trial {0} is no longer current")]
    StaleLease(String),
    #[error("metric batch refused: {0}")]
    Rejected(String),
    #[error("i/o on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("stopped")]
    Stopped,
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
