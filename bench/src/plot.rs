//! A self-contained SVG: throughput per second for each phase, and the
//! latency percentile curves (log-scaled "nines" axis).

use std::fmt::Write;

use crate::stats::PhaseReport;

const W: f64 = 900.0;
const H: f64 = 320.0;
const PAD: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

pub fn svg(title: &str, phases: &[PhaseReport]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="12">"#,
        2.0 * H + 40.0
    );
    let _ = write!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{PAD}" y="20" font-size="15">{}</text>"#,
        escape(title)
    );
    throughput_panel(&mut out, phases, 30.0);
    latency_panel(&mut out, phases, H + 40.0);
    out.push_str("</svg>\n");
    out
}

fn axes(out: &mut String, top: f64, x_label: &str, y_label: &str, y_max: f64) {
    let (x0, y0, x1, y1) = (PAD, top + H - 40.0, W - 20.0, top + 10.0);
    let _ = write!(
        out,
        r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        y0 + 32.0,
        escape(x_label)
    );
    let _ = write!(
        out,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = y0 - (y0 - y1) * i as f64 / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            x0 - 4.0,
            y + 4.0,
            human(v)
        );
    }
}

fn throughput_panel(out: &mut String, phases: &[PhaseReport], top: f64) {
    let buckets = phases.iter().map(|p| p.rate_per_100ms.len()).max().unwrap_or(1).max(2);
    let y_max = phases.iter().flat_map(|p| p.rate_per_100ms.iter()).copied().fold(1.0, f64::max) * 1.1;
    let x_label = format!("time since the phase started (0 .. {:.1} s)", buckets as f64 / 10.0);
    axes(out, top, &x_label, "messages / s", y_max);
    let (x0, y0, x1, y1) = (PAD, top + H - 40.0, W - 20.0, top + 10.0);
    for (i, phase) in phases.iter().enumerate() {
        let points: Vec<String> = phase
            .rate_per_100ms
            .iter()
            .enumerate()
            .map(|(b, &rate)| {
                let x = x0 + (x1 - x0) * (b as f64 + 0.5) / buckets as f64;
                format!("{x:.1},{:.1}", y0 - (y0 - y1) * rate / y_max)
            })
            .collect();
        let color = COLORS[i % COLORS.len()];
        polyline(out, color, &points);
        let label = format!("{} ({:.0} msgs/s)", phase.phase, phase.msgs_per_sec);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            x1 - 260.0,
            y1 + 14.0 * (i as f64 + 1.0),
            escape(&label)
        );
    }
}

fn latency_panel(out: &mut String, phases: &[PhaseReport], top: f64) {
    type Curve<'a> = (usize, &'a PhaseReport, &'a Vec<(f64, u64)>);
    let curves: Vec<Curve> =
        phases.iter().enumerate().filter_map(|(i, p)| Some((i, p, &p.latency.as_ref()?.curve))).collect();
    let y_max = curves.iter().flat_map(|(_, _, c)| c.iter().map(|&(_, v)| v)).max().unwrap_or(1).max(1) as f64 * 1.1;
    axes(out, top, "percentile (log of 1/(1-p): 90, 99, 99.9, ...)", "latency (us)", y_max);
    let (x0, y0, x1, y1) = (PAD, top + H - 40.0, W - 20.0, top + 10.0);
    let nines = |p: f64| (1.0 / (1.0 - (p / 100.0).min(0.99999))).log10(); // 0..5
    for label in [50.0, 90.0, 99.0, 99.9, 99.99, 99.999] {
        let x = x0 + (x1 - x0) * nines(label) / 5.0;
        let _ = write!(out, r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#, y0 + 14.0);
    }
    for (n, &(i, phase, curve)) in curves.iter().enumerate() {
        let points: Vec<String> = curve
            .iter()
            .map(|&(p, v)| format!("{:.1},{:.1}", x0 + (x1 - x0) * nines(p) / 5.0, y0 - (y0 - y1) * v as f64 / y_max))
            .collect();
        let color = COLORS[i % COLORS.len()];
        polyline(out, color, &points);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            x0 + 10.0,
            y1 + 14.0 * (n as f64 + 1.0),
            escape(&phase.phase)
        );
    }
}

fn polyline(out: &mut String, color: &str, points: &[String]) {
    let _ = write!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points.join(" "));
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
