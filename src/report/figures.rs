//! Which curve figures a sweep gets, chosen by the metric names it has.
//!
//! Known families get the figure their course lab draws: the CartPole Q-table's MEAR and RGR, the
//! DQN's score and mean of 100, train against validation loss and accuracy for the NLP jobs, the
//! GAN's losses and Frechet score. Every other metric with more than one point in some trial gets
//! a figure of its own; metrics with at most one point per trial (`test_acc`, `solved_at`) are
//! final values, shown as table columns instead. Nothing here knows job kinds: a sweep mixing
//! families, or a job with new metric names, gets the figures its names call for.

use super::data::Metrics;

/// One metric drawn in a panel, solid or dashed (the legend says which is which).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub metric: String,
    pub dashed: bool,
}

/// One chart of a figure: its y axis and the metrics on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
}

/// A figure of one or more stacked panels sharing the x axis, one line per configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveFigure {
    /// The PNG's file name in the report directory.
    pub file: String,
    pub title: String,
    /// What the figure shows, opening its caption.
    pub about: String,
    /// The x axis when the points are not at epoch ends (see [`super::epoch_axis`]).
    pub step_label: String,
    pub panels: Vec<Panel>,
    /// What solid and dashed lines mean, when a panel has both.
    pub line_styles: Option<(String, String)>,
}

/// What the metric names call for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FigurePlan {
    pub curves: Vec<CurveFigure>,
    /// Metrics with at most one point per trial, shown as table columns.
    pub final_values: Vec<String>,
}

fn curve(metric: &str, dashed: bool) -> Curve {
    Curve { metric: metric.to_string(), dashed }
}

/// A panel of those `metrics` that exist (solid, then dashed), or `None` if none does.
fn panel(metrics: &Metrics, title: &str, y_label: &str, solid: &str, dashed: Option<&str>) -> Option<Panel> {
    let mut curves = Vec::new();
    if metrics.has(solid) {
        curves.push(curve(solid, false));
    }
    if let Some(dashed) = dashed.filter(|d| metrics.has(d)) {
        curves.push(curve(dashed, true));
    }
    (!curves.is_empty()).then(|| Panel { title: title.to_string(), y_label: y_label.to_string(), curves })
}

/// The figures for a sweep with these metrics.
pub fn plan(metrics: &Metrics) -> FigurePlan {
    let mut plan = FigurePlan::default();
    let has = |name: &str| metrics.has(name);
    let episodes = ["reward", "mear", "rgr", "score", "mean100"].iter().any(|n| has(n));
    let step_label = if episodes {
        "episode"
    } else if has("batch_loss") {
        "step (batches)"
    } else {
        "step"
    };

    if has("mear") || has("rgr") {
        let panels: Vec<Panel> = [
            panel(metrics, "MEAR: mean accumulated reward per report window", "MEAR", "mear", None),
            panel(metrics, "RGR: share of episodes with reward >= good_reward", "RGR", "rgr", None),
        ]
        .into_iter()
        .flatten()
        .collect();
        plan.curves.push(CurveFigure {
            file: "lab_mear_rgr.png".into(),
            title: "MEAR and RGR".into(),
            about: "The lab's figure: MEAR (mean accumulated reward) and RGR (rate of good rewards) of each \
                    report window (report_every episodes)."
                .into(),
            step_label: "episode".into(),
            panels,
            line_styles: None,
        });
    }
    if has("score") || has("mean100") {
        let panels: Vec<Panel> = [
            panel(metrics, "Score per episode", "score", "score", None),
            panel(metrics, "Mean score of the last 100 episodes", "mean of 100", "mean100", None),
        ]
        .into_iter()
        .flatten()
        .collect();
        plan.curves.push(CurveFigure {
            file: "dqn_score.png".into(),
            title: "DQN: score and mean of the last 100 episodes".into(),
            about: "The DQN's score of each episode and the mean score of the last 100 episodes.".into(),
            step_label: "episode".into(),
            panels,
            line_styles: None,
        });
    }
    let nlp = (has("loss") && has("val_loss")) || (has("acc") && has("val_acc"));
    if nlp {
        let panels: Vec<Panel> = [
            panel(metrics, "Loss", "loss", "loss", Some("val_loss")),
            panel(metrics, "Accuracy", "accuracy", "acc", Some("val_acc")),
        ]
        .into_iter()
        .flatten()
        .collect();
        plan.curves.push(CurveFigure {
            file: "nlp_loss_accuracy.png".into(),
            title: "Training and validation loss and accuracy".into(),
            about: "Loss and accuracy of each epoch, on the training data (solid) and the validation split (dashed)."
                .into(),
            step_label: step_label.into(),
            panels,
            line_styles: Some(("training".into(), "validation".into())),
        });
    }
    let gan = has("gen_loss") && has("disc_loss");
    if gan {
        let mut panels: Vec<Panel> =
            panel(metrics, "Generator and discriminator loss", "loss", "gen_loss", Some("disc_loss"))
                .into_iter()
                .collect();
        panels.extend(panel(
            metrics,
            "Frechet distance to real test images (lower is better)",
            "Frechet distance",
            "frechet",
            None,
        ));
        plan.curves.push(CurveFigure {
            file: "gan_losses_frechet.png".into(),
            title: "GAN: losses and sample quality".into(),
            about: "Mean generator (solid) and discriminator (dashed) loss of each epoch, and the Frechet distance \
                    between classifier features of generated and real digits."
                .into(),
            step_label: step_label.into(),
            panels,
            line_styles: Some(("generator".into(), "discriminator".into())),
        });
    }

    let drawn: Vec<String> = plan
        .curves
        .iter()
        .flat_map(|f| f.panels.iter().flat_map(|p| p.curves.iter().map(|c| c.metric.clone())))
        .collect();
    for name in &metrics.names {
        if name == "epoch" || drawn.contains(name) {
            continue;
        }
        if metrics.max_len(name) <= 1 {
            plan.final_values.push(name.clone());
            continue;
        }
        plan.curves.push(CurveFigure {
            file: format!("metric_{}.png", file_stem(name)),
            title: name.clone(),
            about: format!("The metric '{name}'."),
            step_label: step_label.into(),
            panels: vec![Panel { title: name.clone(), y_label: name.clone(), curves: vec![curve(name, false)] }],
            line_styles: None,
        });
    }
    plan
}

/// `name` as a safe file name part: ASCII letters, digits, '-' and '_' kept, the rest '_'.
pub fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::report::data::Series;

    /// Metrics where each name has `points` points in trial 0.
    fn metrics(names: &[(&str, usize)]) -> Metrics {
        let mut series = HashMap::new();
        for (name, points) in names {
            series.insert((0, name.to_string()), Series::new((0..*points as i64).map(|s| (s, 1.0))));
        }
        Metrics::from_series(series)
    }

    fn files(plan: &FigurePlan) -> Vec<&str> {
        plan.curves.iter().map(|f| f.file.as_str()).collect()
    }

    #[test]
    fn the_qtable_metrics_give_the_lab_figure_and_generic_curves() {
        let plan = plan(&metrics(&[("reward", 100), ("epsilon", 100), ("mear", 10), ("rgr", 10)]));
        assert_eq!(files(&plan), vec!["lab_mear_rgr.png", "metric_epsilon.png", "metric_reward.png"]);
        assert_eq!(plan.curves[0].panels.len(), 2);
        assert_eq!(plan.curves[1].step_label, "episode");
        assert!(plan.final_values.is_empty());
    }

    #[test]
    fn nlp_metrics_pair_training_with_validation_and_finals_become_columns() {
        let plan = plan(&metrics(&[
            ("batch_loss", 50),
            ("loss", 3),
            ("acc", 3),
            ("val_loss", 3),
            ("val_acc", 3),
            ("epoch", 3),
            ("test_loss", 1),
            ("test_acc", 1),
        ]));
        assert_eq!(files(&plan), vec!["nlp_loss_accuracy.png", "metric_batch_loss.png"]);
        let loss = &plan.curves[0].panels[0];
        assert_eq!(loss.curves, vec![curve("loss", false), curve("val_loss", true)]);
        assert_eq!(plan.final_values, vec!["test_acc".to_string(), "test_loss".to_string()]);
    }

    #[test]
    fn gan_and_dqn_and_unknown_names_in_one_sweep() {
        let plan = plan(&metrics(&[
            ("gen_loss", 2),
            ("disc_loss", 2),
            ("frechet", 3),
            ("score", 500),
            ("mean100", 500),
            ("solved_at", 1),
            ("weird metric/x", 7),
        ]));
        assert_eq!(
            files(&plan),
            vec!["dqn_score.png", "gan_losses_frechet.png", "metric_weird_metric_x.png"],
            "a lone 'loss' or 'frechet' is no NLP figure; names are made safe for files"
        );
        assert_eq!(plan.curves[1].panels.len(), 2);
        assert_eq!(plan.final_values, vec!["solved_at".to_string()]);
    }

    #[test]
    fn a_quadratic_loss_alone_is_a_generic_curve() {
        let plan = plan(&metrics(&[("loss", 20)]));
        assert_eq!(files(&plan), vec!["metric_loss.png"]);
        assert_eq!(plan.curves[0].step_label, "step");
    }
}
