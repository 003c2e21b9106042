//! Runs side by side (`weir runs compare`): each param and latest metric
//! in a row, and, as a self-contained HTML page, each metric's history as
//! a chart with a line per run.

use std::collections::BTreeSet;

use weir_web::chart::{Series, escape, line_chart};

use crate::state::Run;

/// A run's latest value of metric `key`, as the comparison prints it (`-`
/// when it has none).
pub fn metric_text(run: &Run, key: &str) -> String {
    run.latest
        .get(key)
        .map_or("-".into(), |m| format!("{:.6}", m.value))
}

/// The runs as a text table: a column per run (its name), a row per param
/// and per latest metric.
pub fn text(runs: &[&Run]) -> String {
    let params: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    let metrics: BTreeSet<&String> = runs.iter().flat_map(|r| r.latest.keys()).collect();
    let mut out = format!("{:<24}", "");
    for run in runs {
        out.push_str(&format!(" {:>24}", run.run_name));
    }
    for key in params {
        out.push_str(&format!("\n{:<24}", format!("params.{key}")));
        for run in runs {
            let value = run.params.get(key).map_or("-", String::as_str);
            out.push_str(&format!(" {value:>24}"));
        }
    }
    for key in metrics {
        out.push_str(&format!("\n{:<24}", format!("metrics.{key}")));
        for run in runs {
            out.push_str(&format!(" {:>24}", metric_text(run, key)));
        }
    }
    out
}

/// A self-contained page (no scripts): params and latest metrics side by
/// side, then one SVG chart per metric — its values by step, a line per run.
pub fn html(runs: &[&Run]) -> String {
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>weir runs compare</title>\n<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>\n<table><tr><th></th>",
    );
    for run in runs {
        html.push_str(&format!("<th>{}</th>", escape(&run.run_name)));
    }
    html.push_str("</tr>\n");
    let params: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    let metrics: BTreeSet<&String> = runs.iter().flat_map(|r| r.history.keys()).collect();
    for key in &params {
        html.push_str(&format!("<tr><th>params.{}</th>", escape(key)));
        for run in runs {
            html.push_str(&format!(
                "<td>{}</td>",
                escape(run.params.get(*key).map_or("-", String::as_str))
            ));
        }
        html.push_str("</tr>\n");
    }
    for key in &metrics {
        html.push_str(&format!("<tr><th>metrics.{}</th>", escape(key)));
        for run in runs {
            html.push_str(&format!("<td>{}</td>", metric_text(run, key)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    for key in metrics {
        let series: Vec<Series> = runs
            .iter()
            .map(|run| Series {
                name: run.run_name.clone(),
                points: run
                    .history
                    .get(key)
                    .into_iter()
                    .flatten()
                    .map(|m| (m.step as f64, m.value))
                    .collect(),
            })
            .collect();
        html.push_str(&line_chart(key, "step", &series, None));
    }
    html
}
