//! How a running job's status is shown: a live view on a terminal
//! (records, rate, lag per partition, watermark, last checkpoint, and a
//! progress bar while the job catches up), JSON lines otherwise.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use weir_dataflow::job::Status;

/// One job's line on the terminal, and what it needs to show a rate and
/// the age of the last checkpoint.
pub struct LiveStatus {
    bar: ProgressBar,
    name: String,
    last: Option<(Instant, u64)>,
    rate: f64,
    checkpoint: Option<(u64, Instant)>,
}

impl LiveStatus {
    /// A line for each of `names`, drawn on stderr.
    pub fn for_jobs(names: &[String]) -> Vec<Self> {
        let progress = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        names
            .iter()
            .map(|name| Self {
                bar: progress.add(ProgressBar::new(0)),
                name: name.clone(),
                last: None,
                rate: 0.0,
                checkpoint: None,
            })
            .collect()
    }

    /// Redraws the line from `status`.
    pub fn update(&mut self, status: &Status) {
        let now = Instant::now();
        if let Some((then, records)) = self.last {
            let seconds = now.duration_since(then).as_secs_f64();
            if seconds >= 0.5 {
                let current = status.records_in.saturating_sub(records) as f64 / seconds;
                // Smoothed, so the figure can be read while it changes.
                self.rate = if self.rate == 0.0 {
                    current
                } else {
                    0.7 * self.rate + 0.3 * current
                };
                self.last = Some((now, status.records_in));
            }
        } else {
            self.last = Some((now, status.records_in));
        }
        if let Some(epoch) = status.committed_epoch
            && self.checkpoint.is_none_or(|(seen, _)| seen != epoch)
        {
            self.checkpoint = Some((epoch, now));
        }
        let lag: i64 = status
            .partitions
            .values()
            .chain(status.joined_partitions.values())
            .map(|p| p.lag)
            .sum();
        let catching_up = lag > 0;
        let style = if catching_up {
            "{prefix:.bold} [{bar:30}] {percent:>3}% {msg}"
        } else {
            "{prefix:.bold} {spinner} {msg}"
        };
        self.bar.set_style(
            ProgressStyle::with_template(style)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        self.bar.set_prefix(self.name.clone());
        self.bar.set_length(status.records_in + lag.max(0) as u64);
        self.bar.set_position(status.records_in);
        self.bar
            .set_message(describe(status, self.rate, self.checkpoint, lag));
        self.bar.tick();
    }

    /// Leaves the last line on the terminal.
    pub fn finish(&self) {
        self.bar.abandon();
    }
}

/// `12,345 in (3,120/s), 120 out, lag 0 [p0 0, p1 0] · watermark … · checkpoint 7 (2 s ago)`.
fn describe(status: &Status, rate: f64, checkpoint: Option<(u64, Instant)>, lag: i64) -> String {
    let show =
        |partitions: &std::collections::BTreeMap<i32, weir_dataflow::job::PartitionStatus>| {
            partitions
                .iter()
                .map(|(p, s)| format!("p{p} @{} lag {}", thousands(s.offset), thousands(s.lag)))
                .collect::<Vec<String>>()
        };
    let mut partitions = show(&status.partitions);
    if !status.joined_partitions.is_empty() {
        partitions.push(format!(
            "join: {}",
            show(&status.joined_partitions).join(", ")
        ));
    }
    let mut text = format!(
        "{} in ({}/s), {} out, lag {} [{}]",
        thousands(status.records_in),
        thousands(rate.round() as u64),
        thousands(status.records_out),
        thousands(lag),
        partitions.join(", ")
    );
    if status.dead_letters > 0 {
        text.push_str(&format!(
            ", {} dead letters ({} late)",
            thousands(status.dead_letters),
            thousands(status.late)
        ));
    }
    if let Some(watermark) = status.watermark {
        text.push_str(&format!(" · watermark {}", time(watermark)));
    }
    match checkpoint {
        Some((epoch, at)) => text.push_str(&format!(
            " · checkpoint {epoch} ({} s ago)",
            at.elapsed().as_secs()
        )),
        None => text.push_str(" · no checkpoint yet"),
    }
    text
}

/// Milliseconds since the epoch as an RFC 3339 time (UTC, seconds).
fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// `1234567` as `1,234,567`.
fn thousands(n: impl TryInto<u64>) -> String {
    indicatif::HumanCount(n.try_into().unwrap_or(0)).to_string()
}

/// How often the live view redraws.
pub const REDRAW: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(6544), "6,544");
        assert_eq!(thousands(1_234_567_u64), "1,234,567");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn a_caught_up_job_says_lag_zero() {
        let mut status = Status {
            records_in: 6544,
            committed_epoch: Some(3),
            ..Default::default()
        };
        status.partitions.insert(
            0,
            weir_dataflow::job::PartitionStatus {
                offset: 6544,
                lag: 0,
            },
        );
        let text = describe(&status, 0.0, Some((3, Instant::now())), 0);
        assert!(
            text.starts_with("6,544 in (0/s), 0 out, lag 0 [p0 @6,544 lag 0]"),
            "{text}"
        );
        assert!(text.ends_with("checkpoint 3 (0 s ago)"), "{text}");
    }
}
