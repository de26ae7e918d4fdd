//! Settings of one worker agent.

use std::time::Duration;

use sweep_shared::auth::ConnectOptions;

/// Where a worker runs its trials' tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    /// Parses `cpu` or `cuda:N`; CUDA needs a build with the `cuda` feature.
    pub fn parse(s: &str) -> Result<Device, String> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        let Some(index) = s.strip_prefix("cuda:") else {
            return Err(format!("unknown device '{s}': expected cpu or cuda:N"));
        };
        let index: usize = index.parse().map_err(|_| format!("device '{s}': N in cuda:N must be a number"))?;
        if cfg!(feature = "cuda") {
            Ok(Device::Cuda(index))
        } else {
            Err(format!("device '{s}': this worker was built without CUDA; rebuild with `--features cuda`"))
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How to reach the coordinator: URL (e.g. `http://10.0.0.5:7070`), token, TLS CA.
    pub coordinator: ConnectOptions,
    /// Trials run at once.
    pub slots: u32,
    pub device: Device,
    /// Job kinds offered; empty means every kind this build runs.
    pub job_kinds: Vec<String>,
    /// A metric batch is sent once it holds this many points...
    pub batch_points: usize,
    /// ...or once its oldest point is this old.
    pub batch_interval: Duration,
    /// How long one acquire call may wait for work.
    pub acquire_wait: Duration,
    /// Longest back-off between connection attempts.
    pub max_backoff: Duration,
    /// Give up connecting after this long (None: keep trying).
    pub connect_timeout: Option<Duration>,
    /// On SIGTERM finish running trials instead of handing them back.
    pub finish_on_term: bool,
    /// Exit once no work arrived for this long (None: wait for work forever).
    pub idle_exit: Option<Duration>,
}

impl WorkerConfig {
    pub fn new(coordinator: ConnectOptions) -> Self {
        WorkerConfig {
            coordinator,
            slots: 1,
            device: Device::Cpu,
            job_kinds: Vec::new(),
            batch_points: 1024,
            batch_interval: Duration::from_millis(250),
            acquire_wait: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
            connect_timeout: None,
            finish_on_term: false,
            idle_exit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_with_clear_errors() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert!(Device::parse("gpu").unwrap_err().contains("expected cpu or cuda:N"));
        assert!(Device::parse("cuda:x").unwrap_err().contains("must be a number"));
        if !cfg!(feature = "cuda") {
            assert!(Device::parse("cuda:0").unwrap_err().contains("without CUDA"));
        }
    }
}
