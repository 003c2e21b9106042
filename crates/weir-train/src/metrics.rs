//! Evaluation metrics, defined as scikit-learn defines them (the tests
//! compare them with scikit-learn's on the same predictions).
//!
//! Classification: `accuracy`; `precision`, `recall`, `f1` (of the second
//! class for two classes, macro averages for more); `roc_auc` (one class
//! against the rest, macro average, for more than two); `pr_auc` (average
//! precision, two classes); `log_loss`; `ece`, the expected calibration
//! error of the top class over 10 equal-width confidence bins.
//! Regression: `rmse`, `mae`, `r2`.

use std::collections::BTreeMap;

/// Metric name → value.
pub type Metrics = BTreeMap<String, f64>;

/// Whether a larger value of the metric is better (`None`: not a metric
/// Weir knows the direction of).
pub fn higher_is_better(metric: &str) -> Option<bool> {
    match metric {
        "accuracy" | "precision" | "recall" | "f1" | "roc_auc" | "pr_auc" | "r2" => Some(true),
        "log_loss" | "ece" | "rmse" | "mae" => Some(false),
        _ => None,
    }
}

/// Class probabilities, `rows × classes`, from a model's scores: its
/// probabilities, or for two classes a single score of the second.
pub fn probabilities(scores: &[f64], width: usize, classes: usize) -> Option<Vec<f64>> {
    if width == classes {
        Some(scores.to_vec())
    } else if width == 1 && classes == 2 {
        Some(scores.iter().flat_map(|&p| [1.0 - p, p]).collect())
    } else {
        None
    }
}

/// Classification metrics of `probabilities` (`rows × classes`) against
/// the true class of each row.
pub fn classification(truth: &[usize], probabilities: &[f64], classes: usize) -> Metrics {
    let n = truth.len();
    let mut metrics = Metrics::new();
    if n == 0 || classes == 0 {
        return metrics;
    }
    let row = |i: usize| &probabilities[i * classes..(i + 1) * classes];
    let predicted: Vec<usize> = (0..n).map(|i| argmax(row(i))).collect();
    let correct = (0..n).filter(|&i| predicted[i] == truth[i]).count();
    metrics.insert("accuracy".into(), correct as f64 / n as f64);

    let per_class: Vec<(f64, f64, f64)> = (0..classes)
        .map(|c| precision_recall_f1(truth, &predicted, c))
        .collect();
    let (precision, recall, f1) = if classes == 2 {
        per_class[1]
    } else {
        let mean = |pick: fn(&(f64, f64, f64)) -> f64| {
            per_class.iter().map(pick).sum::<f64>() / classes as f64
        };
        (mean(|x| x.0), mean(|x| x.1), mean(|x| x.2))
    };
    metrics.insert("precision".into(), precision);
    metrics.insert("recall".into(), recall);
    metrics.insert("f1".into(), f1);

    let score_of = |c: usize| -> Vec<f64> { (0..n).map(|i| row(i)[c]).collect() };
    let is = |c: usize| -> Vec<bool> { truth.iter().map(|&t| t == c).collect() };
    if classes == 2 {
        let (p, positive) = (score_of(1), is(1));
        if let Some(auc) = roc_auc(&positive, &p) {
            metrics.insert("roc_auc".into(), auc);
        }
        if let Some(ap) = average_precision(&positive, &p) {
            metrics.insert("pr_auc".into(), ap);
        }
    } else {
        let aucs: Option<Vec<f64>> = (0..classes)
            .map(|c| roc_auc(&is(c), &score_of(c)))
            .collect();
        if let Some(aucs) = aucs {
            metrics.insert("roc_auc".into(), aucs.iter().sum::<f64>() / classes as f64);
        }
    }

    // As scikit-learn: rows normalised to sum to one, clipped to [ε, 1-ε].
    let eps = f64::EPSILON;
    let loss = (0..n)
        .map(|i| {
            let sum: f64 = row(i).iter().sum();
            let p = (row(i)[truth[i]] / sum).clamp(eps, 1.0 - eps);
            -p.ln()
        })
        .sum::<f64>()
        / n as f64;
    metrics.insert("log_loss".into(), loss);

    let confidence: Vec<f64> = (0..n).map(|i| row(i)[predicted[i]]).collect();
    let hit: Vec<bool> = (0..n).map(|i| predicted[i] == truth[i]).collect();
    let ece = calibration(&hit, &confidence, 10)
        .iter()
        .map(|b| b.rows as f64 / n as f64 * (b.mean_score - b.fraction_true).abs())
        .sum();
    metrics.insert("ece".into(), ece);
    metrics
}

/// Regression metrics.
pub fn regression(truth: &[f64], predicted: &[f64]) -> Metrics {
    let n = truth.len() as f64;
    let mut metrics = Metrics::new();
    if truth.is_empty() {
        return metrics;
    }
    let residuals = truth.iter().zip(predicted).map(|(t, p)| t - p);
    let ss_res: f64 = residuals.clone().map(|r| r * r).sum();
    let mae = residuals.map(f64::abs).sum::<f64>() / n;
    let mean = truth.iter().sum::<f64>() / n;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    // scikit-learn's r2 for a constant truth: 1 if predicted exactly, else 0.
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else if ss_res == 0.0 {
        1.0
    } else {
        0.0
    };
    metrics.insert("rmse".into(), (ss_res / n).sqrt());
    metrics.insert("mae".into(), mae);
    metrics.insert("r2".into(), r2);
    metrics
}

fn argmax(row: &[f64]) -> usize {
    // The first of equal maxima, as numpy's argmax.
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn precision_recall_f1(truth: &[usize], predicted: &[usize], class: usize) -> (f64, f64, f64) {
    let tp = truth
        .iter()
        .zip(predicted)
        .filter(|&(&t, &p)| t == class && p == class)
        .count() as f64;
    let predicted_positive = predicted.iter().filter(|&&p| p == class).count() as f64;
    let positive = truth.iter().filter(|&&t| t == class).count() as f64;
    // scikit-learn's `zero_division` default: 0.
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let precision = ratio(tp, predicted_positive);
    let recall = ratio(tp, positive);
    (
        precision,
        recall,
        ratio(2.0 * tp, predicted_positive + positive),
    )
}

/// Indexes sorted by score, highest first.
fn by_score_descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Walks the distinct thresholds from the highest score down; at each,
/// the true and false positives above it.
fn thresholds(positive: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let order = by_score_descending(scores);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut points = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if positive[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            points.push((tp, fp));
        }
    }
    points
}

/// Area under the ROC curve (`None` when one class is absent).
pub fn roc_auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    roc_curve(positive, scores).map(|curve| {
        curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum()
    })
}

/// The ROC curve: (false positive rate, true positive rate) from (0, 0).
pub fn roc_curve(positive: &[bool], scores: &[f64]) -> Option<Vec<(f64, f64)>> {
    let p = positive.iter().filter(|&&x| x).count() as f64;
    let n = positive.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return None;
    }
    let mut curve = vec![(0.0, 0.0)];
    curve.extend(
        thresholds(positive, scores)
            .into_iter()
            .map(|(tp, fp)| (fp / n, tp / p)),
    );
    Some(curve)
}

/// The precision-recall curve: (recall, precision) at each threshold.
pub fn pr_curve(positive: &[bool], scores: &[f64]) -> Option<Vec<(f64, f64)>> {
    let p = positive.iter().filter(|&&x| x).count() as f64;
    if p == 0.0 {
        return None;
    }
    Some(
        thresholds(positive, scores)
            .into_iter()
            .map(|(tp, fp)| (tp / p, tp / (tp + fp)))
            .collect(),
    )
}

/// Average precision: Σ (Rₙ − Rₙ₋₁) Pₙ over the thresholds.
pub fn average_precision(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let curve = pr_curve(positive, scores)?;
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for (recall, precision) in curve {
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    Some(ap)
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    /// The mean score of its rows.
    pub mean_score: f64,
    /// The share of its rows that are true.
    pub fraction_true: f64,
    /// Its rows.
    pub rows: usize,
}

/// Scores in `bins` equal-width bins of [0, 1] (the last one closed), the
/// empty ones left out.
pub fn calibration(truth: &[bool], scores: &[f64], bins: usize) -> Vec<Bin> {
    let mut sums = vec![(0.0, 0.0, 0usize); bins];
    for (&t, &s) in truth.iter().zip(scores) {
        let bin = ((s * bins as f64) as usize).min(bins - 1);
        sums[bin].0 += s;
        sums[bin].1 += f64::from(u8::from(t));
        sums[bin].2 += 1;
    }
    sums.into_iter()
        .filter(|b| b.2 > 0)
        .map(|(score, hits, rows)| Bin {
            mean_score: score / rows as f64,
            fraction_true: hits / rows as f64,
            rows,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_ranking_has_auc_one_and_ties_count_half() {
        let positive = [false, false, true, true];
        assert_eq!(roc_auc(&positive, &[0.1, 0.2, 0.8, 0.9]), Some(1.0));
        assert_eq!(roc_auc(&positive, &[0.5, 0.5, 0.5, 0.5]), Some(0.5));
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
    }

    #[test]
    fn average_precision_of_a_known_case() {
        // scikit-learn's docstring example: 0.8333…
        let ap = average_precision(&[false, false, true, true], &[0.1, 0.4, 0.35, 0.8]).unwrap();
        assert!((ap - 0.833_333_333_333_333_4).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn regression_of_a_constant_truth() {
        assert_eq!(regression(&[1.0, 1.0], &[1.0, 1.0])["r2"], 1.0);
        assert_eq!(regression(&[1.0, 1.0], &[1.0, 2.0])["r2"], 0.0);
    }
}
