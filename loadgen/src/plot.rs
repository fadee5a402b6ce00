//! `--report FILE.html`: a self-contained page with the round-trip latency percentile
//! spectrum of each backend, drawn in SVG the way HdrHistogram's plotter does: the x axis
//! is `1/(1-p)` on a log scale, so 90 %, 99 %, 99.9 %, ... are equally spaced.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::{fmt_opt_us, Report};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 45.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;
/// Furthest percentile shown: 99.9999 % (x = 10^6).
const MAX_NINES: f64 = 6.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// One curve: a name and its histogram (µs).
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Round-trip times, µs.
    pub histogram: &'a Histogram<u64>,
}

/// (log10(1/(1-p)), value in ms) points of a histogram's percentile spectrum.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    if h.is_empty() {
        return points;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        if q >= 1.0 {
            break;
        }
        let x = (1.0 / (1.0 - q)).log10().min(MAX_NINES);
        points.push((
            x,
            h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
        ));
    }
    // The maximum, at the far right of what the sample count can resolve.
    let last_x = points.last().map_or(0.0, |p| p.0);
    let x_max = (h.len() as f64).log10().max(last_x).clamp(0.0, MAX_NINES);
    points.push((x_max, h.max() as f64 / 1000.0));
    points
}

/// A round upper bound for the y axis and its tick step.
fn nice_scale(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// Renders the SVG plot of `series`.
pub fn svg(series: &[Series<'_>]) -> String {
    let curves: Vec<Vec<(f64, f64)>> = series.iter().map(|s| spectrum(s.histogram)).collect();
    let x_top = curves
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(2.0f64, f64::max)
        .ceil()
        .min(MAX_NINES);
    let (y_top, y_step) = nice_scale(curves.iter().flatten().map(|p| p.1).fold(0.0, f64::max));
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_top * pw;
    let sy = |y: f64| TOP + ph - y / y_top * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>"##
    );
    // x grid: 0 %, 90 %, 99 %, ...
    for k in 0..=(x_top as u32) {
        let x = sx(f64::from(k));
        let label = match k {
            0 => "0%".to_owned(),
            1 => "90%".to_owned(),
            k => format!("99.{}%", "9".repeat(k as usize - 2)).replace("99.%", "99%"),
        };
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    let mut y = 0.0;
    while y <= y_top + 1e-9 {
        let py = sy(y);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            trim_float(y)
        );
        y += y_step;
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">round trip (ms)</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 8.0,
        TOP + ph / 2.0
    );
    for (i, (curve, ser)) in curves.iter().zip(series).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let dash = if ser.name == "total" {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let points: Vec<String> = curve
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            LEFT + 42.0,
            ly + 4.0,
            escape(ser.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn trim_float(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole HTML page: title, run parameters, the plot and a percentile table.
pub fn html(report: &Report, series: &[Series<'_>]) -> String {
    let mut page = String::new();
    let mode = match report.rate {
        Some(r) => format!("open loop, {r} msg/s"),
        None => format!("closed loop, {} in flight per connection", report.inflight),
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>wsgate loadgen: latency</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th:first-child,td:first-child{{text-align:left}}</style>\
         </head><body><h1>Round-trip latency by percentile</h1><p>{} — {mode}, {} connections, {} B messages, {:.1} s</p>\n",
        escape(&report.url),
        report.total.connections.requested,
        report.size,
        report.duration_s
    );
    page.push_str(&svg(series));
    page.push_str(
        "\n<table><tr><th>backend</th><th>echoed</th><th>msg/s</th><th>p50</th><th>p90</th><th>p99</th>\
         <th>p99.9</th><th>max</th><th>errors</th></tr>\n",
    );
    for s in report.backends.iter().chain(std::iter::once(&report.total)) {
        let l = &s.rtt_us;
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.backend),
            s.messages.echoed,
            s.messages.msgs_per_s,
            fmt_opt_us(l.p50),
            fmt_opt_us(l.p90),
            fmt_opt_us(l.p99),
            fmt_opt_us(l.p999),
            fmt_opt_us(l.max),
            s.errors.total
        );
    }
    page.push_str("</table></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spectrum_is_monotonic_and_ends_at_the_max() -> anyhow::Result<()> {
        let mut h = crate::stats::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v)?;
        }
        let pts = spectrum(&h);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let last = pts.last().copied().unwrap_or_default();
        assert!((last.1 - 10.0).abs() < 0.05, "max is 10 ms, got {}", last.1);
        let svg = svg(&[Series {
            name: "Backend_ABC",
            histogram: &h,
        }]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("99.9%") && svg.contains("polyline"));
        Ok(())
    }

    #[test]
    fn empty_histograms_still_draw_axes() {
        let h = crate::stats::new_histogram();
        let svg = svg(&[Series {
            name: "x<y",
            histogram: &h,
        }]);
        assert!(svg.contains("x&lt;y"));
    }

    #[test]
    fn scales_are_round() {
        assert_eq!(nice_scale(7.3), (8.0, 2.0));
        assert_eq!(nice_scale(0.42), (0.5, 0.1));
    }
}
