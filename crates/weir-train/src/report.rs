//! The evaluation report: one self-contained HTML page — metrics next to
//! the champion's, the gate, slices, ROC, precision-recall and calibration
//! curves, and the metric history of the model's versions.

use std::collections::BTreeSet;

use weir_web::chart::{Series, escape, line_chart};

use crate::evaluation::{Curves, Evaluation, Scored};

/// The report of an evaluation.
pub fn html(evaluation: &Evaluation) -> String {
    let candidate = &evaluation.candidate;
    let champion = evaluation.champion.as_ref();
    let mut html = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>evaluation of {model}</title>\n\
         <style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}</style>\n\
         <h1>{model} on {dataset}</h1>\n<p>{rows} labelled rows. Gate: <b>{verdict}</b></p>\n<ul>",
        model = escape(&candidate.model),
        dataset = escape(&evaluation.dataset),
        rows = evaluation.rows,
        verdict = evaluation.gate.verdict.as_str(),
    );
    for reason in &evaluation.gate.reasons {
        html.push_str(&format!("<li>{}</li>", escape(reason)));
    }
    html.push_str("</ul>\n<table><tr><th>metric</th>");
    html.push_str(&format!("<th>{}</th>", escape(&candidate.model)));
    if let Some(champion) = champion {
        html.push_str(&format!(
            "<th>{} (champion)</th><th>Δ</th>",
            escape(&champion.model)
        ));
    }
    html.push_str("</tr>\n");
    for (metric, value) in &candidate.overall {
        html.push_str(&format!(
            "<tr><th>{}</th><td>{value:.4}</td>",
            escape(metric)
        ));
        if let Some(theirs) = champion.and_then(|c| c.overall.get(metric)) {
            html.push_str(&format!(
                "<td>{theirs:.4}</td><td>{:+.4}</td>",
                value - theirs
            ));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    if !candidate.slices.is_empty() {
        html.push_str(&slice_table(candidate));
    }
    let models: Vec<&Scored> = std::iter::once(candidate).chain(champion).collect();
    let curve = |pick: fn(&Curves) -> Vec<(f64, f64)>| -> Vec<Series> {
        models
            .iter()
            .filter_map(|m| {
                Some(Series {
                    name: m.model.clone(),
                    points: pick(m.curves.as_ref()?),
                })
            })
            .collect()
    };
    let unit = Some(((0.0, 1.0), (0.0, 1.0)));
    html.push_str(&line_chart(
        "ROC (true positive rate by false positive rate)",
        "FPR",
        &curve(|c| c.roc.clone()),
        unit,
    ));
    html.push_str(&line_chart(
        "precision by recall",
        "recall",
        &curve(|c| c.pr.clone()),
        unit,
    ));
    let mut calibration = curve(|c| {
        c.calibration
            .iter()
            .map(|b| (b.mean_score, b.fraction_true))
            .collect()
    });
    if !calibration.is_empty() {
        calibration.push(Series {
            name: "perfectly calibrated".into(),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
        });
    }
    html.push_str(&line_chart(
        "calibration (share of positives by mean score)",
        "score",
        &calibration,
        unit,
    ));
    let metrics: BTreeSet<&String> = evaluation
        .history
        .iter()
        .flat_map(|(_, m)| m.keys())
        .collect();
    for metric in metrics {
        let points = evaluation
            .history
            .iter()
            .filter_map(|(version, m)| Some((*version as f64, *m.get(metric)?)))
            .collect();
        html.push_str(&line_chart(
            &format!("test {metric} of each version at training"),
            "version",
            &[Series {
                name: metric.clone(),
                points,
            }],
            None,
        ));
    }
    html
}

fn slice_table(scored: &Scored) -> String {
    let metrics: BTreeSet<&String> = scored.slices.values().flat_map(|m| m.keys()).collect();
    let mut html = String::from("<h3>by slice</h3><table><tr><th>slice</th>");
    for metric in &metrics {
        html.push_str(&format!("<th>{}</th>", escape(metric)));
    }
    html.push_str("</tr>\n");
    for (slice, values) in &scored.slices {
        html.push_str(&format!("<tr><th>{}</th>", escape(slice)));
        for metric in &metrics {
            match values.get(*metric) {
                Some(v) => html.push_str(&format!("<td>{v:.4}</td>")),
                None => html.push_str("<td>-</td>"),
            }
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}
