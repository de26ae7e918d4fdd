//! The sweep spec: YAML text in, a validated [`SweepSpec`] out.
//!
//! Parsing takes two steps. First yaml-rust2's event parser builds a small tree of nodes that keep
//! their line numbers (the private `yaml` module; plain scalars are typed by the YAML 1.2 core
//! schema, so `1` is an int and `"1"` a string). Then hand-written readers turn that tree into typed
//! structs, checking every job setting and parameter against the job's [`JobSchema`], found through
//! the [`JobCatalog`] the caller passes in. Every problem becomes a [`SpecError`] that names the key
//! path and its line, and all of them are reported together so a user fixes a spec in one round.
//!
//! Expanding a spec into trials is [`crate::space`]'s job; storing it is the coordinator's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::SweepId;
use crate::limits::{MAX_METRIC_NAME, MAX_SPEC_BYTES, MAX_TRIALS_PER_SWEEP};
use crate::params::{EpsilonSchedule, JobCatalog, JobSchema, ParamKind, ParamSpec, ParamValue};

use yaml::{Entry, Node, NodeKind, Scalar};

/// A validated sweep: what to run, how to search, what to optimise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub name: SweepId,
    pub job_kind: String,
    pub method: Method,
    pub metric: MetricSpec,
    /// Job settings that every trial shares (the `job` keys besides `kind`), already admitted by the
    /// job's schema.
    pub fixed: BTreeMap<String, ParamValue>,
    /// The searched parameters; a W&B-style `value:` is a one-element `Values`.
    pub parameters: BTreeMap<String, ParamSearch>,
    /// Seeds every configuration runs with: distinct, at least one.
    pub seeds: Vec<u64>,
    /// Cap on the number of trials; always set for random search.
    pub max_trials: Option<u64>,
    /// Seed of the random search's sampler.
    pub random_seed: u64,
}

impl SweepSpec {
    /// Hex sha256 of the spec's canonical JSON: equal for equal specs, whatever the YAML looked like
    /// (key order, comments, `1` versus `1.0` for a float parameter).
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        hex::encode(Sha256::digest(json.as_bytes()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Grid,
    Random,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Grid => "grid",
            Method::Random => "random",
        })
    }
}

/// The metric a sweep optimises and how one trial's series of it becomes one number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    pub name: String,
    pub goal: Goal,
    pub summary: Summary,
    /// The value a trial must reach (at least, when maximizing; at most, when minimizing) to count
    /// as having reached the goal: CartPole's 195 ("solved"). `sweep best` gives the share of seeds
    /// that did, per configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

impl MetricSpec {
    /// Whether an objective value reaches [`MetricSpec::target`]; `None` without a target.
    pub fn reaches_target(&self, value: f64) -> Option<bool> {
        self.target.map(|target| match self.goal {
            Goal::Maximize => value >= target,
            Goal::Minimize => value <= target,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Maximize,
    Minimize,
}

impl Goal {
    /// Whether `a` is strictly better than `b` under this goal. NaN is never better than anything,
    /// and any number is better than NaN.
    pub fn better(&self, a: f64, b: f64) -> bool {
        match (a.is_nan(), b.is_nan()) {
            (true, _) => false,
            (false, true) => true,
            (false, false) => match self {
                Goal::Maximize => a > b,
                Goal::Minimize => a < b,
            },
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Goal::Maximize => "maximize",
            Goal::Minimize => "minimize",
        })
    }
}

/// How a trial's series of metric values becomes the one number trials are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    /// The last value reported.
    Last,
    Max,
    Min,
    /// The mean of the last k values (fewer if fewer were reported).
    MeanLast(u32),
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Summary::Last => f.write_str("last"),
            Summary::Max => f.write_str("max"),
            Summary::Min => f.write_str("min"),
            Summary::MeanLast(k) => write!(f, "mean of last {k}"),
        }
    }
}

/// How one parameter is searched. Values are already admitted by the job's schema, and the bounds
/// of a distribution lie inside the parameter's range, so every draw is a valid value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamSearch {
    /// Distinct values in the order written; grid takes each, random picks one uniformly.
    Values(Vec<ParamValue>),
    /// A float drawn uniformly from [min, max] (random search only).
    Uniform { min: f64, max: f64 },
    /// A float whose logarithm is uniform over [ln min, ln max]; `min > 0` (random search only).
    LogUniform { min: f64, max: f64 },
    /// An integer drawn uniformly from min..=max (random search only).
    IntUniform { min: i64, max: i64 },
}

/// One problem in a spec: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// 1-based line in the spec text.
    pub line: usize,
    /// Key path such as `parameters.lr.values[2]`; empty for problems with the whole text.
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            write!(f, "line {}: {}: {}", self.line, self.path, self.message)
        }
    }
}

/// Every problem found in one spec, in line order. Displays one problem per line, each prefixed
/// with the spec's source name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors {
    /// The spec's file name, as the caller gave it.
    pub source: String,
    pub errors: Vec<SpecError>,
}

/// Errors shown in full; the rest are counted. Keeps a message (which travels in a gRPC header)
/// readable and small.
const MAX_ERRORS_SHOWN: usize = 30;
/// Longest message part (a source name, a quoted value) shown.
const MAX_TEXT_SHOWN: usize = 200;

fn shorten(text: &str) -> String {
    if text.len() <= MAX_TEXT_SHOWN {
        return text.to_string();
    }
    let mut end = MAX_TEXT_SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = shorten(&self.source);
        for (index, error) in self.errors.iter().take(MAX_ERRORS_SHOWN).enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{source} {}", shorten(&error.to_string()))?;
        }
        if self.errors.len() > MAX_ERRORS_SHOWN {
            write!(f, "\n... and {} more errors", self.errors.len() - MAX_ERRORS_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

const TOP_LEVEL_KEYS: &[&str] =
    &["name", "job", "method", "metric", "parameters", "seeds", "max_trials", "random_seed"];
const METRIC_KEYS: &[&str] = &["name", "goal", "summary", "last_k", "target"];
const PARAMETER_KEYS: &[&str] = &["values", "value", "distribution", "min", "max"];
const DISTRIBUTIONS: &[&str] = &["uniform", "log_uniform", "int_uniform"];
const SCHEDULES: &[&str] = &["constant", "linear", "exponential", "adaptive"];

/// Parses and validates a sweep spec. `source_name` (usually the file name) prefixes every error
/// line; `catalog` supplies the schema of the job kind the spec names.
pub fn parse_spec(text: &str, source_name: &str, catalog: &dyn JobCatalog) -> Result<SweepSpec, SpecErrors> {
    let fail = |errors| SpecErrors { source: source_name.to_string(), errors };
    if text.len() > MAX_SPEC_BYTES {
        let message = format!("the spec is {} bytes, more than the limit of {MAX_SPEC_BYTES}", text.len());
        return Err(fail(vec![SpecError { line: 1, path: String::new(), message }]));
    }
    let root = yaml::parse(text).map_err(fail)?;
    let mut reader = SpecReader { catalog, errors: Vec::new() };
    match reader.spec(&root) {
        Some(spec) if reader.errors.is_empty() => Ok(spec),
        _ => {
            // Errors are found section by section; report them in the order of the text.
            reader.errors.sort_by_key(|error| error.line);
            Err(fail(reader.errors))
        }
    }
}

/// Walks the node tree, collecting errors. Every reader returns `None` after recording at least one
/// error, or a value that may still be part of a spec with errors elsewhere.
struct SpecReader<'c> {
    catalog: &'c dyn JobCatalog,
    errors: Vec<SpecError>,
}

/// The parts of the `job` section the rest of the spec needs.
struct JobSection<'c> {
    kind: Option<String>,
    schema: Option<&'c JobSchema>,
    /// Line of the `job:` key, for problems with the section as a whole.
    line: usize,
    fixed: BTreeMap<String, ParamValue>,
    /// Line of each fixed setting, to point at it when a parameter repeats it.
    fixed_lines: BTreeMap<String, usize>,
}

impl JobSection<'_> {
    /// A section whose kind is not known: parameters can only be checked for their shape.
    fn unknown(line: usize) -> Self {
        JobSection { kind: None, schema: None, line, fixed: BTreeMap::new(), fixed_lines: BTreeMap::new() }
    }
}

impl<'c> SpecReader<'c> {
    fn error(&mut self, line: usize, path: &str, message: impl Into<String>) {
        self.errors.push(SpecError { line, path: path.to_string(), message: message.into() });
    }

    /// Reads the whole spec. Sections are read independently so that each reports its own errors;
    /// the checks between sections (parameters against the job's schema) run last.
    fn spec(&mut self, root: &Node) -> Option<SweepSpec> {
        if !matches!(root.kind, NodeKind::Map(_)) {
            let message = format!(
                "the top level must be a mapping with keys {}, got {}",
                TOP_LEVEL_KEYS.join(", "),
                root.describe()
            );
            self.error(root.line, "", message);
            return None;
        }
        let mut top = self.fields(root, "", root.line)?;
        let name = top.required(self, "name").and_then(|entry| self.sweep_name(entry));
        let job = match top.required(self, "job") {
            Some(entry) => self.job(entry),
            None => JobSection::unknown(root.line),
        };
        let method_entry = top.required(self, "method");
        let method = method_entry.and_then(|entry| self.method(entry));
        let metric = top.required(self, "metric").and_then(|entry| self.metric(entry));
        let seeds = match top.take("seeds") {
            Some(entry) => self.seeds(entry),
            None => Some(vec![0]),
        };
        let max_trials = match top.take("max_trials") {
            Some(entry) => self.count(&entry.value, entry.line, "max_trials", MAX_TRIALS_PER_SWEEP).map(Some),
            None => {
                if method == Some(Method::Random) {
                    let line = method_entry.map_or(root.line, |entry| entry.line);
                    self.error(line, "max_trials", "missing; random search needs a cap on the number of trials");
                }
                Some(None)
            }
        };
        let random_seed = match top.take("random_seed") {
            Some(entry) => self.uint(&entry.value, entry.line, "random_seed"),
            None => Some(0),
        };
        let parameters_entry = top.take("parameters");
        top.finish(self, TOP_LEVEL_KEYS);

        let parameters = match parameters_entry {
            Some(entry) => self.parameters(entry, &job, method),
            None => Some(BTreeMap::new()),
        };
        self.required_params_present(&job, parameters.as_ref());
        let spec = SweepSpec {
            name: name?,
            job_kind: job.kind?,
            method: method?,
            metric: metric?,
            fixed: job.fixed,
            parameters: parameters?,
            seeds: seeds?,
            max_trials: max_trials?,
            random_seed: random_seed?,
        };
        self.trial_count_within_limit(&spec, parameters_entry.map_or(root.line, |entry| entry.line));
        Some(spec)
    }

    fn sweep_name(&mut self, entry: &Entry) -> Option<SweepId> {
        let name = self.text(&entry.value, entry.line, "name")?;
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok || name.len() > 64 {
            let message = format!(
                "'{name}' is not a valid sweep name (1 to 64 characters of a-z, 0-9, '_' and '-', \
                 starting with a letter or digit)"
            );
            self.error(entry.line, "name", message);
            return None;
        }
        Some(SweepId(name))
    }

    fn job(&mut self, entry: &Entry) -> JobSection<'c> {
        let mut section = JobSection::unknown(entry.line);
        let Some(mut fields) = self.fields(&entry.value, "job", entry.line) else {
            return section;
        };
        if let Some(kind_entry) = fields.required(self, "kind") {
            if let Some(kind) = self.text(&kind_entry.value, kind_entry.line, "job.kind") {
                match self.catalog.schema(&kind) {
                    Some(schema) => section.schema = Some(schema),
                    None => {
                        let message =
                            format!("unknown job kind '{kind}' (known kinds: {})", self.catalog.kinds().join(", "));
                        self.error(kind_entry.line, "job.kind", message);
                    }
                }
                section.kind = Some(kind);
            }
        }
        // Every other key is a setting of the job, fixed for all trials.
        for setting in fields.rest() {
            let path = format!("job.{}", setting.key);
            section.fixed_lines.insert(setting.key.clone(), setting.line);
            let Some(schema) = section.schema else {
                continue;
            };
            let Some(param) = schema.param(&setting.key) else {
                self.error(setting.line, &path, not_taken(schema, &setting.key));
                continue;
            };
            if let Some(value) = self.param_value(&setting.value, setting.line, &path, Some(param)) {
                section.fixed.insert(setting.key.clone(), value);
            }
        }
        section
    }

    fn method(&mut self, entry: &Entry) -> Option<Method> {
        match self.keyword(&entry.value, entry.line, "method", &["grid", "random"])? {
            "grid" => Some(Method::Grid),
            _ => Some(Method::Random),
        }
    }

    fn metric(&mut self, entry: &Entry) -> Option<MetricSpec> {
        let mut fields = self.fields(&entry.value, "metric", entry.line)?;
        let name = fields.required(self, "name").and_then(|name| {
            let text = self.text(&name.value, name.line, "metric.name")?;
            if text.is_empty() || text.len() > MAX_METRIC_NAME {
                let message = format!("a metric name has 1 to {MAX_METRIC_NAME} characters");
                self.error(name.line, "metric.name", message);
                return None;
            }
            Some(text)
        });
        let goal = fields.required(self, "goal").and_then(|goal| {
            match self.keyword(&goal.value, goal.line, "metric.goal", &["maximize", "minimize"])? {
                "maximize" => Some(Goal::Maximize),
                _ => Some(Goal::Minimize),
            }
        });
        let summary_entry = fields.take("summary");
        let summary_name = match summary_entry {
            Some(summary) => {
                self.keyword(&summary.value, summary.line, "metric.summary", &["last", "max", "min", "mean_last"])
            }
            None => Some("last"),
        };
        let last_k_entry = fields.take("last_k");
        let target = fields.take("target").map(|target| self.float(&target.value, target.line, "metric.target"));
        fields.finish(self, METRIC_KEYS);
        let summary = match (summary_name?, last_k_entry) {
            ("mean_last", Some(last_k)) => {
                let k = self.count(&last_k.value, last_k.line, "metric.last_k", u64::from(u32::MAX))?;
                Summary::MeanLast(k as u32)
            }
            ("mean_last", None) => {
                let line = summary_entry.map_or(entry.line, |summary| summary.line);
                self.error(line, "metric.last_k", "missing; summary mean_last needs last_k (how many values)");
                return None;
            }
            (_, Some(last_k)) => {
                self.error(last_k.line, "metric.last_k", "only used with summary: mean_last");
                return None;
            }
            ("last", None) => Summary::Last,
            ("max", None) => Summary::Max,
            (_, None) => Summary::Min,
        };
        let target = match target {
            Some(value) => Some(value?),
            None => None,
        };
        Some(MetricSpec { name: name?, goal: goal?, summary, target })
    }

    fn seeds(&mut self, entry: &Entry) -> Option<Vec<u64>> {
        match &entry.value.kind {
            NodeKind::Seq(items) => {
                if items.is_empty() {
                    self.error(entry.line, "seeds", "empty list (a configuration needs at least one seed)");
                    return None;
                }
                let mut seeds = Vec::with_capacity(items.len());
                let mut first_lines = BTreeMap::new();
                let mut ok = true;
                for (index, item) in items.iter().enumerate() {
                    let path = format!("seeds[{index}]");
                    let Some(seed) = self.uint(item, item.line, &path) else {
                        ok = false;
                        continue;
                    };
                    if let Some(first) = first_lines.insert(seed, item.line) {
                        self.error(item.line, &path, format!("duplicate seed {seed} (already at line {first})"));
                        ok = false;
                    }
                    seeds.push(seed);
                }
                ok.then_some(seeds)
            }
            _ => {
                let Some(Scalar::Int(_)) = entry.value.scalar() else {
                    let message =
                        format!("expected a number of seeds or a list of seeds, got {}", entry.value.describe());
                    self.error(entry.line, "seeds", message);
                    return None;
                };
                let count = self.count(&entry.value, entry.line, "seeds", MAX_TRIALS_PER_SWEEP)?;
                Some((0..count).collect())
            }
        }
    }

    fn parameters(
        &mut self,
        entry: &Entry,
        job: &JobSection<'c>,
        method: Option<Method>,
    ) -> Option<BTreeMap<String, ParamSearch>> {
        let fields = self.fields(&entry.value, "parameters", entry.line)?;
        let mut parameters = BTreeMap::new();
        let mut ok = true;
        for parameter in fields.rest() {
            let path = format!("parameters.{}", parameter.key);
            let param = match job.schema {
                Some(schema) => {
                    let param = schema.param(&parameter.key);
                    if param.is_none() {
                        self.error(parameter.line, &path, not_taken(schema, &parameter.key));
                        ok = false;
                    }
                    param
                }
                None => None,
            };
            if let Some(fixed_line) = job.fixed_lines.get(&parameter.key) {
                let message = format!(
                    "'{}' is also set under job (line {fixed_line}); a parameter is either fixed or searched",
                    parameter.key
                );
                self.error(parameter.line, &path, message);
                ok = false;
            }
            match self.search(parameter, &path, param, method) {
                Some(search) => {
                    parameters.insert(parameter.key.clone(), search);
                }
                None => ok = false,
            }
        }
        ok.then_some(parameters)
    }

    /// Reads one entry of `parameters`. `param` is `None` when the job's schema is unknown, in
    /// which case only the shape of the entry is checked.
    fn search(
        &mut self,
        entry: &Entry,
        path: &str,
        param: Option<&ParamSpec>,
        method: Option<Method>,
    ) -> Option<ParamSearch> {
        let mut fields = self.fields(&entry.value, path, entry.line)?;
        let values = fields.take("values");
        let value = fields.take("value");
        let distribution = fields.take("distribution");
        let min = fields.take("min");
        let max = fields.take("max");
        fields.finish(self, PARAMETER_KEYS);

        let chosen: Vec<&Entry> = [values, value, distribution].into_iter().flatten().collect();
        if chosen.len() > 1 {
            let keys: Vec<&str> = chosen.iter().map(|entry| entry.key.as_str()).collect();
            let message = format!("use only one of values, value and distribution (found {})", keys.join(" and "));
            self.error(chosen[1].line, &join(path, &chosen[1].key), message);
            return None;
        }
        if distribution.is_none() {
            if let Some(bound) = min.or(max) {
                let message = format!("{} needs a distribution ({})", bound.key, DISTRIBUTIONS.join(", "));
                self.error(bound.line, &join(path, &bound.key), message);
                return None;
            }
        }
        if let Some(values) = values {
            return self.values(values, &join(path, "values"), param);
        }
        if let Some(value) = value {
            let value = self.param_value(&value.value, value.line, &join(path, "value"), param)?;
            return Some(ParamSearch::Values(vec![value]));
        }
        if let Some(distribution) = distribution {
            return self.distribution(distribution, min, max, path, param, method);
        }
        self.error(entry.line, path, "needs one of values, value or distribution");
        None
    }

    fn values(&mut self, entry: &Entry, path: &str, param: Option<&ParamSpec>) -> Option<ParamSearch> {
        let NodeKind::Seq(items) = &entry.value.kind else {
            let message = format!("expected a list of values, got {}", entry.value.describe());
            self.error(entry.line, path, message);
            return None;
        };
        if items.is_empty() {
            self.error(entry.line, path, "empty list (a parameter needs at least one value)");
            return None;
        }
        let mut values: Vec<(ParamValue, usize)> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            let Some(value) = self.param_value(item, item.line, &item_path, param) else {
                ok = false;
                continue;
            };
            // A repeated value would repeat a configuration, and with it its trial ids.
            if let Some((_, first)) = values.iter().find(|(seen, _)| *seen == value) {
                let message = format!("duplicate value {value} (already at line {first})");
                self.error(item.line, &item_path, message);
                ok = false;
                continue;
            }
            values.push((value, item.line));
        }
        ok.then(|| ParamSearch::Values(values.into_iter().map(|(value, _)| value).collect()))
    }

    fn distribution(
        &mut self,
        entry: &Entry,
        min: Option<&Entry>,
        max: Option<&Entry>,
        path: &str,
        param: Option<&ParamSpec>,
        method: Option<Method>,
    ) -> Option<ParamSearch> {
        let distribution_path = join(path, "distribution");
        let name = self.keyword(&entry.value, entry.line, &distribution_path, DISTRIBUTIONS)?;
        if method == Some(Method::Grid) {
            let message = "a distribution needs method: random (grid search takes a values list)";
            self.error(entry.line, &distribution_path, message);
            return None;
        }
        let (min_path, max_path) = (join(path, "min"), join(path, "max"));
        let missing = format!("missing; distribution {name} needs min and max");
        if min.is_none() {
            self.error(entry.line, &min_path, missing.clone());
        }
        if max.is_none() {
            self.error(entry.line, &max_path, missing);
        }
        let integer = name == "int_uniform";
        if let Some(param) = param {
            let fits = match param.kind {
                ParamKind::Int { .. } => integer,
                ParamKind::Float { .. } => !integer,
                _ => false,
            };
            if !fits {
                let hint = match (&param.kind, integer) {
                    (ParamKind::Int { .. }, false) => " (use int_uniform)",
                    (ParamKind::Float { .. }, true) => " (use uniform or log_uniform)",
                    _ => " (use a values list)",
                };
                let draws = if integer { "integers" } else { "floats" };
                let message =
                    format!("{name} draws {draws}, but '{}' takes {}{hint}", param.name, param.kind.describe());
                self.error(entry.line, &distribution_path, message);
                return None;
            }
        }
        let (min, max) = (min?, max?);
        if integer {
            let low = self.bound_int(min, &min_path, param);
            let high = self.bound_int(max, &max_path, param);
            let (low, high) = (low?, high?);
            if low > high {
                self.error(min.line, &min_path, format!("min ({low}) is greater than max ({high})"));
                return None;
            }
            return Some(ParamSearch::IntUniform { min: low, max: high });
        }
        let low = self.bound_float(min, &min_path, param);
        let high = self.bound_float(max, &max_path, param);
        let (low, high) = (low?, high?);
        if low > high {
            self.error(min.line, &min_path, format!("min ({low}) is greater than max ({high})"));
            return None;
        }
        if name == "log_uniform" {
            if low <= 0.0 {
                self.error(min.line, &min_path, format!("log_uniform needs min > 0, got {low}"));
                return None;
            }
            return Some(ParamSearch::LogUniform { min: low, max: high });
        }
        Some(ParamSearch::Uniform { min: low, max: high })
    }

    /// An integer bound of `int_uniform`, which the parameter must itself admit.
    fn bound_int(&mut self, entry: &Entry, path: &str, param: Option<&ParamSpec>) -> Option<i64> {
        let Some(Scalar::Int(bound)) = entry.value.scalar() else {
            let message = format!("expected an integer, got {}", entry.value.describe());
            self.error(entry.line, path, message);
            return None;
        };
        if let Some(param) = param {
            if let Err(message) = param.kind.admit(ParamValue::Int(bound)) {
                self.error(entry.line, path, message);
                return None;
            }
        }
        Some(bound)
    }

    /// A float bound of `uniform` or `log_uniform`, which the parameter must itself admit.
    fn bound_float(&mut self, entry: &Entry, path: &str, param: Option<&ParamSpec>) -> Option<f64> {
        let bound = self.float(&entry.value, entry.line, path)?;
        if let Some(param) = param {
            if let Err(message) = param.kind.admit(ParamValue::Float(bound)) {
                self.error(entry.line, path, message);
                return None;
            }
        }
        Some(bound)
    }

    /// Converts a node to a value of `param` and has the parameter's kind admit it. Without a known
    /// parameter the node is converted by its own type and nothing is admitted.
    fn param_value(&mut self, node: &Node, line: usize, path: &str, param: Option<&ParamSpec>) -> Option<ParamValue> {
        let kind = param.map(|param| &param.kind);
        let value = match (&node.kind, kind) {
            (NodeKind::Map(_), Some(ParamKind::Schedule) | None) => {
                ParamValue::Schedule(self.schedule(node, line, path)?)
            }
            (NodeKind::Scalar { value: Scalar::Str(name), .. }, Some(ParamKind::Schedule)) => {
                if name == "adaptive" {
                    ParamValue::Schedule(EpsilonSchedule::LAB_ADAPTIVE)
                } else if SCHEDULES.contains(&name.as_str()) {
                    let message = format!(
                        "schedule '{name}' needs its fields: write {{schedule: {name}, {}}} \
                         (only adaptive has defaults)",
                        schedule_fields(name)
                            .iter()
                            .map(|field| format!("{field}: ..."))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    self.error(line, path, message);
                    return None;
                } else {
                    let message = format!("unknown schedule '{name}' (expected one of {})", SCHEDULES.join(", "));
                    self.error(line, path, message);
                    return None;
                }
            }
            // A choice is a string; `64` in a choice of "32" and "64" means "64".
            (NodeKind::Scalar { value, text }, Some(ParamKind::Choice(_))) if *value != Scalar::Null => {
                ParamValue::Str(text.clone())
            }
            (NodeKind::Scalar { value, .. }, _) => match value {
                Scalar::Null => {
                    self.error(line, path, "a value is missing (got null)");
                    return None;
                }
                Scalar::Bool(b) => ParamValue::Bool(*b),
                Scalar::Int(i) => ParamValue::Int(*i),
                Scalar::Float(x) => ParamValue::Float(*x),
                Scalar::Str(s) => ParamValue::Str(s.clone()),
            },
            (_, _) => {
                let expected = kind.map_or_else(|| "a single value".to_string(), ParamKind::describe);
                self.error(line, path, format!("expected {expected}, got {}", node.describe()));
                return None;
            }
        };
        let Some(kind) = kind else { return Some(value) };
        match kind.admit(value) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(line, path, message);
                None
            }
        }
    }

    /// Reads a schedule mapping such as `{schedule: linear, start: 1.0, end: 0.02, episodes: 5000}`.
    /// An adaptive schedule may leave out fields, which then take `LAB_ADAPTIVE`'s values. The
    /// numbers themselves are checked later, by `ParamKind::admit`.
    fn schedule(&mut self, node: &Node, line: usize, path: &str) -> Option<EpsilonSchedule> {
        let mut fields = self.fields(node, path, line)?;
        let kind_entry = fields.required(self, "schedule")?;
        let kind = self.keyword(&kind_entry.value, kind_entry.line, &join(path, "schedule"), SCHEDULES)?;
        let allowed: Vec<&str> = std::iter::once("schedule").chain(schedule_fields(kind).iter().copied()).collect();
        let mut field = ScheduleFields { fields: &mut fields, path, kind };
        let schedule = match kind {
            "constant" => field.float(self, "value", None).map(|value| EpsilonSchedule::Constant { value }),
            "linear" => {
                let start = field.float(self, "start", None);
                let end = field.float(self, "end", None);
                let episodes = field.uint(self, "episodes", None);
                match (start, end, episodes) {
                    (Some(start), Some(end), Some(episodes)) => Some(EpsilonSchedule::Linear { start, end, episodes }),
                    _ => None,
                }
            }
            "exponential" => {
                let start = field.float(self, "start", None);
                let decay = field.float(self, "decay", None);
                let min = field.float(self, "min", None);
                match (start, decay, min) {
                    (Some(start), Some(decay), Some(min)) => Some(EpsilonSchedule::Exponential { start, decay, min }),
                    _ => None,
                }
            }
            _ => {
                let EpsilonSchedule::Adaptive { start, min, max, factor, window, collapse } =
                    EpsilonSchedule::LAB_ADAPTIVE
                else {
                    unreachable!("LAB_ADAPTIVE is an adaptive schedule")
                };
                let start = field.float(self, "start", Some(start));
                let min = field.float(self, "min", Some(min));
                let max = field.float(self, "max", Some(max));
                let factor = field.float(self, "factor", Some(factor));
                let window = field.uint(self, "window", Some(window));
                let collapse = field.float(self, "collapse", Some(collapse));
                match (start, min, max, factor, window, collapse) {
                    (Some(start), Some(min), Some(max), Some(factor), Some(window), Some(collapse)) => {
                        Some(EpsilonSchedule::Adaptive { start, min, max, factor, window, collapse })
                    }
                    _ => None,
                }
            }
        };
        fields.finish(self, &allowed);
        schedule
    }

    /// A job parameter without a default must be set, under `job` or `parameters`.
    fn required_params_present(&mut self, job: &JobSection<'c>, parameters: Option<&BTreeMap<String, ParamSearch>>) {
        let (Some(schema), Some(parameters)) = (job.schema, parameters) else {
            return;
        };
        for param in schema.params.iter().filter(|param| param.default.is_none()) {
            if !job.fixed_lines.contains_key(param.name) && !parameters.contains_key(param.name) {
                let message = format!(
                    "job kind '{}' needs '{}' ({}; it has no default): set it under job or parameters",
                    schema.kind,
                    param.name,
                    param.kind.describe()
                );
                self.error(job.line, "job", message);
            }
        }
    }

    /// A grid without `max_trials` expands to every configuration times every seed; refuse one that
    /// is too big to hold.
    fn trial_count_within_limit(&mut self, spec: &SweepSpec, line: usize) {
        if spec.method != Method::Grid || spec.max_trials.is_some() {
            return;
        }
        let configs = crate::space::grid_size(spec);
        let trials = configs.and_then(|configs| configs.checked_mul(spec.seeds.len() as u64));
        if trials.is_none_or(|trials| trials > MAX_TRIALS_PER_SWEEP) {
            let size = configs.map_or_else(|| "more than 2^64".to_string(), |configs| configs.to_string());
            let message = format!(
                "the grid has {size} configurations times {} seeds, more than the limit of \
                 {MAX_TRIALS_PER_SWEEP} trials; set max_trials to run a part of it",
                spec.seeds.len()
            );
            self.error(line, "parameters", message);
        }
    }

    // Readers of single values. Each records an error naming `path` at `line` on a wrong type.

    fn fields<'n>(&mut self, node: &'n Node, path: &str, line: usize) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(line, path, format!("expected a mapping, got {}", node.describe()));
            return None;
        };
        let mut first_lines: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in entries {
            if let Some(first) = first_lines.insert(&entry.key, entry.line) {
                first_lines.insert(&entry.key, first);
                let message = format!("duplicate key '{}' (already at line {first})", entry.key);
                self.error(entry.line, &join(path, &entry.key), message);
            }
        }
        Some(Fields { path: path.to_string(), line, entries, taken: vec![false; entries.len()] })
    }

    fn text(&mut self, node: &Node, line: usize, path: &str) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar { value: Scalar::Str(text), .. } => Some(text.clone()),
            _ => {
                self.error(line, path, format!("expected a string, got {}", node.describe()));
                None
            }
        }
    }

    /// A string that must be one of `options`; returns the matching option.
    fn keyword(&mut self, node: &Node, line: usize, path: &str, options: &[&'static str]) -> Option<&'static str> {
        let text = self.text(node, line, path)?;
        let found = options.iter().find(|option| **option == text).copied();
        if found.is_none() {
            self.error(line, path, format!("unknown value '{text}' (expected one of {})", options.join(", ")));
        }
        found
    }

    fn float(&mut self, node: &Node, line: usize, path: &str) -> Option<f64> {
        match node.scalar() {
            Some(Scalar::Float(x)) if x.is_finite() => Some(x),
            Some(Scalar::Int(i)) => Some(i as f64),
            _ => {
                self.error(line, path, format!("expected a finite number, got {}", node.describe()));
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, line: usize, path: &str) -> Option<u64> {
        match node.scalar() {
            Some(Scalar::Int(i)) if i >= 0 => Some(i as u64),
            _ => {
                self.error(line, path, format!("expected a non-negative integer, got {}", node.describe()));
                None
            }
        }
    }

    /// An integer in 1..=limit.
    fn count(&mut self, node: &Node, line: usize, path: &str, limit: u64) -> Option<u64> {
        let count = self.uint(node, line, path)?;
        if count == 0 || count > limit {
            self.error(line, path, format!("must be between 1 and {limit}, got {count}"));
            return None;
        }
        Some(count)
    }
}

/// A mapping being read: hands out entries by key, then reports the keys nobody asked for.
struct Fields<'n> {
    path: String,
    /// Line of the key that owns the mapping, for "missing key" errors.
    line: usize,
    entries: &'n [Entry],
    taken: Vec<bool>,
}

impl<'n> Fields<'n> {
    /// The first entry with `key`, if any. Later duplicates were reported when the mapping opened.
    fn take(&mut self, key: &str) -> Option<&'n Entry> {
        let index = self.entries.iter().position(|entry| entry.key == key)?;
        for (taken, entry) in self.taken.iter_mut().zip(self.entries) {
            if entry.key == key {
                *taken = true;
            }
        }
        Some(&self.entries[index])
    }

    fn required(&mut self, reader: &mut SpecReader<'_>, key: &str) -> Option<&'n Entry> {
        let entry = self.take(key);
        if entry.is_none() {
            reader.error(self.line, &join(&self.path, key), "missing required key");
        }
        entry
    }

    /// The entries not taken yet, in document order, each key once; marks them taken.
    fn rest(mut self) -> Vec<&'n Entry> {
        let mut rest = Vec::new();
        for index in 0..self.entries.len() {
            if !self.taken[index] {
                let entry = &self.entries[index];
                rest.push(self.take(&entry.key).unwrap_or(entry));
            }
        }
        rest
    }

    /// Reports every entry not taken as an unknown key.
    fn finish(self, reader: &mut SpecReader<'_>, allowed: &[&str]) {
        let mut reported = Vec::new();
        for (entry, taken) in self.entries.iter().zip(&self.taken) {
            if !taken && !reported.contains(&entry.key) {
                let message = format!("unknown key '{}' (expected one of {})", entry.key, allowed.join(", "));
                reader.error(entry.line, &join(&self.path, &entry.key), message);
                reported.push(entry.key.clone());
            }
        }
    }
}

/// The fields of one schedule mapping, read by name with an optional default.
struct ScheduleFields<'f, 'n> {
    fields: &'f mut Fields<'n>,
    path: &'f str,
    kind: &'static str,
}

impl ScheduleFields<'_, '_> {
    fn float(&mut self, reader: &mut SpecReader<'_>, key: &str, default: Option<f64>) -> Option<f64> {
        match self.fields.take(key) {
            Some(entry) => reader.float(&entry.value, entry.line, &join(self.path, key)),
            None => default.or_else(|| self.missing(reader, key)),
        }
    }

    fn uint(&mut self, reader: &mut SpecReader<'_>, key: &str, default: Option<u64>) -> Option<u64> {
        match self.fields.take(key) {
            Some(entry) => reader.uint(&entry.value, entry.line, &join(self.path, key)),
            None => default.or_else(|| self.missing(reader, key)),
        }
    }

    fn missing<T>(&self, reader: &mut SpecReader<'_>, key: &str) -> Option<T> {
        let message = format!("missing; the {} schedule needs it", self.kind);
        reader.error(self.fields.line, &join(self.path, key), message);
        None
    }
}

/// The fields of each schedule kind besides `schedule`, in the order the reader takes them.
fn schedule_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "constant" => &["value"],
        "linear" => &["start", "end", "episodes"],
        "exponential" => &["start", "decay", "min"],
        _ => &["start", "min", "max", "factor", "window", "collapse"],
    }
}

fn not_taken(schema: &JobSchema, key: &str) -> String {
    let names: Vec<&str> = schema.params.iter().map(|param| param.name).collect();
    format!("job kind '{}' takes no parameter '{key}' (it takes: {})", schema.kind, names.join(", "))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A YAML document as a tree of nodes that remember their lines.
mod yaml {
    use std::collections::HashMap;

    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
    use yaml_rust2::scanner::{Marker, TScalarStyle};

    use super::SpecError;

    #[derive(Debug, Clone)]
    pub(super) struct Node {
        /// 1-based line where the node starts.
        pub line: usize,
        pub kind: NodeKind,
    }

    #[derive(Debug, Clone)]
    pub(super) enum NodeKind {
        /// A typed scalar with the text it was written as (for messages, and for choices).
        Scalar {
            value: Scalar,
            text: String,
        },
        Seq(Vec<Node>),
        /// Entries in document order; duplicate keys are kept for the reader to report.
        Map(Vec<Entry>),
    }

    #[derive(Debug, Clone)]
    pub(super) struct Entry {
        pub key: String,
        /// Line of the key.
        pub line: usize,
        pub value: Node,
    }

    /// A scalar typed by the YAML 1.2 core schema: plain `1` is an int, `1.5` and `1e-3` floats,
    /// `true` a bool, `~` or nothing null; quoted or block scalars are strings; `!!str`, `!!int`,
    /// `!!float`, `!!bool` and `!!null` force a type.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Scalar {
        Null,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
    }

    impl Node {
        pub fn scalar(&self) -> Option<Scalar> {
            match &self.kind {
                NodeKind::Scalar { value, .. } => Some(value.clone()),
                _ => None,
            }
        }

        /// What the node is, for "expected X, got Y" messages.
        pub fn describe(&self) -> String {
            match &self.kind {
                NodeKind::Scalar { value, text } => match value {
                    Scalar::Null => "nothing (null)".to_string(),
                    Scalar::Bool(_) => format!("bool {text}"),
                    Scalar::Int(_) => format!("int {text}"),
                    Scalar::Float(_) => format!("float {text}"),
                    Scalar::Str(_) => format!("string '{text}'"),
                },
                NodeKind::Seq(_) => "a list".to_string(),
                NodeKind::Map(_) => "a mapping".to_string(),
            }
        }
    }

    /// Parses `text` into the tree of its only document. An empty text is a null scalar.
    pub(super) fn parse(text: &str) -> Result<Node, Vec<SpecError>> {
        let mut builder = TreeBuilder::default();
        // Pull events one by one: `Parser::load` recurses once per nesting level, and a hostile
        // spec nests thousands deep.
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((event, mark)) => {
                    let end = event == Event::StreamEnd;
                    builder.on_event(event, mark);
                    if end {
                        break;
                    }
                }
                Err(error) => {
                    let message = format!("YAML syntax error: {}", error.info());
                    return Err(vec![SpecError { line: error.marker().line(), path: String::new(), message }]);
                }
            }
        }
        if builder.documents > 1 {
            builder.errors.push(SpecError {
                line: builder.second_document_line,
                path: String::new(),
                message: "a spec is one YAML document; found another one here".to_string(),
            });
        }
        if !builder.errors.is_empty() {
            return Err(builder.errors);
        }
        Ok(builder
            .root
            .unwrap_or(Node { line: 1, kind: NodeKind::Scalar { value: Scalar::Null, text: String::new() } }))
    }

    /// Deepest nesting a spec may use. A real spec nests four levels; the cap keeps a hostile one
    /// (thousands of `- - - -`) from exhausting the stack while the tree is built or dropped.
    const MAX_DEPTH: usize = 32;
    /// Most nodes a spec may expand to, alias copies included (an alias "bomb" of a few hundred
    /// bytes would otherwise expand to billions).
    const MAX_NODES: usize = 100_000;

    /// Receives parser events and assembles nodes on a stack of open collections.
    #[derive(Default)]
    struct TreeBuilder {
        stack: Vec<Open>,
        /// Anchored nodes by anchor id with their node counts, so that aliases can copy them.
        anchors: HashMap<usize, (Node, usize)>,
        root: Option<Node>,
        documents: usize,
        second_document_line: usize,
        errors: Vec<SpecError>,
        /// Nodes built so far, alias copies counted in full.
        nodes: usize,
        /// Collections opened below the depth cap, being skipped.
        skipping: usize,
        /// Set once the node cap is hit: every later event is ignored.
        aborted: bool,
    }

    fn count_nodes(node: &Node) -> usize {
        1 + match &node.kind {
            NodeKind::Scalar { .. } => 0,
            NodeKind::Seq(items) => items.iter().map(count_nodes).sum(),
            NodeKind::Map(entries) => entries.iter().map(|e| count_nodes(&e.value)).sum(),
        }
    }

    enum Open {
        Seq { line: usize, anchor: usize, items: Vec<Node> },
        Map { line: usize, anchor: usize, entries: Vec<Entry>, key: Option<(String, usize)> },
    }

    impl TreeBuilder {
        fn error(&mut self, line: usize, message: String) {
            self.errors.push(SpecError { line, path: String::new(), message });
        }

        fn push(&mut self, node: Node, anchor: usize) {
            if anchor > 0 {
                let size = count_nodes(&node);
                self.anchors.insert(anchor, (node.clone(), size));
            }
            match self.stack.last_mut() {
                None => {
                    if self.documents == 1 {
                        self.root = Some(node);
                    }
                }
                Some(Open::Seq { items, .. }) => items.push(node),
                Some(Open::Map { entries, key, .. }) => match key.take() {
                    Some((key, line)) => entries.push(Entry { key, line, value: node }),
                    None => match node.kind {
                        NodeKind::Scalar { text, .. } => *key = Some((text, node.line)),
                        _ => {
                            *key = Some((String::new(), node.line));
                            self.error(node.line, "a mapping key must be a plain string".to_string());
                        }
                    },
                },
            }
        }
    }

    impl MarkedEventReceiver for TreeBuilder {
        fn on_event(&mut self, event: Event, mark: Marker) {
            let line = mark.line();
            if self.aborted {
                return;
            }
            if self.skipping > 0 {
                match event {
                    Event::SequenceStart(..) | Event::MappingStart(..) => self.skipping += 1,
                    Event::SequenceEnd | Event::MappingEnd => {
                        self.skipping -= 1;
                        if self.skipping == 0 {
                            self.push(
                                Node { line, kind: NodeKind::Scalar { value: Scalar::Null, text: String::new() } },
                                0,
                            );
                        }
                    }
                    _ => {}
                }
                return;
            }
            let opens = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
            if opens && self.stack.len() >= MAX_DEPTH {
                self.error(line, format!("nesting deeper than {MAX_DEPTH} levels"));
                self.skipping = 1;
                return;
            }
            let added = match &event {
                Event::Alias(anchor) => self.anchors.get(anchor).map_or(1, |(_, size)| *size),
                Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) => 1,
                _ => 0,
            };
            self.nodes += added;
            if self.nodes > MAX_NODES {
                self.error(line, format!("the spec expands to more than {MAX_NODES} nodes (aliases count in full)"));
                self.aborted = true;
                return;
            }
            match event {
                Event::DocumentStart => {
                    self.documents += 1;
                    if self.documents == 2 {
                        self.second_document_line = line;
                    }
                }
                Event::Scalar(text, style, anchor, tag) => match resolve(&text, style, tag.as_ref()) {
                    Ok(value) => self.push(Node { line, kind: NodeKind::Scalar { value, text } }, anchor),
                    Err(message) => {
                        self.error(line, message);
                        self.push(Node { line, kind: NodeKind::Scalar { value: Scalar::Null, text } }, anchor);
                    }
                },
                Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq { line, anchor, items: Vec::new() }),
                Event::MappingStart(anchor, _) => {
                    self.stack.push(Open::Map { line, anchor, entries: Vec::new(), key: None })
                }
                Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                    Some(Open::Seq { line, anchor, items }) => {
                        self.push(Node { line, kind: NodeKind::Seq(items) }, anchor)
                    }
                    Some(Open::Map { line, anchor, entries, .. }) => {
                        self.push(Node { line, kind: NodeKind::Map(entries) }, anchor)
                    }
                    None => {}
                },
                Event::Alias(anchor) => match self.anchors.get(&anchor).map(|(node, _)| node.clone()) {
                    Some(node) => self.push(Node { line, ..node }, 0),
                    None => {
                        self.error(line, "alias of an unknown anchor".to_string());
                        let text = String::new();
                        self.push(Node { line, kind: NodeKind::Scalar { value: Scalar::Null, text } }, 0);
                    }
                },
                Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            }
        }
    }

    const CORE_TAG: &str = "tag:yaml.org,2002:";

    fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Scalar, String> {
        if let Some(tag) = tag {
            if tag.handle != CORE_TAG {
                return Err(format!("unsupported tag '{}{}'", tag.handle, tag.suffix));
            }
            let wrong = |what: &str| format!("'{text}' is not {what} (tagged !!{})", tag.suffix);
            return match tag.suffix.as_str() {
                "str" => Ok(Scalar::Str(text.to_string())),
                "int" => match resolve_plain(text)? {
                    Scalar::Int(i) => Ok(Scalar::Int(i)),
                    _ => Err(wrong("an integer")),
                },
                "float" => match resolve_plain(text)? {
                    Scalar::Int(i) => Ok(Scalar::Float(i as f64)),
                    Scalar::Float(x) => Ok(Scalar::Float(x)),
                    _ => Err(wrong("a number")),
                },
                "bool" => match resolve_plain(text)? {
                    Scalar::Bool(b) => Ok(Scalar::Bool(b)),
                    _ => Err(wrong("a bool")),
                },
                "null" => match resolve_plain(text)? {
                    Scalar::Null => Ok(Scalar::Null),
                    _ => Err(wrong("null")),
                },
                other => Err(format!("unsupported tag '!!{other}'")),
            };
        }
        match style {
            TScalarStyle::Plain => resolve_plain(text),
            _ => Ok(Scalar::Str(text.to_string())),
        }
    }

    /// The core schema's resolution of a plain scalar.
    fn resolve_plain(text: &str) -> Result<Scalar, String> {
        let scalar = match text {
            "" | "~" | "null" | "Null" | "NULL" => Scalar::Null,
            "true" | "True" | "TRUE" => Scalar::Bool(true),
            "false" | "False" | "FALSE" => Scalar::Bool(false),
            ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Scalar::Float(f64::INFINITY),
            "-.inf" | "-.Inf" | "-.INF" => Scalar::Float(f64::NEG_INFINITY),
            ".nan" | ".NaN" | ".NAN" => Scalar::Float(f64::NAN),
            _ => {
                let too_big = || format!("integer {text} does not fit in 64 bits");
                if let Some(hex) = text.strip_prefix("0x").filter(|d| is_digits(d, 16)) {
                    Scalar::Int(i64::from_str_radix(hex, 16).map_err(|_| too_big())?)
                } else if let Some(octal) = text.strip_prefix("0o").filter(|d| is_digits(d, 8)) {
                    Scalar::Int(i64::from_str_radix(octal, 8).map_err(|_| too_big())?)
                } else if is_digits(text.strip_prefix(['-', '+']).unwrap_or(text), 10) {
                    Scalar::Int(text.parse().map_err(|_| too_big())?)
                } else if is_core_float(text) {
                    Scalar::Float(text.parse().map_err(|_| format!("'{text}' is not a number"))?)
                } else {
                    Scalar::Str(text.to_string())
                }
            }
        };
        Ok(scalar)
    }

    fn is_digits(text: &str, radix: u32) -> bool {
        !text.is_empty() && text.chars().all(|c| c.is_digit(radix))
    }

    /// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
    fn is_core_float(text: &str) -> bool {
        let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
            None => (unsigned, None),
        };
        let mantissa_ok = match mantissa.split_once('.') {
            Some(("", fraction)) => is_digits(fraction, 10),
            Some((whole, fraction)) => is_digits(whole, 10) && (fraction.is_empty() || is_digits(fraction, 10)),
            None => is_digits(mantissa, 10),
        };
        let exponent_ok =
            exponent.is_none_or(|exponent| is_digits(exponent.strip_prefix(['-', '+']).unwrap_or(exponent), 10));
        mantissa_ok && exponent_ok
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::params::ParamSpec;

    /// A catalog with one job of each parameter kind (`toy`) and one with a required parameter.
    pub(crate) struct TestCatalog {
        schemas: Vec<JobSchema>,
    }

    impl JobCatalog for TestCatalog {
        fn schema(&self, kind: &str) -> Option<&JobSchema> {
            self.schemas.iter().find(|schema| schema.kind == kind)
        }

        fn kinds(&self) -> Vec<&'static str> {
            self.schemas.iter().map(|schema| schema.kind).collect()
        }
    }

    fn param(name: &'static str, kind: ParamKind, default: Option<ParamValue>) -> ParamSpec {
        ParamSpec { name, kind, default, help: "" }
    }

    pub(crate) fn test_catalog() -> TestCatalog {
        let toy = JobSchema {
            kind: "toy",
            description: "a job with one parameter of each kind",
            params: vec![
                param("lr", ParamKind::Float { min: 0.0, max: 1.0 }, Some(ParamValue::Float(0.1))),
                param("gamma", ParamKind::Float { min: 0.0, max: 1.0 }, Some(ParamValue::Float(0.99))),
                param("episodes", ParamKind::Int { min: 1, max: 100_000 }, Some(ParamValue::Int(1000))),
                param("optimizer", ParamKind::Choice(&["adam", "sgd", "64"]), Some(ParamValue::Str("adam".into()))),
                param("double", ParamKind::Bool, Some(ParamValue::Bool(false))),
                param("epsilon", ParamKind::Schedule, Some(ParamValue::Schedule(EpsilonSchedule::LAB_ADAPTIVE))),
            ],
        };
        let needy = JobSchema {
            kind: "needy",
            description: "a job with a required parameter",
            params: vec![param("steps", ParamKind::Int { min: 1, max: 10 }, None)],
        };
        TestCatalog { schemas: vec![toy, needy] }
    }

    pub(crate) fn parse(text: &str) -> Result<SweepSpec, SpecErrors> {
        parse_spec(text, "test.yaml", &test_catalog())
    }

    /// Lines 1 to 7 of a grid spec; a test's own lines start at line 8.
    const GRID_HEAD: &str = "\
name: toy-sweep
job:
  kind: toy
method: grid
metric:
  name: reward
  goal: maximize
";

    /// Lines 1 to 8 of a random spec; a test's own lines start at line 9.
    const RANDOM_HEAD: &str = "\
name: toy-sweep
job:
  kind: toy
method: random
metric:
  name: reward
  goal: maximize
max_trials: 12
";

    fn grid(tail: &str) -> Result<SweepSpec, SpecErrors> {
        parse(&format!("{GRID_HEAD}{tail}"))
    }

    fn random(tail: &str) -> Result<SweepSpec, SpecErrors> {
        parse(&format!("{RANDOM_HEAD}{tail}"))
    }

    /// Asserts that one error line reads `test.yaml line {line}: {path}: ...{fragment}...`.
    #[track_caller]
    fn assert_error(result: Result<SweepSpec, SpecErrors>, line: usize, path: &str, fragment: &str) {
        let text = result.expect_err("the spec should be refused").to_string();
        let prefix = if path.is_empty() {
            format!("test.yaml line {line}: ")
        } else {
            format!("test.yaml line {line}: {path}: ")
        };
        assert!(
            text.lines().any(|error| error.starts_with(&prefix) && error.contains(fragment)),
            "no error starting '{prefix}' containing '{fragment}' in:\n{text}"
        );
    }

    #[test]
    fn valid_spec_parses_to_the_expected_struct() {
        let text = "\
name: toy-sweep          # a comment
job:
  kind: toy
  episodes: 500
  double: true
method: grid
metric:
  name: reward
  goal: minimize
  summary: mean_last
  last_k: 3
parameters:
  lr:
    values: [0.01, 1]
  gamma:
    value: 0.9
  optimizer:
    values: [sgd, 64]
  epsilon:
    values:
      - adaptive
      - {schedule: exponential, start: 1.0, decay: 0.999, min: 0.02}
      - {schedule: constant, value: 0.1}
      - {schedule: linear, start: 1.0, end: 0.02, episodes: 5000}
      - {schedule: adaptive, start: 0.05}
seeds: [1, 7, 42]
max_trials: 100
random_seed: 5
";
        let spec = parse(text).unwrap();
        let expected = SweepSpec {
            name: SweepId::from("toy-sweep"),
            job_kind: "toy".to_string(),
            method: Method::Grid,
            metric: MetricSpec {
                name: "reward".to_string(),
                goal: Goal::Minimize,
                summary: Summary::MeanLast(3),
                target: None,
            },
            fixed: BTreeMap::from([
                ("double".to_string(), ParamValue::Bool(true)),
                ("episodes".to_string(), ParamValue::Int(500)),
            ]),
            parameters: BTreeMap::from([
                ("lr".to_string(), ParamSearch::Values(vec![ParamValue::Float(0.01), ParamValue::Float(1.0)])),
                ("gamma".to_string(), ParamSearch::Values(vec![ParamValue::Float(0.9)])),
                (
                    "optimizer".to_string(),
                    ParamSearch::Values(vec![ParamValue::Str("sgd".into()), ParamValue::Str("64".into())]),
                ),
                (
                    "epsilon".to_string(),
                    ParamSearch::Values(vec![
                        ParamValue::Schedule(EpsilonSchedule::LAB_ADAPTIVE),
                        ParamValue::Schedule(EpsilonSchedule::Exponential { start: 1.0, decay: 0.999, min: 0.02 }),
                        ParamValue::Schedule(EpsilonSchedule::Constant { value: 0.1 }),
                        ParamValue::Schedule(EpsilonSchedule::Linear { start: 1.0, end: 0.02, episodes: 5000 }),
                        ParamValue::Schedule(EpsilonSchedule::Adaptive {
                            start: 0.05,
                            min: 0.02,
                            max: 0.15,
                            factor: 0.9,
                            window: 1000,
                            collapse: 0.5,
                        }),
                    ]),
                ),
            ]),
            seeds: vec![1, 7, 42],
            max_trials: Some(100),
            random_seed: 5,
        };
        assert_eq!(spec, expected);
    }

    #[test]
    fn defaults_apply_to_optional_keys() {
        let spec = grid("").unwrap();
        assert_eq!(spec.metric.summary, Summary::Last);
        assert_eq!(spec.seeds, vec![0]);
        assert_eq!(spec.max_trials, None);
        assert_eq!(spec.random_seed, 0);
        assert!(spec.parameters.is_empty() && spec.fixed.is_empty());
        assert_eq!(grid("seeds: 3\n").unwrap().seeds, vec![0, 1, 2]);
    }

    #[test]
    fn random_spec_with_distributions_parses() {
        let spec = random(
            "\
parameters:
  lr: {distribution: log_uniform, min: 0.0001, max: 0.1}
  gamma: {distribution: uniform, min: 0, max: 1}
  episodes: {distribution: int_uniform, min: 10, max: 20}
",
        )
        .unwrap();
        assert_eq!(spec.parameters["lr"], ParamSearch::LogUniform { min: 0.0001, max: 0.1 });
        assert_eq!(spec.parameters["gamma"], ParamSearch::Uniform { min: 0.0, max: 1.0 });
        assert_eq!(spec.parameters["episodes"], ParamSearch::IntUniform { min: 10, max: 20 });
        assert_eq!(spec.max_trials, Some(12));
    }

    #[test]
    fn spec_round_trips_through_json_and_fingerprint_tracks_content() {
        let spec = grid("parameters:\n  lr: {values: [0.1, 0.2]}\n  epsilon: {values: [adaptive]}\n").unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SweepSpec>(&json).unwrap(), spec);
        // Same content written differently: same fingerprint.
        let reordered = "\
metric: {goal: maximize, name: reward}
method: grid
parameters:
  epsilon: {values: [adaptive]}
  lr:
    values:
      - 0.1
      - 0.2
job: {kind: toy}
name: toy-sweep
";
        assert_eq!(parse(reordered).unwrap().fingerprint(), spec.fingerprint());
        let changed = grid("parameters:\n  lr: {values: [0.1, 0.3]}\n  epsilon: {values: [adaptive]}\n").unwrap();
        assert_ne!(changed.fingerprint(), spec.fingerprint());
        assert_eq!(spec.fingerprint().len(), 64);
    }

    #[test]
    fn goal_better_follows_direction_and_ranks_nan_last() {
        assert!(Goal::Maximize.better(2.0, 1.0));
        assert!(!Goal::Maximize.better(1.0, 1.0));
        assert!(Goal::Minimize.better(1.0, 2.0));
        assert!(Goal::Minimize.better(5.0, f64::NAN));
        assert!(!Goal::Maximize.better(f64::NAN, 5.0));
    }

    #[test]
    fn yaml_syntax_error_names_its_line() {
        assert_error(parse("name: toy-sweep\njob:\n  kind: [toy\nmethod: grid\n"), 4, "", "YAML syntax error");
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let deep = format!("name: deep\nlist:\n{}x\n", "- ".repeat(20_000));
        let err = parse(&deep).unwrap_err().to_string();
        assert!(err.contains("nesting deeper than 32 levels"), "{err}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("name: bomb\nlols:\n  - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..9 {
            let refs = vec![format!("*l{}", level - 1); 10].join(", ");
            bomb.push_str(&format!("  - &l{level} [{refs}]\n"));
        }
        let err = parse(&bomb).unwrap_err().to_string();
        assert!(err.contains("more than 100000 nodes"), "{err}");
    }

    #[test]
    fn error_lists_are_capped() {
        let many: String = (0..100).map(|i| format!("key{i}: {i}\n")).collect();
        let err = parse(&format!("{GRID_HEAD}{many}")).unwrap_err().to_string();
        assert!(err.contains("more errors"), "{err}");
        assert!(err.lines().count() <= 31, "{} lines", err.lines().count());
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        assert_error(parse("- name: toy-sweep\n"), 1, "", "top level must be a mapping");
        assert_error(parse(""), 1, "", "top level must be a mapping");
    }

    #[test]
    fn second_document_is_refused() {
        assert_error(parse(&format!("{GRID_HEAD}---\nname: other\n")), 8, "", "one YAML document");
    }

    #[test]
    fn unknown_top_level_key_is_refused() {
        assert_error(grid("early_terminte: {type: hyperband}\n"), 8, "early_terminte", "unknown key");
    }

    #[test]
    fn unknown_metric_key_is_refused() {
        let text =
            "name: toy-sweep\njob: {kind: toy}\nmethod: grid\nmetric:\n  name: reward\n  goal: maximize\n  mode: max\n";
        assert_error(
            parse(text),
            7,
            "metric.mode",
            "unknown key 'mode' (expected one of name, goal, summary, last_k, target)",
        );
    }

    #[test]
    fn unknown_parameter_entry_key_is_refused() {
        assert_error(
            grid("parameters:\n  lr:\n    values: [0.1]\n    step: 2\n"),
            11,
            "parameters.lr.step",
            "unknown key",
        );
    }

    #[test]
    fn duplicate_key_is_refused() {
        assert_error(grid("seeds: 1\nseeds: 2\n"), 9, "seeds", "duplicate key 'seeds' (already at line 8)");
    }

    #[test]
    fn missing_required_keys_are_each_reported() {
        assert_error(parse("name: toy-sweep\njob: {kind: toy}\n"), 1, "method", "missing required key");
        assert_error(parse("name: toy-sweep\njob: {kind: toy}\n"), 1, "metric", "missing required key");
        let text = "name: toy-sweep\njob: {kind: toy}\nmethod: grid\nmetric:\n  name: reward\n";
        assert_error(parse(text), 4, "metric.goal", "missing required key");
        assert_error(parse("name: toy-sweep\njob: {episodes: 3}\n"), 2, "job.kind", "missing required key");
    }

    #[test]
    fn invalid_sweep_name_is_refused() {
        assert_error(parse("name: Cart Pole\n"), 1, "name", "not a valid sweep name");
    }

    #[test]
    fn wrong_type_is_refused() {
        assert_error(
            grid("seeds: many\n"),
            8,
            "seeds",
            "expected a number of seeds or a list of seeds, got string 'many'",
        );
        assert_error(grid("max_trials: [1]\n"), 8, "max_trials", "expected a non-negative integer, got a list");
        assert_error(grid("parameters:\n  lr: 0.1\n"), 9, "parameters.lr", "expected a mapping");
    }

    #[test]
    fn empty_values_list_is_refused() {
        assert_error(grid("parameters:\n  lr:\n    values: []\n"), 10, "parameters.lr.values", "empty list");
    }

    #[test]
    fn duplicate_value_is_refused() {
        let result = grid("parameters:\n  lr:\n    values:\n      - 1\n      - 1.0\n");
        assert_error(result, 12, "parameters.lr.values[1]", "duplicate value 1 (already at line 11)");
    }

    #[test]
    fn min_greater_than_max_is_refused() {
        let result = random("parameters:\n  lr:\n    distribution: uniform\n    min: 0.5\n    max: 0.1\n");
        assert_error(result, 12, "parameters.lr.min", "min (0.5) is greater than max (0.1)");
    }

    #[test]
    fn log_uniform_needs_positive_min() {
        let result = random("parameters:\n  lr:\n    distribution: log_uniform\n    min: 0\n    max: 0.1\n");
        assert_error(result, 12, "parameters.lr.min", "log_uniform needs min > 0");
    }

    #[test]
    fn distribution_bounds_must_lie_in_the_parameter_range() {
        let result = random("parameters:\n  lr:\n    distribution: uniform\n    min: 0.5\n    max: 2\n");
        assert_error(result, 13, "parameters.lr.max", "2 is outside [0, 1]");
    }

    #[test]
    fn distribution_needs_min_and_max() {
        assert_error(
            random("parameters:\n  lr:\n    distribution: uniform\n    min: 0.5\n"),
            11,
            "parameters.lr.max",
            "missing",
        );
        assert_error(
            random("parameters:\n  lr:\n    min: 0.5\n    max: 0.6\n"),
            11,
            "parameters.lr.min",
            "needs a distribution",
        );
    }

    #[test]
    fn distribution_with_grid_is_refused() {
        let result = grid("parameters:\n  lr:\n    distribution: uniform\n    min: 0.1\n    max: 0.5\n");
        assert_error(result, 10, "parameters.lr.distribution", "needs method: random");
    }

    #[test]
    fn unknown_distribution_is_refused() {
        let result = random("parameters:\n  lr:\n    distribution: normal\n    min: 0.1\n    max: 0.5\n");
        assert_error(result, 11, "parameters.lr.distribution", "unknown value 'normal' (expected one of uniform");
    }

    #[test]
    fn values_and_distribution_together_are_refused() {
        let result = random("parameters:\n  lr:\n    values: [0.1]\n    distribution: uniform\n");
        assert_error(result, 12, "parameters.lr.distribution", "use only one of values, value and distribution");
    }

    #[test]
    fn unknown_job_kind_lists_the_known_kinds() {
        let text = "name: toy-sweep\njob:\n  kind: pong\nmethod: grid\nmetric: {name: reward, goal: maximize}\n";
        assert_error(parse(text), 3, "job.kind", "unknown job kind 'pong' (known kinds: toy, needy)");
    }

    #[test]
    fn parameter_the_job_does_not_take_is_refused() {
        let taken = "it takes: lr, gamma, episodes, optimizer, double, epsilon";
        assert_error(grid("parameters:\n  momentum:\n    values: [0.9]\n"), 9, "parameters.momentum", taken);
        let text =
            "name: toy-sweep\njob:\n  kind: toy\n  momentum: 0.9\nmethod: grid\nmetric: {name: r, goal: maximize}\n";
        assert_error(parse(text), 4, "job.momentum", "job kind 'toy' takes no parameter 'momentum'");
    }

    #[test]
    fn value_the_parameter_kind_refuses_is_reported_with_admit_message() {
        assert_error(
            grid("parameters:\n  lr:\n    values: [0.5, 2.0]\n"),
            10,
            "parameters.lr.values[1]",
            "2 is outside [0, 1]",
        );
        let text = "name: toy-sweep\njob:\n  kind: toy\n  optimizer: rmsprop\nmethod: grid\nmetric: {name: r, goal: maximize}\n";
        assert_error(parse(text), 4, "job.optimizer", "'rmsprop' is not one of adam, sgd, 64");
        assert_error(
            grid("parameters:\n  double:\n    value: 1\n"),
            10,
            "parameters.double.value",
            "expected true or false",
        );
    }

    #[test]
    fn int_parameter_given_a_float_is_refused() {
        let result = grid("parameters:\n  episodes:\n    values: [10, 2.5]\n");
        assert_error(result, 10, "parameters.episodes.values[1]", "expected an integer in [1, 100000], got float 2.5");
    }

    #[test]
    fn quoted_number_is_a_string() {
        let result = grid("parameters:\n  episodes:\n    values: [\"10\"]\n");
        assert_error(result, 10, "parameters.episodes.values[0]", "got string 10");
        let spec = grid("parameters:\n  episodes:\n    values: [!!int \"10\", 0x10]\n").unwrap();
        assert_eq!(spec.parameters["episodes"], ParamSearch::Values(vec![ParamValue::Int(10), ParamValue::Int(16)]));
    }

    #[test]
    fn same_parameter_in_job_and_parameters_is_refused() {
        let text = "\
name: toy-sweep
job:
  kind: toy
  lr: 0.1
method: grid
metric: {name: r, goal: maximize}
parameters:
  lr:
    values: [0.2]
";
        assert_error(parse(text), 8, "parameters.lr", "also set under job (line 4)");
    }

    #[test]
    fn int_uniform_on_a_non_int_parameter_is_refused() {
        let result = random("parameters:\n  lr:\n    distribution: int_uniform\n    min: 0\n    max: 1\n");
        assert_error(result, 11, "parameters.lr.distribution", "int_uniform draws integers, but 'lr' takes a float");
        let result = random("parameters:\n  episodes:\n    distribution: uniform\n    min: 1\n    max: 5\n");
        assert_error(result, 11, "parameters.episodes.distribution", "(use int_uniform)");
    }

    #[test]
    fn random_without_max_trials_is_refused() {
        let text = "name: toy-sweep\njob: {kind: toy}\nmethod: random\nmetric: {name: r, goal: maximize}\n";
        assert_error(parse(text), 3, "max_trials", "random search needs a cap");
    }

    #[test]
    fn zero_seeds_and_duplicate_seeds_are_refused() {
        assert_error(grid("seeds: 0\n"), 8, "seeds", "must be between 1 and");
        assert_error(grid("seeds:\n  - 1\n  - 7\n  - 1\n"), 11, "seeds[2]", "duplicate seed 1 (already at line 9)");
        assert_error(grid("seeds: []\n"), 8, "seeds", "empty list");
    }

    #[test]
    fn unknown_metric_summary_is_refused() {
        let text = "name: toy-sweep\njob: {kind: toy}\nmethod: grid\nmetric:\n  name: r\n  goal: maximize\n  summary: median\n";
        assert_error(parse(text), 7, "metric.summary", "unknown value 'median'");
    }

    #[test]
    fn metric_target_is_a_number_and_says_which_side_reaches_it() {
        let head = "name: toy-sweep\njob: {kind: toy}\nmethod: grid\nmetric:\n  name: r\n  goal: maximize\n";
        assert_error(parse(&format!("{head}  target: high\n")), 7, "metric.target", "expected a finite number");
        let spec = parse(&format!("{head}  target: 195\n")).unwrap();
        assert_eq!(spec.metric.target, Some(195.0));
        assert_eq!(spec.metric.reaches_target(195.0), Some(true));
        assert_eq!(spec.metric.reaches_target(194.9), Some(false));
        let min = MetricSpec { goal: Goal::Minimize, ..spec.metric.clone() };
        assert_eq!(min.reaches_target(194.9), Some(true));
        assert_eq!(MetricSpec { target: None, ..min }.reaches_target(0.0), None);
    }

    #[test]
    fn mean_last_needs_last_k_and_last_k_needs_mean_last() {
        let head = "name: toy-sweep\njob: {kind: toy}\nmethod: grid\nmetric:\n  name: r\n  goal: maximize\n";
        assert_error(parse(&format!("{head}  summary: mean_last\n")), 7, "metric.last_k", "needs last_k");
        assert_error(parse(&format!("{head}  summary: mean_last\n  last_k: 0\n")), 8, "metric.last_k", "between 1 and");
        assert_error(parse(&format!("{head}  last_k: 3\n")), 7, "metric.last_k", "only used with summary: mean_last");
    }

    #[test]
    fn schedule_fields_are_checked_by_kind() {
        let result =
            grid("parameters:\n  epsilon:\n    values:\n      - {schedule: exponential, start: 1.0, min: 0.02}\n");
        assert_error(result, 11, "parameters.epsilon.values[0].decay", "missing; the exponential schedule needs it");
        let result = grid("parameters:\n  epsilon:\n    value: {schedule: constant, value: 0.1, end: 0.2}\n");
        assert_error(result, 10, "parameters.epsilon.value.end", "unknown key 'end' (expected one of schedule, value)");
        let result = grid("parameters:\n  epsilon:\n    values: [linear]\n");
        assert_error(result, 10, "parameters.epsilon.values[0]", "schedule 'linear' needs its fields");
        let result =
            grid("parameters:\n  epsilon:\n    value: {schedule: exponential, start: 1.0, decay: 1.5, min: 0}\n");
        assert_error(result, 10, "parameters.epsilon.value", "decay must be within (0, 1]");
        let result = grid("parameters:\n  epsilon:\n    value: {schedule: cosine}\n");
        assert_error(result, 10, "parameters.epsilon.value.schedule", "unknown value 'cosine'");
    }

    #[test]
    fn parameter_without_default_must_be_set() {
        let text = "name: needy-sweep\njob:\n  kind: needy\nmethod: grid\nmetric: {name: r, goal: maximize}\n";
        assert_error(parse(text), 2, "job", "job kind 'needy' needs 'steps'");
        assert!(parse(&format!("{text}parameters:\n  steps: {{values: [1, 2]}}\n")).is_ok());
    }

    #[test]
    fn grid_beyond_the_trial_limit_needs_max_trials() {
        let tail = "parameters:\n  lr: {values: [0.1, 0.2]}\nseeds: 1000000\n";
        assert_error(grid(tail), 8, "parameters", "set max_trials");
        assert!(grid(&format!("{tail}max_trials: 10\n")).is_ok());
    }

    #[test]
    fn all_errors_are_reported_together_in_line_order() {
        let text = "\
name: Bad Name
job:
  kind: toy
  episodes: 0
method: grid
metric:
  name: reward
  goal: up
parameters:
  lr:
    values: []
seeds: many
colour: blue
";
        let errors = parse(text).unwrap_err();
        let lines: Vec<usize> = errors.errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, vec![1, 4, 8, 11, 12, 13], "{errors}");
        assert_eq!(errors.to_string().lines().count(), 6);
        assert!(errors.to_string().starts_with("test.yaml line 1: name: "));
    }
}
