//! Two small server-rendered SVG charts. They carry numbers and fixed phase names only,
//! never peer-written text, and each says what it shows in its title and label (and
//! the page puts the numbers beside them), so no meaning is in colour or shape alone.

use super::data::dur;
use std::fmt::Write;

const W: u64 = 360;
const H: u64 = 120;

/// Phases finished per hour over the last hours (oldest first).
pub(super) fn throughput(per_hour: &[u64]) -> String {
    let n = per_hour.len().max(1) as u64;
    let top = per_hour.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = per_hour.iter().sum();
    let label = format!(
        "Phases finished per hour over the last {n} hours: {total} in all, at most {top} in one hour"
    );
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {}" role="img" aria-label="{label}"><title>{label}</title>"#,
        H + 16
    );
    let bw = W / n;
    for (i, v) in per_hour.iter().enumerate() {
        let h = v * (H - 14) / top;
        let x = i as u64 * bw;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="{}" height="{h}"><title>{} h ago: {v}</title></rect>"#,
            x + 2,
            H - h,
            bw.saturating_sub(4).max(1),
            n - i as u64,
        );
        if *v > 0 {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{v}</text>"#,
                x + bw / 2,
                H - h - 3
            );
        }
    }
    let _ = write!(
        svg,
        r#"<line x1="0" y1="{H}" x2="{W}" y2="{H}"/><text x="0" y="{}">-{n}h</text><text x="{W}" y="{}" text-anchor="end">now</text></svg>"#,
        H + 14,
        H + 14
    );
    svg
}

/// The median duration of each phase's recent runs, one bar each.
pub(super) fn latency(rows: &[(&'static str, u64)]) -> String {
    let row_h = 22u64;
    let h = (rows.len() as u64).max(1) * row_h + 4;
    let top = rows.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let label = if rows.is_empty() {
        "Median phase duration: no finished runs in this window".to_string()
    } else {
        let parts: Vec<String> = rows
            .iter()
            .map(|(p, v)| format!("{p} {}", dur(*v)))
            .collect();
        format!("Median phase duration: {}", parts.join(", "))
    };
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-label="{label}"><title>{label}</title>"#
    );
    let x0 = 90u64;
    for (i, (p, v)) in rows.iter().enumerate() {
        let y = i as u64 * row_h + 2;
        let w = (v * (W - x0 - 60) / top).max(1);
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{p}</text><rect x="{x0}" y="{y}" width="{w}" height="{}"/><text x="{}" y="{}">{}</text>"#,
            x0 - 6,
            y + 15,
            row_h - 6,
            x0 + w + 4,
            y + 15,
            dur(*v)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_a_label() {
        let t = throughput(&[0, 2, 5, 1]);
        assert!(t.starts_with("<svg") && t.ends_with("</svg>"));
        assert!(t.contains("8 in all"), "{t}");
        assert_eq!(t.matches("<rect").count(), 4);
        let l = latency(&[("plan", 2_000), ("review", 65_000)]);
        assert!(l.contains("plan 2.0s, review 1m 05s"), "{l}");
        assert!(latency(&[]).contains("no finished runs"));
    }
}
