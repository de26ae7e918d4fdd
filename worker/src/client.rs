//! The worker's connection to the coordinator: connect with retry and exponential back-off.

use std::time::Duration;

use sweep_shared::auth::{ClientAuth, ConnectOptions};
use sweep_shared::limits::MAX_MESSAGE_BYTES;
use sweep_shared::proto::worker_service_client::WorkerServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::error::{Result, WorkerError};

pub type Client = WorkerServiceClient<InterceptedService<Channel, ClientAuth>>;

/// Back-off between attempts: doubles from 100 ms up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff { next: Duration::from_millis(100), max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

/// Connects to the coordinator, retrying with back-off until it answers, `timeout` passes, or
/// `stop` fires.
pub async fn connect(
    options: &ConnectOptions,
    max_backoff: Duration,
    timeout: Option<Duration>,
    stop: &CancellationToken,
) -> Result<Client> {
    let url = options.url.as_str();
    let auth = options.auth().map_err(WorkerError::Config)?;
    let endpoint = options
        .endpoint()
        .map_err(WorkerError::Config)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(max_backoff);
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                info!(coordinator = url, "connected");
                return Ok(WorkerServiceClient::with_interceptor(channel, auth)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES));
            }
            Err(err) => {
                if timeout.is_some_and(|t| started.elapsed() >= t) {
                    return Err(WorkerError::Connect(format!("{url}: {err}")));
                }
                let delay = backoff.next_delay();
                warn!(coordinator = url, %err, retry_in_ms = delay.as_millis() as u64, "cannot reach coordinator");
                tokio::select! {
                    _ = stop.cancelled() => return Err(WorkerError::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
