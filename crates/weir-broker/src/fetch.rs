//! Fetches answered as soon as records are there (a Kafka long poll).
//!
//! tansu 0.6 reads the log once at the start of a fetch and then sleeps out
//! the request's `max_wait_ms` whatever it found, so every fetch takes the
//! full wait and a record produced meanwhile is only read by the next
//! fetch: a consumer saw a new record between one and two waits after it
//! was written (100–200 ms for a follower of `weir.meta`), and each answer
//! of a catch-up read cost a wait. Kafka answers a fetch as soon as it has
//! `min_bytes`, and holds an empty one until a record comes or the wait
//! ends. [`LongPollFetch`] does that in front of tansu's route: it asks
//! tansu with no wait, and while nothing came back, waits for the next
//! produce to one of the fetch's topics (or the request's deadline) and
//! asks again. (Asking again on every produce to any topic made each idle
//! consumer's fetch read all of its partitions anew at every write to the
//! log.)

use std::time::Duration;

use rama::{Context, Service};
use tansu_sans_io::{ApiKey as _, Body, FetchRequest, FetchResponse, Frame};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::storage::{Produced, TopicKey};

/// Serves fetches from `inner` without tansu's sleep (see the module docs);
/// every other request goes to `inner` as it is.
#[derive(Clone, Debug)]
pub(crate) struct LongPollFetch<S> {
    pub(crate) inner: S,
    /// Counted on every produce.
    pub(crate) produced: watch::Receiver<Produced>,
}

impl<S> Service<(), Frame> for LongPollFetch<S>
where
    S: Service<(), Frame, Response = Frame, Error = tansu_broker::Error>,
{
    type Response = Frame;
    type Error = tansu_broker::Error;

    async fn serve(&self, ctx: Context<()>, frame: Frame) -> Result<Frame, Self::Error> {
        if frame.api_key()? != FetchRequest::KEY {
            return self.inner.serve(ctx, frame).await;
        }
        let Frame { size, header, body } = frame;
        let mut request = FetchRequest::try_from(body)?;
        let deadline =
            Instant::now() + Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
        request.max_wait_ms = 0;
        let topics = topic_keys(&request);
        let topics = topics.as_deref();
        let mut produced = self.produced.clone();
        loop {
            // Counted before the read: a produce after it wakes the wait.
            let seen = produced.borrow_and_update().count(topics);
            let answer = self
                .inner
                .serve(
                    ctx.clone(),
                    Frame {
                        size,
                        header: header.clone(),
                        body: Body::FetchRequest(request.clone()),
                    },
                )
                .await?;
            let done = match &answer.body {
                Body::FetchResponse(response) => has_records_or_error(response),
                _ => true,
            };
            if done || Instant::now() >= deadline {
                return Ok(answer);
            }
            // Until a produce to one of the fetch's topics, or the deadline.
            loop {
                tokio::select! {
                    changed = produced.changed() => if changed.is_err() {
                        // The broker is stopping: answer at the deadline as tansu would.
                        tokio::time::sleep_until(deadline).await;
                        break;
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
                if produced.borrow_and_update().count(topics) != seen {
                    break;
                }
            }
        }
    }
}

/// The topics a fetch reads, as it names them; `None` when one is named
/// neither way (then any produce wakes it).
fn topic_keys(request: &FetchRequest) -> Option<Vec<TopicKey>> {
    request
        .topics
        .iter()
        .flatten()
        .map(|topic| match (&topic.topic, topic.topic_id) {
            (Some(name), _) => Some(TopicKey::Name(name.clone())),
            (None, Some(id)) if id != [0; 16] => Some(TopicKey::Id(id)),
            _ => None,
        })
        .collect()
}

/// Whether a fetch answer has something for the client now: records, or an
/// error it must act on.
fn has_records_or_error(response: &FetchResponse) -> bool {
    response.error_code.is_some_and(|code| code != 0)
        || response.responses.iter().flatten().any(|topic| {
            topic
                .partitions
                .iter()
                .flatten()
                .any(|partition| partition.error_code != 0 || partition.records.is_some())
        })
}
