//! Lease rules: deadlines, what an expiry does, and the fencing check on every report.
//!
//! Pure logic over plain numbers; the core applies the outcomes to the store. A lease is a trial's
//! (epoch, worker, deadline). Epochs only rise, so a report carrying anything but the trial's
//! current epoch comes from a lease that ended, and is refused.

use std::time::Duration;

use sweep_shared::ids::LeaseEpoch;

use crate::error::CoordinatorError;
use crate::store::{TrialRow, TrialStatus};

#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    pub ttl: Duration,
    pub max_attempts: u32,
}

/// What happens to a trial whose lease expired.
#[derive(Debug, Clone, PartialEq)]
pub enum Expiry {
    /// Back to pending; the next lease is attempt `attempt + 1`.
    Requeue,
    /// Out of attempts: the trial fails with this message.
    Fail(String),
}

impl LeasePolicy {
    pub fn deadline_ms(&self, now_ms: i64) -> i64 {
        now_ms + self.ttl.as_millis() as i64
    }

    /// The outcome for a trial whose lease of attempt `attempt` expired.
    pub fn on_expiry(&self, attempt: u32) -> Expiry {
        if attempt >= self.max_attempts {
            Expiry::Fail(format!("lease expired on attempt {attempt} of {}", self.max_attempts))
        } else {
            Expiry::Requeue
        }
    }
}

/// Checks that a report with `presented` epoch comes from `trial`'s current lease.
pub fn check_fence(trial: &TrialRow, presented: LeaseEpoch) -> Result<(), CoordinatorError> {
    if trial.status == TrialStatus::Running && trial.epoch == presented {
        return Ok(());
    }
    let current = if trial.status == TrialStatus::Running {
        trial.epoch.to_string()
    } else {
        format!("none (trial is {})", trial.status.as_str())
    };
    Err(CoordinatorError::StaleEpoch { trial: trial.trial_id.to_string(), presented: presented.0, current })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sweep_shared::ids::{SweepId, TrialId};

    fn running(epoch: u64) -> TrialRow {
        TrialRow {
            trial_id: TrialId::from("t"),
            sweep_id: SweepId::from("s"),
            ordinal: 0,
            config_id: String::new(),
            seed: 0,
            params_json: String::new(),
            job_kind: String::new(),
            status: TrialStatus::Running,
            attempt: 1,
            epoch: LeaseEpoch(epoch),
            worker_id: None,
            device: None,
            deadline_ms: None,
            batch_seq: 0,
            obj_state: None,
            objective: None,
            started_ms: None,
            finished_ms: None,
            wall_seconds: None,
            error: None,
            handbacks: 0,
            resumed_from: None,
        }
    }

    #[test]
    fn fence_accepts_only_the_current_epoch_of_a_running_trial() {
        assert!(check_fence(&running(5), LeaseEpoch(5)).is_ok());
        let err = check_fence(&running(5), LeaseEpoch(4)).unwrap_err().to_string();
        assert!(err.contains("presented 4, current 5"), "{err}");
        let mut done = running(5);
        done.status = TrialStatus::Completed;
        assert!(check_fence(&done, LeaseEpoch(5)).unwrap_err().to_string().contains("completed"));
    }

    #[test]
    fn expiry_requeues_until_attempts_run_out() {
        let policy = LeasePolicy { ttl: Duration::from_secs(3), max_attempts: 3 };
        assert_eq!(policy.on_expiry(1), Expiry::Requeue);
        assert_eq!(policy.on_expiry(2), Expiry::Requeue);
        assert!(matches!(policy.on_expiry(3), Expiry::Fail(_)));
        assert_eq!(policy.deadline_ms(1_000), 4_000);
    }
}
