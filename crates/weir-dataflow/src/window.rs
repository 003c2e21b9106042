//! Event-time windows.
//!
//! Tumbling and hopping windows are computed from **panes**: slices of time
//! as wide as the greatest common divisor of the window's size and slide. An
//! event updates the one pane it falls in; a window's result merges the
//! panes it covers when it closes. A 1 h window sliding every 5 min thus
//! costs one update per event instead of twelve.
//!
//! Session windows group a key's events separated by less than a gap; they
//! are kept per key and merged as events arrive.
//!
//! The **global** window holds every event of a key and never closes: a
//! continuous aggregation ("the current posterior per arm"), emitted as it
//! changes. It is a window as long as time itself (one pane), so the same
//! arithmetic serves it.

use std::time::Duration;

/// A window over event time (milliseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling {
        /// Window length in milliseconds.
        size: i64,
    },
    /// Windows of `size` starting every `slide`.
    Hopping {
        /// Window length in milliseconds.
        size: i64,
        /// Distance between window starts in milliseconds.
        slide: i64,
    },
    /// A key's events closer than `gap` to each other.
    Session {
        /// Inactivity that ends a session, in milliseconds.
        gap: i64,
    },
    /// Every event of a key, in a window that never closes.
    Global,
}

/// Why a window specification is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid window: {0}")]
pub struct WindowError(pub String);

impl Window {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Result<Self, WindowError> {
        let size = millis(size)?;
        Ok(Self::Tumbling { size })
    }

    /// Windows of `size` starting every `slide`.
    pub fn hopping(size: Duration, slide: Duration) -> Result<Self, WindowError> {
        let (size, slide) = (millis(size)?, millis(slide)?);
        if slide > size {
            return Err(WindowError(format!(
                "the slide ({slide} ms) is longer than the window ({size} ms): events between windows would be lost"
            )));
        }
        Ok(Self::Hopping { size, slide })
    }

    /// Session windows closed by `gap` of inactivity.
    pub fn session(gap: Duration) -> Result<Self, WindowError> {
        Ok(Self::Session { gap: millis(gap)? })
    }

    /// Width of a pane (tumbling and hopping windows).
    pub fn pane(&self) -> i64 {
        match *self {
            Window::Tumbling { size } => size,
            Window::Hopping { size, slide } => gcd(size, slide),
            Window::Session { gap } => gap,
            Window::Global => i64::MAX,
        }
    }

    /// Window length (for sessions: the gap).
    pub fn size(&self) -> i64 {
        match *self {
            Window::Tumbling { size } | Window::Hopping { size, .. } => size,
            Window::Session { gap } => gap,
            Window::Global => i64::MAX,
        }
    }

    fn slide(&self) -> i64 {
        match *self {
            Window::Tumbling { size } => size,
            Window::Hopping { slide, .. } => slide,
            Window::Session { gap } => gap,
            Window::Global => i64::MAX,
        }
    }

    /// Whether this is the global window (no window columns, never closes).
    pub fn is_global(&self) -> bool {
        *self == Window::Global
    }

    /// Start of the pane holding event time `t`.
    pub fn pane_of(&self, t: i64) -> i64 {
        if self.is_global() {
            return 0;
        }
        let pane = self.pane();
        t - t.rem_euclid(pane)
    }

    /// Starts of the windows that hold event time `t`, earliest first.
    pub fn windows_of(&self, t: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.size(), self.slide());
        let last = t - t.rem_euclid(slide);
        let first = last - (size - 1) / slide * slide;
        (0..)
            .map(move |i| first + i * slide)
            .take_while(move |&s| s <= last)
            .filter(move |&s| s + size > t)
    }

    /// Starts of the windows that end in `(after, up_to]`, earliest first.
    pub fn windows_ending(&self, after: i64, up_to: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.size(), self.slide());
        // Window start s ends at s + size; s is a multiple of the slide.
        let lowest = after.saturating_sub(size).saturating_add(1);
        let first = lowest + (slide - lowest.rem_euclid(slide)) % slide;
        (0..)
            .map(move |i| first + i * slide)
            .take_while(move |&s| s + size <= up_to)
    }

    /// Pane starts covered by the window starting at `start`.
    pub fn panes_of_window(&self, start: i64) -> impl Iterator<Item = i64> + use<> {
        let (pane, size) = (self.pane(), self.size());
        (0..size / pane).map(move |i| start + i * pane)
    }

    /// The last event time whose pane can be forgotten once the watermark
    /// reaches `watermark`: every window holding it has closed.
    pub fn pane_expired(&self, pane_start: i64, watermark: i64) -> bool {
        // The latest window holding the pane starts at or before the pane
        // and ends `size` later.
        let latest_start = pane_start - pane_start.rem_euclid(self.slide());
        latest_start + self.size() <= watermark
    }
}

fn millis(duration: Duration) -> Result<i64, WindowError> {
    let ms = i64::try_from(duration.as_millis())
        .map_err(|_| WindowError(format!("{duration:?} is too long")))?;
    if ms == 0 || u128::from(ms as u64) * 1_000_000 != duration.as_nanos() {
        return Err(WindowError(format!(
            "{duration:?} must be a positive whole number of milliseconds"
        )));
    }
    Ok(ms)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopping_windows_hold_the_right_events() {
        let w = Window::hopping(Duration::from_secs(3600), Duration::from_secs(300)).unwrap();
        assert_eq!(w.pane(), 300_000);
        let starts: Vec<i64> = w.windows_of(3_600_000).collect();
        assert_eq!(starts.len(), 12);
        assert_eq!(starts[0], 300_000);
        assert_eq!(*starts.last().unwrap(), 3_600_000);
        // Brute force: every slide multiple s with s <= t < s + size.
        for t in [-1_i64, 0, 1, 299_999, 300_000, 7_123_456] {
            let expected: Vec<i64> = (-30..40)
                .map(|i| i * 300_000)
                .filter(|s| *s <= t && t < s + 3_600_000)
                .collect();
            assert_eq!(w.windows_of(t).collect::<Vec<_>>(), expected, "t = {t}");
        }
        let ending: Vec<i64> = w.windows_ending(3_600_000, 4_200_000).collect();
        assert_eq!(ending, vec![300_000, 600_000]);
        assert_eq!(w.panes_of_window(0).count(), 12);
        assert!(!w.pane_expired(300_000, 3_899_999));
        assert!(w.pane_expired(300_000, 3_900_000));
    }

    #[test]
    fn uneven_hops_use_smaller_panes() {
        let w = Window::hopping(Duration::from_secs(10), Duration::from_secs(4)).unwrap();
        assert_eq!(w.pane(), 2_000);
        assert_eq!(
            w.windows_of(9_000).collect::<Vec<_>>(),
            vec![0, 4_000, 8_000]
        );
        assert_eq!(
            w.panes_of_window(4_000).collect::<Vec<_>>(),
            vec![4_000, 6_000, 8_000, 10_000, 12_000]
        );
    }

    #[test]
    fn tumbling_windows_are_their_own_panes() {
        let w = Window::tumbling(Duration::from_secs(60)).unwrap();
        assert_eq!(w.windows_of(61_000).collect::<Vec<_>>(), vec![60_000]);
        assert_eq!(
            w.windows_ending(0, 180_000).collect::<Vec<_>>(),
            vec![0, 60_000, 120_000]
        );
        assert!(Window::hopping(Duration::from_secs(1), Duration::from_secs(2)).is_err());
        assert!(Window::tumbling(Duration::from_micros(1500)).is_err());
    }
}
