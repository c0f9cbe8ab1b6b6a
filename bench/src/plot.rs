//! A self-contained SVG report: one panel per phase, each with three charts
//! — throughput over time (the warm-up shaded), latency over time (p50, p99
//! and max per interval of about a second) and the latency percentile curve.
//! Time axes are in seconds since the phase started; latency axes are
//! log-scaled, with units on every tick.

use std::fmt::Write;

use crate::stats::{human_us, PhaseReport};

const W: f64 = 960.0;
/// Margins of a chart's plotting area inside its box.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 40.0;
const CHART_H: f64 = 210.0;
const PLOT_H: f64 = 150.0;
const PHASE_TITLE_H: f64 = 34.0;
const PANEL_H: f64 = PHASE_TITLE_H + 3.0 * CHART_H + 16.0;
const TITLE_H: f64 = 36.0;
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#555555"];

pub fn svg(title: &str, phases: &[PhaseReport]) -> String {
    let height = TITLE_H + PANEL_H * phases.len().max(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="16">{}</text>"#,
        escape(title)
    );
    if phases.is_empty() {
        text(&mut out, LEFT, TITLE_H + 20.0, "no phase ran", "start");
    }
    for (i, phase) in phases.iter().enumerate() {
        phase_panel(&mut out, phase, TITLE_H + PANEL_H * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

/// The plotting area of one chart.
#[derive(Clone, Copy)]
struct Chart {
    x0: f64,
    x1: f64,
    /// Bottom and top of the plotting area (SVG y grows downwards).
    y0: f64,
    y1: f64,
}

impl Chart {
    fn at(top: f64) -> Chart {
        Chart { x0: LEFT, x1: W - RIGHT, y0: top + 12.0 + PLOT_H, y1: top + 12.0 }
    }

    /// x for a fraction (0..1) of the axis.
    fn x(&self, f: f64) -> f64 {
        self.x0 + (self.x1 - self.x0) * f.clamp(0.0, 1.0)
    }

    fn y(&self, f: f64) -> f64 {
        self.y0 - (self.y0 - self.y1) * f.clamp(0.0, 1.0)
    }

    fn frame(&self, out: &mut String, x_label: &str, y_label: &str) {
        let (x0, x1, y0, y1) = (self.x0, self.x1, self.y0, self.y1);
        let _ = write!(
            out,
            r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
        );
        text(out, (x0 + x1) / 2.0, y0 + 34.0, x_label, "middle");
        let mid = (y0 + y1) / 2.0;
        let _ = write!(
            out,
            r#"<text x="16" y="{mid}" transform="rotate(-90 16 {mid})" text-anchor="middle">{}</text>"#,
            escape(y_label)
        );
    }

    fn grid_y(&self, out: &mut String, f: f64, label: &str) {
        let (x0, x1, y) = (self.x0, self.x1, self.y(f));
        let _ = write!(out, r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#e4e4e4"/>"##);
        text(out, x0 - 5.0, y + 4.0, label, "end");
    }

    fn tick_x(&self, out: &mut String, f: f64, label: &str) {
        let (x, y0) = (self.x(f), self.y0);
        let _ = write!(out, r#"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="black"/>"#, y0 + 4.0);
        text(out, x, y0 + 16.0, label, "middle");
    }

    /// Seconds ticks over 0..`span` s.
    fn time_axis(&self, out: &mut String, span: f64) {
        let step = nice_step(span / 8.0);
        let mut t = 0.0;
        while t <= span + 1e-9 {
            self.tick_x(out, t / span, &format!("{} s", trim(t)));
            t += step;
        }
    }
}

fn phase_panel(out: &mut String, phase: &PhaseReport, top: f64) {
    let _ = write!(out, r#"<g class="phase" id="phase-{}">"#, escape(&phase.phase));
    let _ = write!(out, r##"<line x1="10" y1="{top}" x2="{}" y2="{top}" stroke="#999"/>"##, W - 10.0);
    let mut heading = format!(
        "{}: {:.0} msgs/s, {} msgs in {:.2} s, errors {}",
        phase.phase, phase.msgs_per_sec, phase.messages, phase.seconds, phase.errors
    );
    if let Some(l) = &phase.latency {
        let _ = write!(heading, ", p50 {} p99 {}", human_us(l.p50_us), human_us(l.p99_us));
    }
    if phase.partial {
        heading.push_str(" (partial: interrupted)");
    }
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 22.0,
        escape(&heading)
    );
    let span = phase.seconds.max(0.1);
    let charts_top = top + PHASE_TITLE_H;
    throughput_chart(out, phase, Chart::at(charts_top), span);
    latency_over_time_chart(out, phase, Chart::at(charts_top + CHART_H), span);
    percentile_chart(out, phase, Chart::at(charts_top + 2.0 * CHART_H));
    out.push_str("</g>");
}

fn throughput_chart(out: &mut String, phase: &PhaseReport, c: Chart, span: f64) {
    if phase.warmup_secs > 0.0 {
        let x = c.x(phase.warmup_secs / span);
        let _ = write!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#f0f0f0"/>"##,
            c.x0,
            c.y1,
            x - c.x0,
            c.y0 - c.y1
        );
        text(out, c.x0 + 4.0, c.y1 + 12.0, "warm-up (left out of the figures)", "start");
    }
    let y_max = phase.rate_per_100ms.iter().copied().fold(1.0, f64::max) * 1.1;
    c.frame(out, "time since the phase started (s)", "messages / s");
    for i in 0..=4 {
        c.grid_y(out, i as f64 / 4.0, &human(y_max * i as f64 / 4.0));
    }
    c.time_axis(out, span);
    let points: Vec<(f64, f64)> = phase
        .rate_per_100ms
        .iter()
        .enumerate()
        .map(|(b, &rate)| (c.x((b as f64 + 0.5) * 0.1 / span), c.y(rate / y_max)))
        .collect();
    polyline(out, COLORS[0], &points);
    if points.len() < 50 {
        // A short phase: a line of one or two points would not show.
        markers(out, COLORS[0], &points);
    }
}

/// A log axis over whole decades covering `lo..=hi` microseconds.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn new(values: impl Iterator<Item = u64>) -> LogAxis {
        let (mut min, mut max) = (f64::MAX, 1.0f64);
        for v in values {
            min = min.min(v.max(1) as f64);
            max = max.max(v.max(1) as f64);
        }
        let lo = 10f64.powf(min.min(max).log10().floor());
        let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
        LogAxis { lo, hi }
    }

    fn f(&self, us: u64) -> f64 {
        ((us.max(1) as f64).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
    }

    fn draw(&self, out: &mut String, c: &Chart) {
        let mut decade = self.lo;
        while decade <= self.hi * 1.0001 {
            c.grid_y(out, self.f(decade as u64), &human_us_tick(decade as u64));
            decade *= 10.0;
        }
    }
}

fn latency_over_time_chart(out: &mut String, phase: &PhaseReport, c: Chart, span: f64) {
    c.frame(out, "time since the phase started (s)", "latency (log scale)");
    c.time_axis(out, span);
    let series = &phase.latency_over_time;
    if series.is_empty() {
        text(out, c.x(0.5), c.y(0.5), "no message latency measured in this phase", "middle");
        return;
    }
    let axis = LogAxis::new(series.iter().flat_map(|p| [p.p50_us, p.max_us]));
    axis.draw(out, &c);
    let lines = [
        ("p50", series.iter().map(|p| p.p50_us).collect::<Vec<_>>()),
        ("p99", series.iter().map(|p| p.p99_us).collect()),
        ("max", series.iter().map(|p| p.max_us).collect()),
    ];
    for (i, (name, values)) in lines.iter().enumerate() {
        let points: Vec<(f64, f64)> =
            series.iter().zip(values).map(|(p, &v)| (c.x(p.end_secs / span), c.y(axis.f(v)))).collect();
        polyline(out, COLORS[i], &points);
        markers(out, COLORS[i], &points);
        legend(out, &c, i, name, COLORS[i]);
    }
}

fn percentile_chart(out: &mut String, phase: &PhaseReport, c: Chart) {
    c.frame(out, "percentile (measured window)", "latency (log scale)");
    // x: "nines", log of 1/(1-p): 0 at p0, 1 at p90, 2 at p99 ... 5 at p99.999.
    let nines = |p: f64| (1.0 / (1.0 - (p / 100.0).min(0.99999))).log10() / 5.0;
    for p in [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999] {
        c.tick_x(out, nines(p), &format!("p{}", trim(p)));
    }
    let curves: Vec<(&str, &Vec<(f64, u64)>)> = [("messages", &phase.latency), ("commits", &phase.commit_latency)]
        .into_iter()
        .filter_map(|(name, l)| Some((name, &l.as_ref()?.curve)))
        .collect();
    if curves.is_empty() {
        text(out, c.x(0.5), c.y(0.5), "no latency measured in this phase", "middle");
        return;
    }
    let axis = LogAxis::new(curves.iter().flat_map(|(_, curve)| curve.iter().map(|&(_, v)| v)));
    axis.draw(out, &c);
    for (i, (name, curve)) in curves.iter().enumerate() {
        let points: Vec<(f64, f64)> = curve.iter().map(|&(p, v)| (c.x(nines(p)), c.y(axis.f(v)))).collect();
        polyline(out, COLORS[i], &points);
        legend(out, &c, i, name, COLORS[i]);
    }
}

fn legend(out: &mut String, c: &Chart, i: usize, name: &str, color: &str) {
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" fill="{color}" font-weight="bold">{}</text>"#,
        c.x1 - 70.0,
        c.y1 + 14.0 * (i as f64 + 1.0),
        escape(name)
    );
}

fn polyline(out: &mut String, color: &str, points: &[(f64, f64)]) {
    let points: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = write!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points.join(" "));
}

fn markers(out: &mut String, color: &str, points: &[(f64, f64)]) {
    for &(x, y) in points {
        let _ = write!(out, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{color}"/>"#);
    }
}

fn text(out: &mut String, x: f64, y: f64, s: &str, anchor: &str) {
    let _ = write!(out, r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}">{}</text>"#, escape(s));
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-3);
    let decade = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * decade).find(|&s| s >= raw).unwrap_or(10.0 * decade)
}

/// A number without trailing zeros ("0.5", "2", "99.9").
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A decade tick: "10 us", "1 ms", "100 ms", "1 s".
fn human_us_tick(us: u64) -> String {
    match us {
        us if us >= 1_000_000 => format!("{} s", us / 1_000_000),
        us if us >= 1_000 => format!("{} ms", us / 1_000),
        us => format!("{us} us"),
    }
}

fn human(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{LatencyPoint, PhaseTiming, Warmup, WorkerStats};
    use std::time::Duration;

    fn phase(name: &str, with_latency: bool) -> PhaseReport {
        let mut stats = WorkerStats::new(Warmup::new(0.5));
        for i in 0..30u64 {
            stats.count(Duration::from_millis(i * 100), 1000, 100_000);
            if with_latency {
                stats.latency(Duration::from_millis(i * 100), 200 + i * 100, 1000);
            }
        }
        let timing = PhaseTiming {
            elapsed: Duration::from_secs(3),
            joined: Duration::ZERO,
            warmup: Warmup::new(0.5),
            interrupted: false,
            load_ended: None,
        };
        let series = if with_latency {
            (1..=3)
                .map(|s| LatencyPoint {
                    end_secs: s as f64,
                    count: 10,
                    p50_us: 300 * s,
                    p99_us: 900 * s,
                    max_us: 5000 * s,
                })
                .collect()
        } else {
            Vec::new()
        };
        PhaseReport::new(name, &stats, timing, series)
    }

    #[test]
    fn one_panel_per_phase_with_labelled_axes() {
        let drawing = svg("t", &[phase("produce", true), phase("consume", false)]);
        assert!(drawing.starts_with("<svg") && drawing.ends_with("</svg>\n"));
        assert_eq!(drawing.matches(r#"<g class="phase""#).count(), 2);
        assert_eq!(drawing.matches("time since the phase started (s)").count(), 4, "two time charts per phase");
        assert!(drawing.contains("latency (log scale)"));
        // Decade ticks with units on the log axes.
        for tick in ["100 us", "1 ms", "10 ms"] {
            assert!(drawing.contains(&format!(">{tick}<")), "no {tick} tick");
        }
        assert!(drawing.contains(">2 s<") || drawing.contains(">1 s<"), "labelled time ticks");
        assert!(drawing.contains("warm-up (left out of the figures)"));
        assert!(drawing.contains("no message latency measured in this phase"), "the consume panel says so");
        assert!(drawing.contains(">p99.9<"));
    }

    #[test]
    fn steps_and_numbers_read_well() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(10.0), 10.0);
        assert_eq!(trim(0.5), "0.5");
        assert_eq!(trim(2.0), "2");
        assert_eq!(human_us_tick(1000), "1 ms");
    }
}
