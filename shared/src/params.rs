//! Typed hyperparameter values and the parameter schema a job declares.
//!
//! A spec's `parameters` and `job` settings become a [`Params`] map of [`ParamValue`]s after
//! validation against the job's [`JobSchema`]; the worker hands the same map to the job. Both sides
//! use this module, so a value means the same thing on the wire, in SQLite and in Parquet.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One hyperparameter value. Epsilon schedules are first-class values, not strings to parse later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Schedule(EpsilonSchedule),
}

impl ParamValue {
    /// Name of the value's type as spec errors print it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "bool",
            ParamValue::Int(_) => "int",
            ParamValue::Float(_) => "float",
            ParamValue::Str(_) => "string",
            ParamValue::Schedule(_) => "epsilon schedule",
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s}"),
            ParamValue::Schedule(s) => write!(f, "{s}"),
        }
    }
}

/// How epsilon (the exploration rate of an epsilon-greedy policy) moves over episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "schedule", rename_all = "snake_case", deny_unknown_fields)]
pub enum EpsilonSchedule {
    /// The same epsilon in every episode.
    Constant { value: f64 },
    /// From `start` to `end` in a straight line over `episodes` episodes, then `end`.
    Linear { start: f64, end: f64, episodes: u64 },
    /// `start * decay^n` after n decay steps, never below `min`.
    Exponential { start: f64, decay: f64, min: f64 },
    /// The lab's hand-tuned rule: starts at `start`, stays inside [`min`, `max`]; every `window`
    /// episodes it is multiplied by `factor` (< 1) when the window's mean reward beat the best
    /// window so far, and divided by `factor` when the mean fell below `collapse` times that best.
    Adaptive { start: f64, min: f64, max: f64, factor: f64, window: u64, collapse: f64 },
}

impl EpsilonSchedule {
    /// The lab's adaptive setting: 0.10 inside [0.02, 0.15], windows of 1,000 episodes.
    pub const LAB_ADAPTIVE: EpsilonSchedule =
        EpsilonSchedule::Adaptive { start: 0.10, min: 0.02, max: 0.15, factor: 0.9, window: 1000, collapse: 0.5 };

    /// Short name of the schedule kind.
    pub fn kind(&self) -> &'static str {
        match self {
            EpsilonSchedule::Constant { .. } => "constant",
            EpsilonSchedule::Linear { .. } => "linear",
            EpsilonSchedule::Exponential { .. } => "exponential",
            EpsilonSchedule::Adaptive { .. } => "adaptive",
        }
    }

    /// Checks the numbers of a schedule; the message names the offending field.
    pub fn check(&self) -> Result<(), String> {
        let unit = |name: &str, x: f64| {
            if (0.0..=1.0).contains(&x) {
                Ok(())
            } else {
                Err(format!("{name} must be within [0, 1], got {x}"))
            }
        };
        match *self {
            EpsilonSchedule::Constant { value } => unit("value", value),
            EpsilonSchedule::Linear { start, end, episodes } => {
                unit("start", start)?;
                unit("end", end)?;
                if episodes == 0 {
                    return Err("episodes must be at least 1".into());
                }
                Ok(())
            }
            EpsilonSchedule::Exponential { start, decay, min } => {
                unit("start", start)?;
                unit("min", min)?;
                if !(decay > 0.0 && decay <= 1.0) {
                    return Err(format!("decay must be within (0, 1], got {decay}"));
                }
                if min > start {
                    return Err(format!("min ({min}) must not exceed start ({start})"));
                }
                Ok(())
            }
            EpsilonSchedule::Adaptive { start, min, max, factor, window, collapse } => {
                unit("start", start)?;
                unit("min", min)?;
                unit("max", max)?;
                if min > max {
                    return Err(format!("min ({min}) must not exceed max ({max})"));
                }
                if start < min || start > max {
                    return Err(format!("start ({start}) must lie within [min, max] = [{min}, {max}]"));
                }
                if !(factor > 0.0 && factor < 1.0) {
                    return Err(format!("factor must be within (0, 1), got {factor}"));
                }
                if window == 0 {
                    return Err("window must be at least 1".into());
                }
                unit("collapse", collapse)
            }
        }
    }
}

impl fmt::Display for EpsilonSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == EpsilonSchedule::LAB_ADAPTIVE {
            return f.write_str("adaptive");
        }
        match *self {
            EpsilonSchedule::Constant { value } => write!(f, "constant({value})"),
            EpsilonSchedule::Linear { start, end, episodes } => {
                write!(f, "linear({start}->{end} over {episodes})")
            }
            EpsilonSchedule::Exponential { start, decay, min } => {
                write!(f, "exponential({start}*{decay}^n, min {min})")
            }
            EpsilonSchedule::Adaptive { start, min, max, factor, window, collapse } => {
                write!(f, "adaptive({start} in [{min},{max}], x{factor} per {window}, collapse {collapse})")
            }
        }
    }
}

/// What values a job accepts for one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    Float { min: f64, max: f64 },
    Int { min: i64, max: i64 },
    Choice(&'static [&'static str]),
    Bool,
    Schedule,
}

impl ParamKind {
    /// Human name of the kind, as spec errors print it.
    pub fn describe(&self) -> String {
        match self {
            ParamKind::Float { min, max } => format!("a float in [{min}, {max}]"),
            ParamKind::Int { min, max } => format!("an integer in [{min}, {max}]"),
            ParamKind::Choice(options) => format!("one of {}", options.join(", ")),
            ParamKind::Bool => "true or false".to_string(),
            ParamKind::Schedule => "an epsilon schedule (constant, linear, exponential, adaptive)".to_string(),
        }
    }

    /// Checks `value` against this kind, converting an integer to a float where a float is wanted.
    pub fn admit(&self, value: ParamValue) -> Result<ParamValue, String> {
        match (self, value) {
            (ParamKind::Float { min, max }, ParamValue::Float(x)) => range(x, *min, *max).map(ParamValue::Float),
            (ParamKind::Float { min, max }, ParamValue::Int(i)) => range(i as f64, *min, *max).map(ParamValue::Float),
            (ParamKind::Int { min, max }, ParamValue::Int(i)) => {
                if i < *min || i > *max {
                    Err(format!("{i} is outside [{min}, {max}]"))
                } else {
                    Ok(ParamValue::Int(i))
                }
            }
            (ParamKind::Choice(options), ParamValue::Str(s)) => {
                if options.contains(&s.as_str()) {
                    Ok(ParamValue::Str(s))
                } else {
                    Err(format!("'{s}' is not one of {}", options.join(", ")))
                }
            }
            (ParamKind::Bool, ParamValue::Bool(b)) => Ok(ParamValue::Bool(b)),
            (ParamKind::Schedule, ParamValue::Schedule(s)) => {
                s.check()?;
                Ok(ParamValue::Schedule(s))
            }
            (kind, value) => Err(format!("expected {}, got {} {value}", kind.describe(), value.type_name())),
        }
    }
}

fn range(x: f64, min: f64, max: f64) -> Result<f64, String> {
    if !x.is_finite() {
        return Err(format!("{x} is not a finite number"));
    }
    if x < min || x > max {
        return Err(format!("{x} is outside [{min}, {max}]"));
    }
    Ok(x)
}

/// One parameter a job takes.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    /// Used when the spec leaves the parameter out; `None` makes it required.
    pub default: Option<ParamValue>,
    pub help: &'static str,
}

impl ParamSpec {
    /// An integer in `[min, max]` with a default.
    pub fn int(name: &'static str, min: i64, max: i64, default: i64, help: &'static str) -> Self {
        ParamSpec { name, kind: ParamKind::Int { min, max }, default: Some(ParamValue::Int(default)), help }
    }

    /// A float in `[min, max]` with a default.
    pub fn float(name: &'static str, min: f64, max: f64, default: f64, help: &'static str) -> Self {
        ParamSpec { name, kind: ParamKind::Float { min, max }, default: Some(ParamValue::Float(default)), help }
    }

    /// A boolean with a default.
    pub fn flag(name: &'static str, default: bool, help: &'static str) -> Self {
        ParamSpec { name, kind: ParamKind::Bool, default: Some(ParamValue::Bool(default)), help }
    }
}

/// Everything a spec needs to know about a job kind: its name and its parameters.
#[derive(Debug, Clone)]
pub struct JobSchema {
    pub kind: &'static str,
    pub description: &'static str,
    pub params: Vec<ParamSpec>,
}

impl JobSchema {
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}

/// Looks up job schemas by kind. The binary passes the worker's job registry here, so the
/// coordinator validates specs without knowing any job.
pub trait JobCatalog: Send + Sync {
    fn schema(&self, kind: &str) -> Option<&JobSchema>;
    fn kinds(&self) -> Vec<&'static str>;
}

/// A missing or mistyped parameter, found when a job reads its params.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("parameter '{0}' is missing")]
    Missing(String),
    #[error("parameter '{name}' should be {expected}, got {got}")]
    WrongType { name: String, expected: &'static str, got: String },
}

/// A trial's complete parameter set: every parameter of the job, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params(pub BTreeMap<String, ParamValue>);

impl Params {
    pub fn get(&self, name: &str) -> Result<&ParamValue, ParamError> {
        self.0.get(name).ok_or_else(|| ParamError::Missing(name.to_string()))
    }

    pub fn f64(&self, name: &str) -> Result<f64, ParamError> {
        match self.get(name)? {
            ParamValue::Float(x) => Ok(*x),
            ParamValue::Int(i) => Ok(*i as f64),
            other => Err(wrong(name, "a float", other)),
        }
    }

    pub fn i64(&self, name: &str) -> Result<i64, ParamError> {
        match self.get(name)? {
            ParamValue::Int(i) => Ok(*i),
            other => Err(wrong(name, "an integer", other)),
        }
    }

    pub fn u64(&self, name: &str) -> Result<u64, ParamError> {
        let i = self.i64(name)?;
        u64::try_from(i).map_err(|_| wrong(name, "a non-negative integer", &ParamValue::Int(i)))
    }

    pub fn str(&self, name: &str) -> Result<&str, ParamError> {
        match self.get(name)? {
            ParamValue::Str(s) => Ok(s),
            other => Err(wrong(name, "a string", other)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, ParamError> {
        match self.get(name)? {
            ParamValue::Bool(b) => Ok(*b),
            other => Err(wrong(name, "a bool", other)),
        }
    }

    pub fn schedule(&self, name: &str) -> Result<&EpsilonSchedule, ParamError> {
        match self.get(name)? {
            ParamValue::Schedule(s) => Ok(s),
            other => Err(wrong(name, "an epsilon schedule", other)),
        }
    }

    /// Canonical JSON of the map (keys sorted): the input of trial and config ids.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }
}

fn wrong(name: &str, expected: &'static str, got: &ParamValue) -> ParamError {
    ParamError::WrongType { name: name.to_string(), expected, got: format!("{} {got}", got.type_name()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_round_trips_through_json() {
        let s = ParamValue::Schedule(EpsilonSchedule::Exponential { start: 1.0, decay: 0.99, min: 0.01 });
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"schedule":"exponential","start":1.0,"decay":0.99,"min":0.01}"#);
        assert_eq!(serde_json::from_str::<ParamValue>(&json).unwrap(), s);
    }

    #[test]
    fn float_kind_takes_ints_and_refuses_strings() {
        let kind = ParamKind::Float { min: 0.0, max: 1.0 };
        assert_eq!(kind.admit(ParamValue::Int(1)).unwrap(), ParamValue::Float(1.0));
        assert!(kind.admit(ParamValue::Float(1.5)).unwrap_err().contains("outside"));
        assert!(kind.admit(ParamValue::Str("x".into())).unwrap_err().contains("expected a float"));
    }

    #[test]
    fn adaptive_start_outside_bounds_is_refused() {
        let s =
            EpsilonSchedule::Adaptive { start: 0.5, min: 0.02, max: 0.15, factor: 0.9, window: 1000, collapse: 0.5 };
        assert!(s.check().unwrap_err().contains("start"));
    }
}
