//! `mesh-sim run --out DIR`: the report (JSON and text), every node's final `/api/status`, and
//! SVG plots (TTFT and tok/s over time per model, gossip convergence).

use crate::Outcome;
use crate::plot::{Chart, Series, Style};
use crate::timeline::Timeline;
use std::path::{Path, PathBuf};

/// Writes `outcome` under `dir` (created if missing). Returns the files written.
pub fn write(dir: &Path, outcome: &Outcome) -> std::io::Result<Vec<PathBuf>> {
    let status_dir = dir.join("status");
    std::fs::create_dir_all(&status_dir)?;
    let mut written = Vec::new();
    let mut put = |path: PathBuf, text: String| -> std::io::Result<()> {
        std::fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    put(dir.join("report.json"), outcome.report.to_json())?;
    put(dir.join("report.txt"), outcome.report.to_text())?;
    for (peer, status) in &outcome.statuses {
        let mut text =
            serde_json::to_string_pretty(status).expect("a status payload is plain data");
        text.push('\n');
        put(status_dir.join(format!("{}.json", file_name(peer))), text)?;
    }
    put(dir.join("ttft.svg"), ttft_chart(&outcome.timeline).to_svg())?;
    put(dir.join("tps.svg"), tps_chart(&outcome.timeline).to_svg())?;
    put(
        dir.join("gossip.svg"),
        gossip_chart(&outcome.timeline).to_svg(),
    )?;
    Ok(written)
}

/// A peer name as a file name: anything but letters, digits, `-`, `_` and `.` becomes `_`.
fn file_name(peer: &str) -> String {
    peer.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn per_model(t: &Timeline, y: impl Fn(&crate::timeline::ChatPoint) -> f64) -> Vec<Series> {
    t.models
        .iter()
        .enumerate()
        .map(|(m, name)| Series {
            name: name.clone(),
            points: t
                .chats
                .iter()
                .filter(|c| c.model == m)
                .map(|c| (c.at_s, y(c)))
                .collect(),
            style: Style::Dots,
            color: m,
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// Every chat's time to first token as its entry measured it.
pub fn ttft_chart(t: &Timeline) -> Chart {
    Chart {
        title: "Time to first token through the mesh".into(),
        x_label: "virtual time (s)".into(),
        y_label: "TTFT (ms)".into(),
        series: per_model(t, |c| c.ttft_ms),
        x_marker: None,
    }
}

/// Every chat's decode speed as its entry measured it.
pub fn tps_chart(t: &Timeline) -> Chart {
    Chart {
        title: "Decode speed through the mesh".into(),
        x_label: "virtual time (s)".into(),
        y_label: "tok/s".into(),
        series: per_model(t, |c| c.tps),
        x_marker: None,
    }
}

/// How changed announcements spread: % of the live peers holding each, against the time since
/// it was published, one thin line per sampled change.
pub fn gossip_chart(t: &Timeline) -> Chart {
    let series = t
        .spreads
        .iter()
        .filter(|s| s.peers > 0 && !s.arrivals_ms.is_empty())
        .enumerate()
        .map(|(i, s)| {
            let mut points = vec![(0.0, 0.0)];
            points.extend(
                s.arrivals_ms
                    .iter()
                    .enumerate()
                    .map(|(k, &ms)| (ms, 100.0 * (k + 1) as f64 / s.peers as f64)),
            );
            Series {
                name: if i == 0 {
                    format!("{} changes", t.spreads.len())
                } else {
                    String::new()
                },
                points,
                style: Style::Thin,
                color: 0,
            }
        })
        .collect();
    Chart {
        title: "Gossip: changed announcements reaching the live peers".into(),
        x_label: "ms since publication".into(),
        y_label: "% of peers holding it".into(),
        series,
        x_marker: Some((1000.0, "1 s goal".into())),
    }
}
