//! Self-contained SVG line charts for HTML reports (`weir runs compare
//! --plot`, evaluation reports): no scripts, nothing fetched.

/// A named line of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name, in the legend.
    pub name: String,
    /// Its points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Text made safe for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A chart titled `title`, a line per series, axes fitted to the points
/// (or to `bounds`, `((x0, x1), (y0, y1))`, when given: a ROC curve's unit
/// square). Empty when there is no finite point.
pub fn line_chart(
    title: &str,
    x_label: &str,
    series: &[Series],
    bounds: Option<((f64, f64), (f64, f64))>,
) -> String {
    let (width, height, margin) = (640.0, 260.0, 50.0);
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points = series.iter().flat_map(|s| s.points.iter().filter(finite));
    let range = |pick: fn(&(f64, f64)) -> f64| {
        points
            .clone()
            .map(pick)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let ((x0, x1), (y0, y1)) = bounds.unwrap_or_else(|| (range(|p| p.0), range(|p| p.1)));
    if !x0.is_finite() || !y0.is_finite() {
        return String::new();
    }
    let scale = |v: f64, lo: f64, hi: f64, size: f64| {
        if hi > lo {
            (v - lo) / (hi - lo) * size
        } else {
            size / 2.0
        }
    };
    let mut svg = format!(
        "<h3>{}</h3>\n<svg width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\">\n",
        escape(title)
    );
    svg.push_str(&format!(
        "<rect x=\"{margin}\" y=\"10\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
        width - margin - 10.0,
        height - margin - 10.0
    ));
    let x_label = escape(x_label);
    svg.push_str(&format!(
        "<text x=\"{margin}\" y=\"{}\" font-size=\"11\">{x_label} {x0}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{x_label} {x1}</text>\n",
        height - margin + 15.0,
        width - 10.0,
        height - margin + 15.0
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{y0:.4}</text><text x=\"{}\" y=\"20\" font-size=\"11\" text-anchor=\"end\">{y1:.4}</text>\n",
        margin - 4.0,
        height - margin,
        margin - 4.0
    ));
    for (i, line) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let coordinates: Vec<String> = line
            .points
            .iter()
            .filter(finite)
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    margin + scale(*x, x0, x1, width - margin - 10.0),
                    height - margin - scale(*y, y0, y1, height - margin - 10.0)
                )
            })
            .collect();
        let name = escape(&line.name);
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"><title>{name}</title></polyline>\n",
            coordinates.join(" "),
        ));
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{color}\">{name}</text>\n",
            margin + 10.0 + 140.0 * i as f64,
            height - 12.0,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
