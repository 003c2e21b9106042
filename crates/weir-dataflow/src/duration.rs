//! Durations as jobs and commands write them: `250ms`, `5s`, `10m`, `1h`,
//! `2d`.

use std::time::Duration;

/// Parses a duration such as `250ms`, `5s`, `10m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit (ms, s, m, h, d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a unit (ms, s, m, h, d)"
            ));
        }
    };
    Ok(Duration::from_millis(number * ms))
}
