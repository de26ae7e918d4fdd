//! Wire ids as newtypes, and the deterministic trial and config ids.
//!
//! A trial id is a hash of (sweep, params, seed): a resubmitted or resumed sweep maps every trial to
//! the id it had before, so a finished trial is never run twice. A config id hashes (sweep, params)
//! alone: the seeds of one configuration share it, which is what `best` groups by.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::params::Params;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }
    };
}

string_id!(
    /// A sweep's name, unique per coordinator (the spec's `name`).
    SweepId
);
string_id!(
    /// One trial: a configuration and a seed within a sweep.
    TrialId
);
string_id!(
    /// A configuration: the params of a trial without its seed.
    ConfigId
);
string_id!(
    /// A registered worker agent.
    WorkerId
);

/// The fencing token of a lease. Every grant gets a larger epoch than any before it, so a report
/// carrying an older epoch comes from a lease that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LeaseEpoch(pub u64);

impl fmt::Display for LeaseEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..8])
}

impl TrialId {
    /// The id of the trial running `params` with `seed` in `sweep`.
    pub fn derive(sweep: &SweepId, params: &Params, seed: u64) -> TrialId {
        let json = params.canonical_json();
        TrialId(format!("t{}", short_hash(&[sweep.0.as_bytes(), json.as_bytes(), &seed.to_le_bytes()])))
    }
}

impl ConfigId {
    pub fn derive(sweep: &SweepId, params: &Params) -> ConfigId {
        let json = params.canonical_json();
        ConfigId(format!("c{}", short_hash(&[sweep.0.as_bytes(), json.as_bytes()])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamValue;

    #[test]
    fn trial_ids_depend_on_sweep_params_and_seed_only() {
        let mut params = Params::default();
        params.0.insert("lr".into(), ParamValue::Float(0.01));
        let sweep = SweepId::from("s");
        let a = TrialId::derive(&sweep, &params, 1);
        assert_eq!(a, TrialId::derive(&sweep, &params.clone(), 1));
        assert_ne!(a, TrialId::derive(&sweep, &params, 2));
        assert_ne!(a, TrialId::derive(&SweepId::from("t"), &params, 1));
        assert_eq!(a.0.len(), 17);
        assert_eq!(ConfigId::derive(&sweep, &params), ConfigId::derive(&sweep, &params));
    }
}
