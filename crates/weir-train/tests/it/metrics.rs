//! Weir's metrics equal scikit-learn's on the same predictions.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use weir_train::metrics;

use crate::run_python;

const SKLEARN: &str = r#"
import json, sys
import numpy as np
from sklearn import metrics as m
case = json.load(open(sys.argv[1]))
out = {}
y = np.array(case["truth"]); p = np.array(case["probabilities"]); k = case["classes"]
if k == 2:
    pred = (p[:, 1] > 0.5).astype(int)
    out.update(accuracy=m.accuracy_score(y, pred), precision=m.precision_score(y, pred, zero_division=0),
               recall=m.recall_score(y, pred), f1=m.f1_score(y, pred),
               roc_auc=m.roc_auc_score(y, p[:, 1]), pr_auc=m.average_precision_score(y, p[:, 1]),
               log_loss=m.log_loss(y, p, labels=[0, 1]))
else:
    pred = p.argmax(1)
    out.update(accuracy=m.accuracy_score(y, pred),
               precision=m.precision_score(y, pred, average="macro", zero_division=0),
               recall=m.recall_score(y, pred, average="macro", zero_division=0),
               f1=m.f1_score(y, pred, average="macro", zero_division=0),
               roc_auc=m.roc_auc_score(y, p, multi_class="ovr", average="macro"),
               log_loss=m.log_loss(y, p, labels=list(range(k))))
# Top-class ECE over 10 equal-width bins, written out.
conf = p.max(1); hit = (p.argmax(1) == y)
bins = np.minimum((conf * 10).astype(int), 9)
out["ece"] = sum(abs(conf[bins == b].mean() - hit[bins == b].mean()) * (bins == b).sum() / len(y)
                 for b in range(10) if (bins == b).any())
t = np.array(case["values"]); v = np.array(case["predicted"])
out.update(rmse=float(np.sqrt(m.mean_squared_error(t, v))), mae=m.mean_absolute_error(t, v), r2=m.r2_score(t, v))
print(json.dumps(out))
"#;

fn case(classes: usize, rows: usize, seed: u64) -> (Vec<usize>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut truth = Vec::new();
    let mut probabilities = Vec::new();
    for _ in 0..rows {
        let class = rng.random_range(0..classes);
        truth.push(class);
        // Informative but noisy scores, with ties (rounded to 2 decimals).
        let raw: Vec<f64> = (0..classes)
            .map(|c| rng.random::<f64>() + if c == class { 0.6 } else { 0.0 })
            .collect();
        // Rows sum to one (scikit-learn's multi-class AUC insists).
        let sum: f64 = raw.iter().sum();
        let mut left = 1.0;
        for r in &raw[..classes - 1] {
            let p = ((r / sum * 100.0).round() / 100.0).min(left);
            probabilities.push(p);
            left -= p;
        }
        probabilities.push(left);
    }
    let values: Vec<f64> = (0..rows).map(|_| rng.random::<f64>() * 10.0).collect();
    let predicted = values
        .iter()
        .map(|v| v + rng.random::<f64>() - 0.4)
        .collect();
    (truth, probabilities, values, predicted)
}

#[test]
fn classification_and_regression_metrics_equal_scikit_learns() {
    let dir = tempfile::tempdir().unwrap();
    for (classes, seed) in [(2, 1), (2, 2), (3, 3)] {
        let (truth, probabilities, values, predicted) = case(classes, 2000, seed);
        let mut ours = metrics::classification(&truth, &probabilities, classes);
        ours.extend(metrics::regression(&values, &predicted));
        let path = dir.path().join(format!("case-{seed}.json"));
        let rows: Vec<Vec<f64>> = probabilities.chunks(classes).map(<[f64]>::to_vec).collect();
        let body = json!({"truth": truth, "probabilities": rows, "classes": classes,
                          "values": values, "predicted": predicted});
        std::fs::write(&path, body.to_string()).unwrap();
        let theirs: Value =
            serde_json::from_str(&run_python(SKLEARN, &[path.to_str().unwrap()])).unwrap();
        let theirs = theirs.as_object().unwrap();
        assert_eq!(
            theirs.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{classes} classes"
        );
        for (name, value) in theirs {
            let value = value.as_f64().unwrap();
            assert!(
                (ours[name] - value).abs() < 1e-9,
                "{classes} classes, seed {seed}: {name} is {} in Weir, {value} in scikit-learn",
                ours[name]
            );
        }
    }
}
