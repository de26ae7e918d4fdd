//! Which pending trial goes to which worker: a pure function over plain ids and capacities.
//!
//! Rules, in order:
//! 1. a worker only gets trials of job kinds it registered;
//! 2. retries (attempt > 0) go first, so an interrupted trial is not starved by fresh ones;
//! 3. otherwise sweeps take turns (round-robin by sweep, oldest ordinal first within a sweep), so
//!    two sweeps on one coordinator both progress;
//! 4. never more than the worker asked for.

use std::collections::{BTreeMap, VecDeque};

use sweep_shared::ids::TrialId;

use crate::store::PendingTrial;

/// What the asking worker can take.
#[derive(Debug, Clone)]
pub struct WorkerCapacity<'a> {
    pub job_kinds: &'a [String],
    pub free_slots: usize,
}

/// The trials to lease to this worker, in the order they should start.
pub fn trials_to_assign(pending: &[PendingTrial], worker: &WorkerCapacity<'_>) -> Vec<TrialId> {
    let runnable = pending.iter().filter(|t| worker.job_kinds.contains(&t.job_kind));
    let (mut retries, fresh): (Vec<&PendingTrial>, Vec<&PendingTrial>) = runnable.partition(|t| t.attempt > 0);
    retries.sort_by_key(|t| (t.ordinal, t.trial_id.clone()));

    let mut by_sweep: BTreeMap<&str, VecDeque<&PendingTrial>> = BTreeMap::new();
    for trial in fresh {
        by_sweep.entry(trial.sweep_id.as_str()).or_default().push_back(trial);
    }
    for queue in by_sweep.values_mut() {
        queue.make_contiguous().sort_by_key(|t| (t.ordinal, t.trial_id.clone()));
    }

    let mut chosen: Vec<TrialId> = retries.iter().take(worker.free_slots).map(|t| t.trial_id.clone()).collect();
    while chosen.len() < worker.free_slots && by_sweep.values().any(|q| !q.is_empty()) {
        for queue in by_sweep.values_mut() {
            if chosen.len() == worker.free_slots {
                break;
            }
            if let Some(trial) = queue.pop_front() {
                chosen.push(trial.trial_id.clone());
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng};
    use sweep_shared::ids::SweepId;

    use super::*;

    fn trial(sweep: &str, kind: &str, ordinal: u64, attempt: u32) -> PendingTrial {
        PendingTrial {
            trial_id: TrialId(format!("{sweep}-{ordinal}")),
            sweep_id: SweepId::from(sweep),
            job_kind: kind.into(),
            ordinal,
            attempt,
        }
    }

    #[test]
    fn retries_first_then_sweeps_take_turns() {
        let pending = vec![trial("a", "q", 0, 0), trial("a", "q", 1, 0), trial("b", "q", 0, 0), trial("a", "q", 5, 2)];
        let kinds = vec!["q".to_string()];
        let got = trials_to_assign(&pending, &WorkerCapacity { job_kinds: &kinds, free_slots: 3 });
        assert_eq!(got, vec![TrialId::from("a-5"), TrialId::from("a-0"), TrialId::from("b-0")]);
    }

    #[test]
    fn unknown_kinds_are_never_assigned() {
        let pending = vec![trial("a", "gan", 0, 0)];
        let kinds = vec!["q".to_string()];
        assert!(trials_to_assign(&pending, &WorkerCapacity { job_kinds: &kinds, free_slots: 4 }).is_empty());
    }

    /// Property: over random inputs the assignment is a duplicate-free subset of the runnable
    /// pending trials, as long as possible, and each sweep's trials come in ordinal order.
    #[test]
    fn random_inputs_keep_the_invariants() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..500 {
            let n = rng.random_range(0..40);
            let pending: Vec<PendingTrial> = (0..n)
                .map(|i| {
                    let sweep = ["a", "b", "c"][rng.random_range(0..3)];
                    let kind = ["q", "gan"][rng.random_range(0..2)];
                    let attempt = if rng.random_bool(0.2) { 1 } else { 0 };
                    trial(sweep, kind, i, attempt)
                })
                .collect();
            let kinds = vec!["q".to_string()];
            let free_slots = rng.random_range(0..10);
            let got = trials_to_assign(&pending, &WorkerCapacity { job_kinds: &kinds, free_slots });
            let runnable = pending.iter().filter(|t| t.job_kind == "q").count();
            assert_eq!(got.len(), runnable.min(free_slots));
            let unique: HashSet<_> = got.iter().collect();
            assert_eq!(unique.len(), got.len());
            for id in &got {
                let t = pending.iter().find(|t| &t.trial_id == id).unwrap();
                assert_eq!(t.job_kind, "q");
            }
            for sweep in ["a", "b", "c"] {
                let ordinals: Vec<u64> = got
                    .iter()
                    .map(|id| pending.iter().find(|t| &t.trial_id == id).unwrap())
                    .filter(|t| t.sweep_id.as_str() == sweep && t.attempt == 0)
                    .map(|t| t.ordinal)
                    .collect();
                assert!(ordinals.windows(2).all(|w| w[0] < w[1]), "{ordinals:?}");
            }
        }
    }
}
