//! The online store over HTTP (axum):
//!
//! - `POST /v1/features/online` — Weir's look-up: feature refs
//!   (`view:feature`) and entity key columns in, one result per entity
//!   with each feature's value, event time and status;
//! - `POST /get-online-features` — Feast's feature-server route, with its
//!   request and its column-major response, so Feast clients work
//!   unchanged;
//! - `GET /health`.
//!
//! A missing or expired entity is a `null` with a status, not an error; an
//! unknown view or feature, or entity lists that do not fit, are a 400
//! with a message; an unknown route a 404, a wrong method a 405.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::FeaturesError;
use crate::online::{Found, OnlineStore, OnlineView, Status, key_text, rfc3339};

/// What the server serves: the store and its views by name.
#[derive(Clone)]
pub struct Served {
    /// The store.
    pub store: Arc<OnlineStore>,
    /// The views, by name.
    pub views: Arc<HashMap<String, OnlineView>>,
}

/// The routes.
pub fn router(served: Served) -> axum::Router {
    let routes = axum::Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/v1/features/online", post(online))
        .route("/get-online-features", post(feast));
    weir_web::fallbacks(routes, |refused| {
        HttpError(refused.status, refused.message()).into_response()
    })
    .with_state(served)
}

/// A look-up request (both routes).
#[derive(Debug, Deserialize)]
pub struct Request {
    /// `view:feature` refs.
    #[serde(default)]
    pub features: Vec<String>,
    /// Entity key columns, each a list of values (one per entity).
    pub entities: BTreeMap<String, Vec<Value>>,
    /// Name features `view__feature`.
    #[serde(default)]
    pub full_feature_names: bool,
}

struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message.into())
}

impl From<FeaturesError> for HttpError {
    fn from(error: FeaturesError) -> Self {
        match error {
            FeaturesError::UnknownFeature { .. } | FeaturesError::UnknownView(..) => {
                bad(error.to_string())
            }
            other => HttpError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// The features grouped by view, in first-appearance order.
fn by_view(features: &[String]) -> Result<Vec<(String, Vec<String>)>, HttpError> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for reference in features {
        let (view, feature) = reference
            .split_once(':')
            .ok_or_else(|| bad(format!("`{reference}` is not a feature ref (view:feature)")))?;
        match grouped.iter_mut().find(|(v, _)| v == view) {
            Some((_, list)) => list.push(feature.to_string()),
            None => grouped.push((view.to_string(), vec![feature.to_string()])),
        }
    }
    if grouped.is_empty() {
        return Err(bad("no features asked for"));
    }
    Ok(grouped)
}

/// A view, the features asked of it, and what was found per entity.
type ViewResults = (OnlineView, Vec<String>, Vec<Found>);

/// Looks the request up: for each view, its results per entity.
fn look_up(served: &Served, request: &Request) -> Result<(usize, Vec<ViewResults>), HttpError> {
    let rows = request.entities.values().map(Vec::len).max().unwrap_or(0);
    if request.entities.values().any(|v| v.len() != rows) {
        return Err(bad("every entity column needs the same number of values"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = Vec::new();
    for (name, features) in by_view(&request.features)? {
        let view = served
            .views
            .get(&name)
            .ok_or_else(|| bad(format!("no feature view `{name}` is served")))?;
        let mut keys = Vec::with_capacity(rows);
        for row in 0..rows {
            let key = view
                .entity
                .iter()
                .map(|column| {
                    request
                        .entities
                        .get(column)
                        .map(|values| key_text(&values[row]))
                        .ok_or_else(|| {
                            bad(format!(
                                "`{name}` is keyed by `{column}`: give it in `entities`"
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            keys.push(key);
        }
        let found = served.store.get(view, &keys, &features, now)?;
        out.push((view.clone(), features, found));
    }
    Ok((rows, out))
}

fn name(view: &str, feature: &str, full: bool) -> String {
    if full {
        format!("{view}__{feature}")
    } else {
        feature.to_string()
    }
}

async fn online(
    State(served): State<Served>,
    Json(request): Json<Request>,
) -> Result<Json<Value>, HttpError> {
    let (rows, results) = look_up(&served, &request)?;
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let entity: BTreeMap<&String, &Value> =
            request.entities.iter().map(|(k, v)| (k, &v[row])).collect();
        let mut features = serde_json::Map::new();
        for (view, names, found) in &results {
            let found = &found[row];
            for (feature, value) in names.iter().zip(&found.values) {
                features.insert(
                    format!("{}:{feature}", view.name),
                    json!({
                        "value": value,
                        "event_time": found.event_time.map(|t| rfc3339(Some(t))),
                        "status": found.status,
                    }),
                );
            }
        }
        out.push(json!({"entity": entity, "features": features}));
    }
    Ok(Json(json!({"results": out})))
}

/// Feast's `/get-online-features`: one result per column (the entity
/// keys, then the features), each with a value, a status and an event
/// timestamp per entity.
async fn feast(
    State(served): State<Served>,
    Json(request): Json<Request>,
) -> Result<Json<Value>, HttpError> {
    let (rows, results) = look_up(&served, &request)?;
    let zero = rfc3339(None);
    let mut names = Vec::new();
    let mut columns = Vec::new();
    for (key, values) in &request.entities {
        names.push(key.clone());
        columns.push(json!({
            "values": values,
            "statuses": vec!["PRESENT"; rows],
            "event_timestamps": vec![zero.clone(); rows],
        }));
    }
    for (view, features, found) in &results {
        for (i, feature) in features.iter().enumerate() {
            names.push(name(&view.name, feature, request.full_feature_names));
            columns.push(json!({
                "values": found.iter().map(|f| f.values[i].clone()).collect::<Vec<_>>(),
                "statuses": found.iter().map(|f| f.status).collect::<Vec<Status>>(),
                "event_timestamps": found
                    .iter()
                    .map(|f| if f.status == Status::Present { rfc3339(f.event_time) } else { zero.clone() })
                    .collect::<Vec<_>>(),
            }));
        }
    }
    Ok(Json(
        json!({"results": columns, "metadata": {"feature_names": names}}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_feast_writes_them() {
        assert_eq!(rfc3339(None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Some(1_704_189_600_000)), "2024-01-02T10:00:00Z");
        assert_eq!(rfc3339(Some(1_704_195_000_250)), "2024-01-02T11:30:00.250Z");
        assert_eq!(rfc3339(Some(951_782_400_000)), "2000-02-29T00:00:00Z");
    }
}
