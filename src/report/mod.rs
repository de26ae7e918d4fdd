//! `sweep report`: a finished sweep's Parquet results as one HTML page with PNG figures.
//!
//! Reads only the results directory (`<results>/<sweep>/`), never the coordinator's state: the
//! page can be made on any machine the Parquet files were copied to. The output directory holds
//! `index.html` and every image it shows, by relative path, with inline CSS and no script: it opens
//! offline and can be moved or zipped whole.
//!
//! # Layout
//! - [`data`]: `trials.parquet` and `metrics/part-*.parquet` -> trials and per-trial series.
//! - [`aggregate`]: seeds folded into a line and a band, long series windowed, configurations ranked.
//! - [`figures`]: which curve figures the metric names call for (any mix of job kinds).
//! - [`plots`]: plotters drawing into PNG files (bundled font, no system libraries).
//! - [`html`]: the page.
//!
//! # Steps of [`write_report`]
//! 1. Load the trials and metric series.
//! 2. Find the objective's metric and goal: from `sweep.json` when the coordinator wrote one;
//!    otherwise (older results) inferred: `trials.parquet` holds each trial's objective and its
//!    metric's best and last points but not the metric's name or goal, so the metric is the one
//!    whose series has those points, and the goal is whether "best" was the series' maximum or
//!    minimum (a `--goal` given by the user wins).
//! 3. Rank configurations by the mean, median or pessimistic bound of the objective over their
//!    completed seeds (`sweep best`'s statistics, [`sweep_coordinator::stats`]).
//! 4. Draw the curve figures [`figures::plan`] asks for, for the top `top` configurations; draw
//!    the objective against each parameter that varies, for every completed trial.
//! 5. Copy the best trial's PNG artifacts (the GAN's sample grids) next to the page.
//! 6. Write `index.html`.

pub mod aggregate;
pub mod data;
pub mod figures;
pub mod html;
pub mod plots;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sweep_coordinator::stats::{Aggregate, RankBy};
use sweep_shared::spec::Goal;

use aggregate::{best_trial, rank_configs, Band, Config, Window};
use data::{ParamValue, Series, SweepData};
use figures::CurveFigure;
use plots::{LegendEntry, LinesChart, PlotLine, PlotPanel, ScatterAxis, ScatterChart};

/// What can go wrong making a report; each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no results of the sweep at {0} (check the sweep name and the results directory, --out)")]
    MissingSweep(PathBuf),
    #[error("{0} does not exist: the sweep wrote no trials yet (`sweep export SWEEP` writes them)")]
    MissingTrials(PathBuf),
    #[error("reading {path}: {reason}")]
    Parquet { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {reason}")]
    Meta { path: PathBuf, reason: String },
    #[error("drawing {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error("the bundled font (assets/fonts/DejaVuSans.ttf) did not load")]
    Font,
}

pub type Result<T> = std::result::Result<T, ReportError>;

/// Points a curve is drawn with at most; longer series are averaged over windows.
const MAX_CURVE_POINTS: usize = 200;
/// Artifact images copied at most (a long GAN run has one grid per epoch).
const MAX_ARTIFACT_IMAGES: usize = 200;

/// What to report and where.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    pub sweep_id: String,
    /// `<results>/<sweep>`.
    pub sweep_dir: PathBuf,
    /// Where `index.html` and the PNGs go (created if missing).
    pub output_dir: PathBuf,
    /// Configurations drawn in the curve figures (the best by `rank_by`).
    pub top: usize,
    /// Which aggregate of the objective over seeds ranks the configurations, as `sweep best --by`.
    pub rank_by: RankBy,
    /// The objective's goal, when the user knows better than the inference.
    pub goal: Option<Goal>,
}

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct ReportOutcome {
    pub index: PathBuf,
    /// File names of the images next to the page.
    pub images: Vec<String>,
    pub trials: usize,
    pub metric_rows: usize,
}

/// How the objective's goal became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoalSource {
    Given,
    /// From the sweep's spec (`sweep.json`).
    Declared,
    Inferred,
    /// Nothing told the goal apart (every series constant, or no metric found): maximize.
    Assumed,
}

/// The sweep's objective: its metric (when found among the series) and goal.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub metric: Option<String>,
    pub goal: Goal,
    pub source: GoalSource,
}

impl Objective {
    /// `mear` or, when the metric was not found, `objective`.
    pub fn name(&self) -> &str {
        self.metric.as_deref().unwrap_or("objective")
    }
}

/// Whether a value recorded in `trials.parquet` is a metric point's value. Not bit equality: the
/// coordinator keeps a trial's best and last points as JSON, whose parsing may move the last bit
/// (907.2155019965451 comes back as ...452).
fn same_value(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Step 2: the metric whose series holds every trial's recorded best and last points, and the
/// goal under which that best is the best.
pub fn infer_objective(data: &SweepData, given: Option<Goal>) -> Objective {
    if let Some(meta) = &data.meta {
        let (goal, source) = match given {
            Some(goal) => (goal, GoalSource::Given),
            None => (meta.metric.goal, GoalSource::Declared),
        };
        return Objective { metric: Some(meta.metric.name.clone()), goal, source };
    }
    // (trial, best point, last point) of every trial that recorded them.
    type Recorded = (usize, (i64, f64), (i64, f64));
    let recorded: Vec<Recorded> =
        data.trials.iter().enumerate().filter_map(|(i, t)| Some((i, t.best?, t.last?))).collect();
    let holds = |series: &Series, (step, value): (i64, f64)| series.at(step).is_some_and(|v| same_value(v, value));
    let metric = if recorded.is_empty() {
        None
    } else {
        data.metrics.names.iter().find(|name| {
            recorded.iter().all(|&(trial, best, last)| {
                let found = data.metrics.get(trial, name).is_some_and(|s| {
                    holds(s, best) && holds(s, last) && s.steps.last().is_some_and(|&step| step == last.0)
                });
                if !found {
                    tracing::debug!(metric = %name, trial = %data.trials[trial].trial_id, ?best, ?last, series = ?data.metrics.get(trial, name), "not the objective metric");
                }
                found
            })
        })
    };
    let inferred = metric.and_then(|name| {
        recorded.iter().find_map(|&(trial, (_, best), _)| {
            let series = data.metrics.get(trial, name)?;
            let finite = series.values.iter().copied().filter(|v| v.is_finite());
            let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
            if same_value(lo, hi) {
                None
            } else if same_value(best, hi) {
                Some(Goal::Maximize)
            } else if same_value(best, lo) {
                Some(Goal::Minimize)
            } else {
                None
            }
        })
    });
    let (goal, source) = match (given, inferred) {
        (Some(goal), _) => (goal, GoalSource::Given),
        (None, Some(goal)) => (goal, GoalSource::Inferred),
        (None, None) => (Goal::Maximize, GoalSource::Assumed),
    };
    Objective { metric: metric.cloned(), goal, source }
}

/// Epoch numbers by step for one trial, from its `epoch` metric; step 0 is epoch 0 (scores
/// taken before training).
fn epochs_by_step(data: &SweepData, trial: usize) -> Option<HashMap<i64, i64>> {
    let epochs = data.metrics.get(trial, "epoch")?;
    let mut map: HashMap<i64, i64> = epochs.points().map(|(step, epoch)| (step, epoch.round() as i64)).collect();
    map.entry(0).or_insert(0);
    Some(map)
}

/// One configuration's trials whose series count: its completed trials, or all when none completed.
fn counted_trials(data: &SweepData, config: &Config) -> Vec<usize> {
    let completed: Vec<usize> = config.trials.iter().copied().filter(|&t| data.trials[t].completed()).collect();
    if completed.is_empty() {
        config.trials.clone()
    } else {
        completed
    }
}

/// The series of one metric for the given trials, on the epoch axis when `epochs` says so.
fn series_of(
    data: &SweepData,
    trials: &[usize],
    metric: &str,
    epochs: Option<&HashMap<usize, HashMap<i64, i64>>>,
) -> Vec<Series> {
    trials
        .iter()
        .filter_map(|&t| {
            let series = data.metrics.get(t, metric)?;
            Some(match epochs {
                Some(by_trial) => {
                    let map = by_trial.get(&t)?;
                    Series::new(series.points().filter_map(|(step, v)| map.get(&step).map(|&epoch| (epoch, v))))
                }
                None => series.clone(),
            })
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a figure's points sit at epoch ends: the sweep has an `epoch` metric and at least 90%
/// of the points of the figure's metrics are at a step where their trial reported one.
fn epoch_axis(data: &SweepData, figure: &CurveFigure) -> Option<HashMap<usize, HashMap<i64, i64>>> {
    if !data.metrics.has("epoch") {
        return None;
    }
    let by_trial: HashMap<usize, HashMap<i64, i64>> =
        (0..data.trials.len()).filter_map(|t| Some((t, epochs_by_step(data, t)?))).collect();
    let (mut total, mut at_epochs) = (0usize, 0usize);
    for curve in figure.panels.iter().flat_map(|p| &p.curves) {
        for t in 0..data.trials.len() {
            if let Some(series) = data.metrics.get(t, &curve.metric) {
                total += series.len();
                if let Some(map) = by_trial.get(&t) {
                    at_epochs += series.steps.iter().filter(|s| map.contains_key(s)).count();
                }
            }
        }
    }
    (total > 0 && at_epochs * 10 >= total * 9).then_some(by_trial)
}

/// Greedy word wrap of comma-separated parts into lines of at most `width` characters.
fn wrap(parts: &[String], width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 2 + part.chars().count() <= width => {
                line.push_str(", ");
                line.push_str(part);
            }
            _ => lines.push(part.clone()),
        }
    }
    lines
}

/// Everything the figures and the page share.
struct Context<'a> {
    data: &'a SweepData,
    objective: Objective,
    rank_by: RankBy,
    ranked: Vec<Config>,
    /// Parameters whose values differ between trials (indexes into `param_names`).
    varying: Vec<usize>,
    /// Configurations drawn in curve figures: indexes into `ranked`.
    shown: usize,
}

impl Context<'_> {
    /// "lr=0.1", one per varying parameter of the configuration.
    fn config_params(&self, config: &Config) -> Vec<String> {
        let Some(&first) = config.trials.first() else { return Vec::new() };
        let trial = &self.data.trials[first];
        self.varying.iter().map(|&p| format!("{}={}", self.data.param_names[p], trial.params[p])).collect()
    }

    fn objective_text(summary: &Aggregate) -> String {
        if summary.n > 1 {
            format!("{} ± {}", plots::number(summary.mean), plots::number(summary.std))
        } else {
            plots::number(summary.mean)
        }
    }

    /// [`Self::objective_text`] with 4 significant digits, for legends.
    fn objective_short(summary: &Aggregate) -> String {
        if summary.n > 1 {
            format!("{} ± {}", plots::significant(summary.mean, 4), plots::significant(summary.std, 3))
        } else {
            plots::significant(summary.mean, 4)
        }
    }

    fn legend(&self) -> Vec<LegendEntry> {
        self.ranked[..self.shown]
            .iter()
            .enumerate()
            .map(|(rank, config)| {
                let head = match &config.objective {
                    Some(summary) => format!(
                        "#{}  {} {} (n={})",
                        rank + 1,
                        self.objective.name(),
                        Self::objective_short(summary),
                        summary.n
                    ),
                    None => format!("#{}  no objective", rank + 1),
                };
                let mut text = vec![head];
                text.extend(wrap(&self.config_params(config), 40));
                LegendEntry { rank, text }
            })
            .collect()
    }

    fn legend_title(&self) -> String {
        if self.shown < self.ranked.len() {
            format!("top {} of {} configurations", self.shown, self.ranked.len())
        } else {
            format!("{} configuration{}", self.ranked.len(), if self.ranked.len() == 1 { "" } else { "s" })
        }
    }

    /// One curve figure as a chart, with notes on windows; `None` when no shown configuration
    /// has a point of its metrics.
    fn curve_chart(&self, figure: &CurveFigure) -> Option<(LinesChart, Vec<String>)> {
        let epochs = epoch_axis(self.data, figure);
        let x_label = if epochs.is_some() { "epoch".to_string() } else { figure.step_label.clone() };
        let mut notes = vec!["line: mean over seeds".to_string(), "band: min..max over seeds".to_string()];
        let mut windows = Vec::new();
        let mut panels = Vec::new();
        for panel in &figure.panels {
            let mut lines = Vec::new();
            for curve in &panel.curves {
                let per_config: Vec<Vec<Series>> = self.ranked[..self.shown]
                    .iter()
                    .map(|config| {
                        series_of(self.data, &counted_trials(self.data, config), &curve.metric, epochs.as_ref())
                    })
                    .collect();
                let all: Vec<&Series> = per_config.iter().flatten().collect();
                let window = Window::fitting(&all, MAX_CURVE_POINTS);
                if let Some(window) = window {
                    windows.push(format!("{}: mean of every {} {}s", curve.metric, window.width, x_label));
                }
                for (rank, seeds) in per_config.iter().enumerate() {
                    let seeds: Vec<Series> = match window {
                        Some(window) => seeds.iter().map(|s| window.apply(s)).collect(),
                        None => seeds.clone(),
                    };
                    let band = Band::over_seeds(&seeds.iter().collect::<Vec<_>>());
                    if !band.is_empty() {
                        lines.push(PlotLine { rank, band, dashed: curve.dashed });
                    }
                }
            }
            if !lines.is_empty() {
                panels.push(PlotPanel { title: panel.title.clone(), y_label: panel.y_label.clone(), lines });
            }
        }
        if panels.is_empty() {
            return None;
        }
        notes.extend(windows.iter().cloned());
        let line_styles =
            figure.line_styles.clone().filter(|_| panels.iter().any(|p| p.lines.iter().any(|l| l.dashed)));
        Some((
            LinesChart {
                title: format!("{}: {}", self.data.sweep_id, figure.title),
                x_label,
                panels,
                legend_title: self.legend_title(),
                legend: self.legend(),
                line_styles,
                notes,
            },
            windows,
        ))
    }

    /// The objective against parameter `p`, one point per completed trial.
    fn scatter_chart(&self, p: usize) -> Option<ScatterChart> {
        let name = &self.data.param_names[p];
        let rank_of_trial: HashMap<usize, usize> = self.ranked[..self.shown]
            .iter()
            .enumerate()
            .flat_map(|(rank, c)| c.trials.iter().map(move |&t| (t, rank)))
            .collect();
        let trials: Vec<(usize, &ParamValue, f64)> = self
            .data
            .trials
            .iter()
            .enumerate()
            .filter(|(_, t)| t.completed())
            .filter_map(|(i, t)| Some((i, &t.params[p], t.objective?)))
            .filter(|(_, v, _)| **v != ParamValue::Missing)
            .collect();
        if trials.is_empty() {
            return None;
        }
        let numeric = trials.iter().all(|(_, v, _)| v.as_number().is_some_and(f64::is_finite));
        let mut points = Vec::new();
        let mut sums: Vec<(f64, f64, usize)> = Vec::new();
        let mut add_to_mean = |x: f64, y: f64| match sums.iter_mut().find(|(sx, _, _)| *sx == x) {
            Some(entry) => {
                entry.1 += y;
                entry.2 += 1;
            }
            None => sums.push((x, y, 1)),
        };
        let axis = if numeric {
            let xs: Vec<f64> = trials.iter().filter_map(|(_, v, _)| v.as_number()).collect();
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            for &(t, value, y) in &trials {
                let x = value.as_number().unwrap_or(0.0);
                points.push((x, y, rank_of_trial.get(&t).copied()));
                add_to_mean(x, y);
            }
            ScatterAxis::Numeric { log: lo > 0.0 && hi / lo >= 10.0 }
        } else {
            // Categories in order of first appearance (the spec's order for a grid).
            let mut labels: Vec<String> = Vec::new();
            let mut seen_in: Vec<usize> = Vec::new();
            for &(t, value, y) in &trials {
                let label = value.to_string();
                let index = match labels.iter().position(|l| *l == label) {
                    Some(i) => i,
                    None => {
                        labels.push(label);
                        seen_in.push(0);
                        labels.len() - 1
                    }
                };
                // Spread a category's points a little sideways, so that equal values stay visible.
                let k = seen_in[index];
                seen_in[index] += 1;
                let offset = ((k % 9) as f64 - 4.0) * 0.035;
                points.push((index as f64 + offset, y, rank_of_trial.get(&t).copied()));
                add_to_mean(index as f64, y);
            }
            ScatterAxis::Categories(labels)
        };
        let means = sums.into_iter().map(|(x, sum, n)| (x, sum / n as f64)).collect();
        let coloured = if self.shown < self.ranked.len() {
            format!(
                "dots: completed trials, coloured for the top {} configurations as in the table, grey for the rest",
                self.shown
            )
        } else {
            "dots: completed trials, coloured by configuration as in the table".to_string()
        };
        Some(ScatterChart {
            title: format!("{}: {} against {}", self.data.sweep_id, self.objective.name(), name),
            x_label: name.clone(),
            y_label: format!("objective: {} ({})", self.objective.name(), self.objective.goal),
            axis,
            points,
            means,
            notes: vec![coloured, format!("black bars: mean objective of the trials at each value of {name}")],
        })
    }
}

/// The parameters with more than one distinct value among the trials.
fn varying_params(data: &SweepData) -> Vec<usize> {
    (0..data.param_names.len())
        .filter(|&p| {
            let mut values = data.trials.iter().map(|t| t.params[p].to_string());
            values.next().is_some_and(|first| values.any(|v| v != first))
        })
        .collect()
}

/// A file name we are willing to copy and to reference: letters, digits, '.', '_', '-'.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `grid_epoch_0007.png` -> `epoch 7`; other names without their extension.
fn artifact_caption(name: &str) -> String {
    let stem = name.strip_suffix(".png").unwrap_or(name);
    match stem.rsplit_once("epoch_").and_then(|(_, n)| n.parse::<u64>().ok()) {
        Some(epoch) => format!("epoch {epoch}"),
        None => stem.to_string(),
    }
}

/// Step 5: copies the PNG artifacts of trial `trial` into `output_dir`; returns (file, caption).
fn copy_artifacts(data: &SweepData, trial: usize, output_dir: &Path) -> Result<Vec<(String, String)>> {
    let trial_id = &data.trials[trial].trial_id;
    if !safe_name(trial_id) {
        return Ok(Vec::new());
    }
    let dir = data.dir.join("artifacts").join(trial_id);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReportError::Io { path: dir, source }),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| safe_name(name) && name.ends_with(".png"))
        .collect();
    names.sort();
    if names.len() > MAX_ARTIFACT_IMAGES {
        tracing::warn!(trial = %trial_id, images = names.len(), kept = MAX_ARTIFACT_IMAGES, "copying the first artifact images only");
        names.truncate(MAX_ARTIFACT_IMAGES);
    }
    let mut copied = Vec::new();
    for name in names {
        let file = format!("artifact_{name}");
        let dest = output_dir.join(&file);
        std::fs::copy(dir.join(&name), &dest).map_err(|source| ReportError::Io { path: dir.join(&name), source })?;
        copied.push((file, artifact_caption(&name)));
    }
    Ok(copied)
}

/// The name prefixes of the images a report writes.
const IMAGE_PREFIXES: &[&str] = &["lab_", "dqn_", "nlp_", "gan_", "metric_", "objective_vs_", "artifact_"];

/// Removes the PNGs an earlier report left in `dir` (named as this module names them), so that a
/// figure the data no longer calls for does not linger beside the new page. Other files stay.
fn remove_earlier_images(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReportError::Io { path: dir.to_path_buf(), source })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".png") && IMAGE_PREFIXES.iter().any(|p| name.starts_with(p)) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|source| ReportError::Io { path, source })?;
        }
    }
    Ok(())
}

/// Writes the report of `request.sweep_dir` into `request.output_dir` (see the steps above).
pub fn write_report(request: &ReportRequest) -> Result<ReportOutcome> {
    // 1. Load.
    let data = SweepData::load(&request.sweep_dir, &request.sweep_id)?;
    // 2. The objective.
    let objective = infer_objective(&data, request.goal);
    // 3. Rank.
    let ranked = rank_configs(&data.trials, objective.goal, request.rank_by);
    let shown = ranked.len().min(request.top.max(1));
    let context =
        Context { data: &data, objective, rank_by: request.rank_by, ranked, varying: varying_params(&data), shown };
    let plan = figures::plan(&data.metrics);
    let output = &request.output_dir;
    std::fs::create_dir_all(output).map_err(|source| ReportError::Io { path: output.clone(), source })?;
    remove_earlier_images(output)?;

    // 4. Figures.
    let mut images = Vec::new();
    let mut curve_figures = Vec::new();
    for figure in &plan.curves {
        let Some((chart, windows)) = context.curve_chart(figure) else { continue };
        plots::draw_lines(&chart, &output.join(&figure.file))?;
        images.push(figure.file.clone());
        let mut caption = format!(
            "{} One line per configuration: the mean over its seeds; the band spans the lowest to the highest seed.",
            figure.about
        );
        if !windows.is_empty() {
            caption.push_str(&format!(" Long series are averaged over windows ({}).", windows.join("; ")));
        }
        curve_figures.push(html::Figure { file: figure.file.clone(), alt: chart.title.clone(), caption });
    }
    let mut scatter_figures = Vec::new();
    for &p in &context.varying {
        let Some(chart) = context.scatter_chart(p) else { continue };
        let file = format!("objective_vs_{}.png", figures::file_stem(&data.param_names[p]));
        plots::draw_scatter(&chart, &output.join(&file))?;
        images.push(file.clone());
        let axis = match chart.axis {
            ScatterAxis::Categories(_) => "categorical axis",
            ScatterAxis::Numeric { log: true } => "logarithmic axis",
            ScatterAxis::Numeric { log: false } => "linear axis",
        };
        scatter_figures.push(html::Figure {
            file,
            alt: chart.title.clone(),
            caption: format!(
                "Each completed trial's objective ({}) against {} ({axis}); black bars mark the mean at each value, \
                 over all other parameters and seeds.",
                context.objective.name(),
                data.param_names[p]
            ),
        });
    }

    // 5. The best trial's images.
    let best = best_trial(&data.trials, context.objective.goal);
    let artifacts = match best {
        Some(trial) => copy_artifacts(&data, trial, output)?,
        None => Vec::new(),
    };
    images.extend(artifacts.iter().map(|(file, _)| file.clone()));

    // 6. The page.
    let page = page(&context, &plan.final_values, curve_figures, scatter_figures, best, artifacts);
    let index = output.join("index.html");
    std::fs::write(&index, html::render(&page)).map_err(|source| ReportError::Io { path: index.clone(), source })?;
    Ok(ReportOutcome { index, images, trials: data.trials.len(), metric_rows: data.metric_rows })
}

fn page(
    context: &Context<'_>,
    final_values: &[String],
    curve_figures: Vec<html::Figure>,
    scatter_figures: Vec<html::Figure>,
    best: Option<usize>,
    artifacts: Vec<(String, String)>,
) -> html::Page {
    let data = context.data;
    let objective = &context.objective;
    let mut by_status: Vec<(String, usize)> = Vec::new();
    for trial in &data.trials {
        match by_status.iter_mut().find(|(s, _)| *s == trial.status) {
            Some(entry) => entry.1 += 1,
            None => by_status.push((trial.status.clone(), 1)),
        }
    }
    let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let goal_source = match objective.source {
        GoalSource::Given => "goal given with --goal",
        GoalSource::Declared => "declared in sweep.json",
        GoalSource::Inferred => "goal inferred from each trial's recorded best point",
        GoalSource::Assumed => "goal unknown from the data, assumed; pass --goal to set it",
    };
    let objective_fact = match &objective.metric {
        Some(metric) => format!("objective: {metric}, {} ({goal_source})", objective.goal),
        None => format!("objective: {} (its metric was not found among the series; {goal_source})", objective.goal),
    };
    let facts = vec![
        format!("{} trials ({}) in {} configurations", data.trials.len(), statuses.join(", "), context.ranked.len()),
        objective_fact,
        format!(
            "read {} and {} metric part file{} ({} rows); metrics: {}",
            data.dir.join("trials.parquet").display(),
            data.metric_files,
            if data.metric_files == 1 { "" } else { "s" },
            data.metric_rows,
            if data.metrics.names.is_empty() { "none".to_string() } else { data.metrics.names.join(", ") }
        ),
    ];

    let mut header = vec!["rank".to_string()];
    header.extend(context.varying.iter().map(|&p| data.param_names[p].clone()));
    header.extend([
        format!("{} mean ± std", objective.name()),
        "median".into(),
        "95% CI of the mean".into(),
        "n".into(),
        "min".into(),
        "max".into(),
    ]);
    header.extend(final_values.iter().map(|name| format!("{name} mean ± std")));
    let rows = context
        .ranked
        .iter()
        .enumerate()
        .map(|(rank, config)| {
            let mut cells = vec![html::Cell::number((rank + 1).to_string())];
            let first = config.trials.first().map(|&t| &data.trials[t]);
            for &p in &context.varying {
                cells.push(html::Cell::text(first.map(|t| t.params[p].to_string()).unwrap_or_default()));
            }
            match &config.objective {
                Some(s) => cells.extend([
                    html::Cell::number(Context::objective_text(s)),
                    html::Cell::number(plots::number(s.median)),
                    html::Cell::number(if s.n > 1 {
                        format!("{} .. {}", plots::number(s.ci_low), plots::number(s.ci_high))
                    } else {
                        "-".to_string()
                    }),
                    html::Cell::number(format!("{}/{}", s.n, config.trials.len())),
                    html::Cell::number(plots::number(s.min)),
                    html::Cell::number(plots::number(s.max)),
                ]),
                None => cells.extend([
                    html::Cell::number("-"),
                    html::Cell::number("-"),
                    html::Cell::number("-"),
                    html::Cell::number(format!("0/{}", config.trials.len())),
                    html::Cell::number("-"),
                    html::Cell::number("-"),
                ]),
            }
            for name in final_values {
                let values: Vec<f64> = counted_trials(data, config)
                    .iter()
                    .filter_map(|&t| data.metrics.get(t, name)?.values.last().copied())
                    .filter(|v| v.is_finite())
                    .collect();
                cells.push(html::Cell::number(
                    Aggregate::of(&values).map(|s| Context::objective_text(&s)).unwrap_or("-".into()),
                ));
            }
            html::Row { swatch: (rank < context.shown).then(|| plots::color_hex(rank)), cells }
        })
        .collect();
    let ranked_on = match context.rank_by {
        RankBy::Mean => "mean".to_string(),
        RankBy::Median => "median".to_string(),
        RankBy::Bound => format!(
            "{} end of the 95% interval of the mean (the pessimistic bound; one seed counts by its value)",
            if objective.goal == Goal::Maximize { "lower" } else { "upper" }
        ),
    };
    let mut table_note = format!(
        "Configurations ranked by the {ranked_on} of the objective over their completed seeds ({}: {} first; \
         --by mean|median|bound changes it); std is the sample standard deviation; the interval is Student's t; \
         n is completed seeds with an objective / trials of the configuration.",
        objective.goal,
        if objective.goal == Goal::Maximize { "highest" } else { "lowest" }
    );
    if context.shown < context.ranked.len() {
        table_note.push_str(&format!(
            " The curve figures show the top {} configurations (coloured swatches) of {}; --top changes how many.",
            context.shown,
            context.ranked.len()
        ));
    }

    let mut sections = Vec::new();
    if !curve_figures.is_empty() {
        sections.push(html::Section { title: "Curves".into(), intro: None, figures: curve_figures, gallery: false });
    }
    if !scatter_figures.is_empty() {
        sections.push(html::Section {
            title: format!("{} against each hyperparameter", objective.name()),
            intro: None,
            figures: scatter_figures,
            gallery: false,
        });
    }
    if let (Some(best), false) = (best, artifacts.is_empty()) {
        let trial = &data.trials[best];
        sections.push(html::Section {
            title: "Samples of the best trial".into(),
            intro: Some(format!(
                "The PNG artifacts of the best trial, {} (seed {}, {} {}), by name: the GAN stores one sample \
                 grid per epoch.",
                trial.trial_id,
                trial.seed,
                objective.name(),
                trial.objective.map(plots::number).unwrap_or_default()
            )),
            figures: artifacts
                .into_iter()
                .map(|(file, caption)| html::Figure { alt: format!("{} {caption}", trial.trial_id), file, caption })
                .collect(),
            gallery: true,
        });
    }
    html::Page {
        title: format!("Sweep report: {}", data.sweep_id),
        facts,
        table_title: "Configurations".into(),
        table_note,
        header,
        rows,
        sections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use data::{Metrics, Trial};
    use sweep_coordinator::parquet::SweepMeta;

    type NamedSeries<'a> = ((usize, &'a str), Vec<(i64, f64)>);

    fn sweep(trials: Vec<Trial>, series: Vec<NamedSeries<'_>>) -> SweepData {
        SweepData {
            sweep_id: "s".into(),
            dir: PathBuf::from("/nonexistent"),
            param_names: vec!["lr".into()],
            trials,
            metrics: Metrics::from_series(
                series.into_iter().map(|((t, name), points)| ((t, name.to_string()), Series::new(points))).collect(),
            ),
            metric_files: 0,
            metric_rows: 0,
            meta: None,
        }
    }

    fn trial(best: (i64, f64), last: (i64, f64)) -> Trial {
        Trial {
            trial_id: "t".into(),
            config_id: "c".into(),
            seed: 0,
            status: "completed".into(),
            objective: Some(last.1),
            best: Some(best),
            last: Some(last),
            params: vec![ParamValue::Float(0.1)],
        }
    }

    #[test]
    fn the_objective_metric_and_goal_come_from_the_recorded_points() {
        // 'acc' and 'loss' share steps; the recorded best (step 2, 0.9) and last are acc's.
        let data = sweep(
            vec![trial((2, 0.9), (3, 0.8))],
            vec![((0, "acc"), vec![(1, 0.5), (2, 0.9), (3, 0.8)]), ((0, "loss"), vec![(1, 0.9), (2, 0.5), (3, 0.8)])],
        );
        let objective = infer_objective(&data, None);
        assert_eq!(objective.metric.as_deref(), Some("acc"));
        assert_eq!((objective.goal, objective.source), (Goal::Maximize, GoalSource::Inferred));

        // The recorded best may differ from the stored point in the last bit (a JSON round trip).
        let best = f64::from_bits(0.5f64.to_bits() + 1);
        let data = sweep(vec![trial((2, best), (3, 0.8))], vec![((0, "loss"), vec![(1, 0.9), (2, 0.5), (3, 0.8)])]);
        let objective = infer_objective(&data, None);
        assert_eq!((objective.metric.as_deref(), objective.goal), (Some("loss"), Goal::Minimize));
        let given = infer_objective(&data, Some(Goal::Maximize));
        assert_eq!((given.goal, given.source), (Goal::Maximize, GoalSource::Given));
    }

    #[test]
    fn a_declared_metric_wins_over_the_inference() {
        let mut data = sweep(vec![trial((2, 5.0), (3, 4.0))], vec![((0, "r"), vec![(1, 1.0), (2, 5.0), (3, 4.0)])]);
        data.meta = Some(SweepMeta {
            sweep: "s".into(),
            job_kind: "k".into(),
            metric: sweep_shared::spec::MetricSpec {
                name: "loss".into(),
                goal: Goal::Minimize,
                summary: sweep_shared::spec::Summary::Last,
                target: None,
            },
        });
        let objective = infer_objective(&data, None);
        assert_eq!((objective.metric.as_deref(), objective.goal), (Some("loss"), Goal::Minimize));
        assert_eq!(objective.source, GoalSource::Declared);
        assert_eq!(infer_objective(&data, Some(Goal::Maximize)).goal, Goal::Maximize);
    }

    #[test]
    fn a_constant_series_or_a_missing_metric_leaves_the_goal_assumed() {
        let data = sweep(vec![trial((1, 2.0), (2, 2.0))], vec![((0, "x"), vec![(1, 2.0), (2, 2.0)])]);
        let objective = infer_objective(&data, None);
        assert_eq!((objective.metric.as_deref(), objective.source), (Some("x"), GoalSource::Assumed));
        let data = sweep(vec![trial((1, 2.0), (2, 3.0))], vec![((0, "y"), vec![(1, 5.0)])]);
        assert_eq!(infer_objective(&data, None).metric, None);
    }

    #[test]
    fn legend_text_wraps_between_parameters() {
        let parts: Vec<String> =
            ["epsilon=linear(1->0.02 over 5000)", "lr=0.1", "tie_break=left"].iter().map(|s| s.to_string()).collect();
        assert_eq!(wrap(&parts, 40), vec!["epsilon=linear(1->0.02 over 5000)", "lr=0.1, tie_break=left"]);
    }

    #[test]
    fn artifact_names_are_checked_and_captioned() {
        assert!(safe_name("grid_epoch_0001.png"));
        for bad in ["../x.png", ".hidden.png", "a b.png", "", "x/y.png"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert_eq!(artifact_caption("grid_epoch_0012.png"), "epoch 12");
        assert_eq!(artifact_caption("samples.png"), "samples");
    }
}
