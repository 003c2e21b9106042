//! An experiment's report (`weir traffic report`): where each candidate
//! stands against the default at the analysis's latest tick, what it would
//! have earned with all of the traffic (off-policy), its
//! guardrails' figures, and an HTML
//! page with the weights over time, the cumulative reward per variant and
//! each candidate's lift with its confidence sequence.

use weir_serve::routing::Routing;
use weir_web::chart::{Series, escape, line_chart};

use crate::analysis::{AnalysisRow, Verdict};
use crate::guardrails::GuardrailRow;

/// The latest row of each candidate, in the routing's order.
pub fn latest<'a>(routing: &Routing, rows: &'a [AnalysisRow]) -> Vec<&'a AnalysisRow> {
    routing
        .candidates
        .iter()
        .filter_map(|c| rows.iter().rev().find(|r| r.variant == c.model))
        .collect()
}

/// The table `weir traffic report` prints: a header and a row per
/// candidate.
pub fn table(routing: &Routing, rows: &[AnalysisRow]) -> Vec<[String; 8]> {
    let number = |x: Option<f64>, format: fn(f64) -> String| x.map_or("-".to_string(), format);
    let percent = |x: f64| format!("{:+.1}%", x * 100.0);
    let mut table = vec![[
        "variant".to_string(),
        "rewards".into(),
        "mean".into(),
        "lift".into(),
        "interval".into(),
        "p-value".into(),
        "verdict".into(),
        "all traffic (DR)".into(),
    ]];
    for row in latest(routing, rows) {
        table.push([
            row.variant.clone(),
            row.n.to_string(),
            format!("{:.4}", row.mean),
            number(row.lift, percent),
            match (row.low, row.high) {
                (Some(low), Some(high)) => format!("[{}, {}]", percent(low), percent(high)),
                _ => "-".into(),
            },
            number(row.p_value, |p| format!("{p:.4}")),
            verdict_text(row.verdict).into(),
            // The off-policy estimate with its 95 % (fixed-horizon) margin.
            match (row.dr, row.dr_se) {
                (Some(value), Some(error)) => format!("{value:.4} ± {:.4}", 1.96 * error),
                _ => "-".into(),
            },
        ]);
    }
    table
}

/// The guardrails' table: a header and each candidate's latest figures.
pub fn guardrail_table(routing: &Routing, rows: &[GuardrailRow]) -> Vec<[String; 5]> {
    let mut table = vec![[
        "variant".to_string(),
        "requests".into(),
        "error rate".into(),
        "latency p99".into(),
        "guardrail".into(),
    ]];
    for candidate in &routing.candidates {
        let Some(row) = rows.iter().rev().find(|r| r.variant == candidate.model) else {
            continue;
        };
        table.push([
            row.variant.clone(),
            row.requests.to_string(),
            format!("{:.2}%", row.error_rate * 100.0),
            row.latency_p99_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms")),
            match (&row.breach, candidate.model == routing.default) {
                (_, true) => "default".into(),
                (Some(breach), _) => breach.clone(),
                (None, _) => "within".into(),
            },
        ]);
    }
    table
}

/// A verdict in words.
pub fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Default => "default",
        Verdict::TooFew => "too few rewards",
        Verdict::Undecided => "undecided",
        Verdict::Better => "better",
        Verdict::Worse => "worse",
    }
}

/// The report as a self-contained HTML page: `history` is the
/// experiment's routings in order (its weights over time), `rows` its
/// analysis rows by tick.
pub fn html(routing: &Routing, history: &[Routing], rows: &[AnalysisRow]) -> String {
    let start = history.first().map_or(routing.at, |r| r.at);
    let seconds = |at: i64| (at - start) as f64 / 1000.0;
    let mut page = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>experiment {name}</title>\n\
         <style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}</style>\n\
         <h2>experiment {name} v{version}</h2>\n<table>",
        name = escape(&routing.experiment),
        version = routing.version
    );
    for (i, row) in table(routing, rows).iter().enumerate() {
        let cell = if i == 0 { "th" } else { "td" };
        page.push_str("<tr>");
        for value in row {
            page.push_str(&format!("<{cell}>{}</{cell}>", escape(value)));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
    let weights: Vec<Series> = routing
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            name: c.model.clone(),
            points: history
                .iter()
                .map(|r| (seconds(r.at), r.shares().get(i).copied().unwrap_or(0.0)))
                .collect(),
        })
        .collect();
    page.push_str(&line_chart("share of the traffic", "s", &weights, None));
    fn of_variant<'a>(
        rows: &'a [AnalysisRow],
        model: &'a str,
    ) -> impl Iterator<Item = &'a AnalysisRow> {
        rows.iter().filter(move |r| r.variant == model)
    }
    let cumulative: Vec<Series> = routing
        .candidates
        .iter()
        .map(|c| Series {
            name: c.model.clone(),
            points: of_variant(rows, &c.model)
                .map(|r| (seconds(r.at), r.mean * r.n as f64))
                .collect(),
        })
        .collect();
    page.push_str(&line_chart("cumulative reward", "s", &cumulative, None));
    for c in routing
        .candidates
        .iter()
        .filter(|c| c.model != routing.default)
    {
        let line = |name: &str, pick: fn(&AnalysisRow) -> Option<f64>| Series {
            name: name.into(),
            points: of_variant(rows, &c.model)
                .filter_map(|r| pick(r).map(|y| (seconds(r.at), y)))
                .collect(),
        };
        let lift = [
            line("lift", |r| r.lift),
            line("low", |r| r.low),
            line("high", |r| r.high),
        ];
        page.push_str(&line_chart(
            &format!("lift of {} over {}", c.model, routing.default),
            "s",
            &lift,
            None,
        ));
    }
    page
}
