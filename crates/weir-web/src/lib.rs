//! What Weir's HTTP servers and HTML reports share:
//!
//! - [`fallbacks`]: the answer to a request no route takes — an unknown
//!   path (404) or a method its path does not take (405) — given only
//!   after the request's body is read, in each server's own error shape;
//! - [`chart`]: self-contained SVG line charts, and [`escape`] for text
//!   in HTML.

pub mod chart;

pub use chart::escape;

use axum::body::Body;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;

/// The most of a refused request's body read before answering.
const DRAIN_LIMIT: usize = 64 << 20;

/// A request no route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 404 (no such path) or 405 (the path does not take the method).
    pub status: StatusCode,
    /// The request's method.
    pub method: Method,
    /// The request's path and query.
    pub uri: Uri,
}

impl Refused {
    /// `no route GET /x`, or `/x does not take PUT`.
    pub fn message(&self) -> String {
        if self.status == StatusCode::NOT_FOUND {
            format!("no route {} {}", self.method, self.uri)
        } else {
            format!("{} does not take {}", self.uri, self.method)
        }
    }
}

/// `router` with answers for unknown paths and wrong methods, each given
/// by `answer` after the request's body is read: hyper closes a keep-alive
/// connection whose request body was left unread, and a client that sends
/// its next request on the connection before it sees the close fails with
/// "connection closed".
pub fn fallbacks<S>(router: axum::Router<S>, answer: fn(Refused) -> Response) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let refuse = move |status: StatusCode| {
        move |method: Method, uri: Uri, body: Body| async move {
            let _ = axum::body::to_bytes(body, DRAIN_LIMIT).await;
            answer(Refused {
                status,
                method,
                uri,
            })
        }
    };
    router
        .fallback(refuse(StatusCode::NOT_FOUND))
        .method_not_allowed_fallback(refuse(StatusCode::METHOD_NOT_ALLOWED))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use axum::response::IntoResponse as _;
    use tower::ServiceExt as _;

    use super::*;

    fn answer(refused: Refused) -> Response {
        (refused.status, refused.message()).into_response()
    }

    #[tokio::test]
    async fn unknown_paths_and_wrong_methods_are_refused_in_the_servers_shape() {
        let router = fallbacks(
            axum::Router::new().route("/x", axum::routing::get(|| async { "x" })),
            answer,
        );
        let call = |method: &str, path: &str| {
            let router = router.clone();
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from("a body nobody reads"))
                .unwrap();
            async move {
                let response = router.oneshot(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 10)
                    .await
                    .unwrap();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        assert_eq!(call("GET", "/x").await, (StatusCode::OK, "x".into()));
        assert_eq!(
            call("GET", "/y?z=1").await,
            (StatusCode::NOT_FOUND, "no route GET /y?z=1".into())
        );
        assert_eq!(
            call("PUT", "/x").await,
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "/x does not take PUT".into()
            )
        );
    }
}
