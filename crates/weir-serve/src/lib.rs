//! Weir's model serving: a deployment (a YAML spec) serves registered ONNX
//! models through an inference graph, over the Open Inference Protocol v2
//! and Kafka streams, logging every request and response to a topic.
//!
//! ```text
//!  HTTP, gRPC ───┐
//!  (OIP v2)       │                      ┌─▶ weir.predictions.<d>
//!                 ├─▶ graph ─▶ batcher ─▶┤
//!  weir.requests ─┘  look-ups  sessions  └─▶ weir.log.<d> (Avro) ─▶ monitoring
//!                    ▲ online store      ▲ registry alias moves: hot swap (weir.meta)
//! ```
//!
//! - [`spec`]: the deployment spec; [`deploy`]: a spec checked and
//!   recorded as its deployment's next version on `weir.meta`;
//! - [`client`]: the closed-loop HTTP load generator of the benchmarks
//!   and tests;
//! - [`graph`]: request columns and online-store look-ups → pre-processing
//!   → the feature matrix; scores → post-processing;
//! - [`routing`]: an experiment's routing between candidate models
//!   (weights, sticky keys, a mirror) and [`control`], the topic serving
//!   follows it on;
//! - [`runner`]: dynamic batching over a pool of ONNX Runtime sessions,
//!   and the swap to new versions without failing a request;
//! - [`registry`]: the model registry followed on `weir.meta`;
//! - [`deployment`]: one running deployment, what every protocol calls;
//! - [`oip`]: the Open Inference Protocol v2 REST API (axum), with the
//!   binary tensor extension;
//! - [`grpc`]: the same protocol over gRPC (tonic), as KServe and Triton
//!   define it;
//! - [`stream`]: stream serving through a consumer group;
//! - [`log`]: the request log (`schemas/inference_log.avsc`);
//! - [`feedback`]: rewards and labels on served requests
//!   (`schemas/feedback.avsc`), from `POST /v2/models/<d>/feedback` or any
//!   producer;
//! - [`metrics`]: Prometheus text, latencies in HDR histograms;
//! - [`score`]: batch scoring of Parquet files;
//! - [`server`]: a deployment served — HTTP, stream workers scaled by lag
//!   and latency, hot swap, clean shutdown.

pub mod client;
pub mod control;
pub mod deploy;
pub mod deployment;
pub mod feedback;
pub mod graph;
pub mod grpc;
pub mod log;
pub mod metrics;
pub mod oip;
pub mod registry;
pub mod routing;
pub mod runner;
pub mod score;
pub mod server;
pub mod spec;
pub mod stream;

pub use deployment::Deployment;
pub use registry::Registry;
pub use spec::DeploymentSpec;

/// What can go wrong serving.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServeError {
    /// A deployment spec that cannot be used.
    #[error("{0}")]
    Spec(String),
    /// A request that cannot be answered (HTTP 400).
    #[error("{0}")]
    Request(String),
    /// No such model or version (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// A model that cannot be loaded.
    #[error("{0}")]
    Model(String),
    /// Not ready (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// Our fault (the broker, a thread).
    #[error("{0}")]
    Internal(String),
}
