//! A small HTML view of the tracking server, where the MLflow client's
//! links lead (`View run … at: http://host:5000/#/experiments/1/runs/<id>`):
//! `/` lists the experiments, `/experiments/<id>` an experiment's runs, and
//! `/experiments/<id>/runs/<run>` a run's params, metrics, tags and
//! artifacts. The client's links are fragments (`/#/…`), which never reach
//! the server: `/` sends the browser on to the page they name. The web UI
//! replaces these pages.

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::Tracker;
use crate::state::{Run, State};
use weir_web::escape;

/// The pages' routes.
pub fn routes() -> axum::Router<Tracker> {
    axum::Router::new()
        .route("/", axum::routing::get(home))
        .route("/experiments/{id}", axum::routing::get(experiment))
        .route("/experiments/{id}/runs/{run}", axum::routing::get(run))
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · Weir</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}\
         table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}}\
         code{{background:#f4f4f4}}</style>\
         <script>/* MLflow's links name a page after `#`: go there. */\
         if (location.hash.startsWith('#/experiments/')) location.replace(location.hash.slice(1));</script>\
         </head><body><p><a href=\"/\">Weir tracking</a></p><h1>{title}</h1>{body}</body></html>",
        title = escape(title)
    ))
}

fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        page("Not found", &format!("<p>{}</p>", escape(&what))),
    )
        .into_response()
}

/// A time in ms since the epoch, as `YYYY-MM-DD HH:MM:SS` (UTC).
fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

async fn home(AxumState(tracker): AxumState<Tracker>) -> Html<String> {
    let rows = tracker.read(|state: &State| {
        state
            .experiments()
            .filter(|e| !e.deleted)
            .map(|e| {
                format!(
                    "<tr><td><a href=\"/experiments/{id}\">{name}</a></td><td>{id}</td><td>{runs}</td><td>{updated}</td></tr>",
                    id = escape(&e.experiment_id),
                    name = escape(&e.name),
                    runs = state.runs_of(&e.experiment_id).filter(|r| !r.deleted).count(),
                    updated = time(e.last_update_time),
                )
            })
            .collect::<String>()
    });
    page(
        "Experiments",
        &format!(
            "<table><tr><th>experiment</th><th>id</th><th>runs</th><th>updated</th></tr>{rows}</table>"
        ),
    )
}

async fn experiment(AxumState(tracker): AxumState<Tracker>, Path(id): Path<String>) -> Response {
    tracker.read(|state: &State| {
        let Ok(experiment) = state.experiment(&id) else {
            return not_found(format!("no experiment {id}"));
        };
        let mut runs: Vec<&Run> = state.runs_of(&id).filter(|r| !r.deleted).collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.start_time));
        let rows: String = runs
            .iter()
            .map(|r| {
                let metrics: Vec<String> = r
                    .latest
                    .iter()
                    .take(4)
                    .map(|(k, m)| format!("{} {:.4}", escape(k), m.value))
                    .collect();
                format!(
                    "<tr><td><a href=\"/experiments/{e}/runs/{run}\">{name}</a></td><td><code>{run}</code></td>\
                     <td>{status}</td><td>{started}</td><td>{metrics}</td></tr>",
                    e = escape(&id),
                    run = escape(&r.run_id),
                    name = escape(if r.run_name.is_empty() { &r.run_id } else { &r.run_name }),
                    status = escape(&r.status),
                    started = time(r.start_time),
                    metrics = metrics.join(", "),
                )
            })
            .collect();
        page(
            &format!("Experiment {}", experiment.name),
            &format!(
                "<table><tr><th>run</th><th>id</th><th>status</th><th>started</th><th>metrics</th></tr>{rows}</table>"
            ),
        )
        .into_response()
    })
}

async fn run(
    AxumState(tracker): AxumState<Tracker>,
    Path((id, run_id)): Path<(String, String)>,
) -> Response {
    tracker.read(|state: &State| {
        let Some(run) = state.run(&run_id).ok().filter(|r| r.experiment_id == id) else {
            return not_found(format!("no run {run_id} in experiment {id}"));
        };
        let table = |rows: Vec<(String, String)>| -> String {
            if rows.is_empty() {
                return "<p>none</p>".into();
            }
            let rows: String = rows
                .iter()
                .map(|(k, v)| format!("<tr><td>{}</td><td>{}</td></tr>", escape(k), escape(v)))
                .collect();
            format!("<table>{rows}</table>")
        };
        let params = table(run.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let metrics = table(
            run.latest
                .iter()
                .map(|(k, m)| (k.clone(), format!("{} (step {})", m.value, m.step)))
                .collect(),
        );
        let tags = table(
            run.tags
                .iter()
                .filter(|(k, _)| !k.starts_with("mlflow.log-model"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let prefix = run
            .artifact_uri
            .strip_prefix("mlflow-artifacts:/")
            .unwrap_or_default()
            .trim_start_matches('/');
        let artifacts: String = state
            .artifacts_under(prefix)
            .map(|(path, artifact)| {
                format!(
                    "<tr><td><a href=\"/api/2.0/mlflow-artifacts/artifacts/{path}\">{name}</a></td><td>{size} bytes</td></tr>",
                    path = escape(path),
                    name = escape(path[prefix.len()..].trim_start_matches('/')),
                    size = artifact.size,
                )
            })
            .collect();
        let artifacts = if artifacts.is_empty() {
            "<p>none</p>".to_string()
        } else {
            format!("<table>{artifacts}</table>")
        };
        let title = format!(
            "Run {}",
            if run.run_name.is_empty() { &run.run_id } else { &run.run_name }
        );
        page(
            &title,
            &format!(
                "<p>run <code>{id}</code> · {status} · started {started}</p>\
                 <h2>Parameters</h2>{params}<h2>Metrics</h2>{metrics}<h2>Tags</h2>{tags}<h2>Artifacts</h2>{artifacts}",
                id = escape(&run.run_id),
                status = escape(&run.status),
                started = time(run.start_time),
            ),
        )
        .into_response()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_dates() {
        assert_eq!(super::time(1_700_000_000_000), "2023-11-14 22:13:20");
    }
}
