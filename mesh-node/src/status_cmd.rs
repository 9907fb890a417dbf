//! `mesh-node status`: fetch a node's `/api/status` and print it for a person (or as JSON).

use crate::config::StatusArgs;
use anyhow::Context;
use mesh_core::status::payload::StatusPayload;
use std::collections::BTreeSet;
use std::fmt::Write;

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("http://{}/api/status", args.api_addr);
    let text = reqwest::get(&url)
        .await
        .with_context(|| format!("no node answering at {url} (is `mesh-node serve` running?)"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .text()
        .await?;
    let payload: StatusPayload =
        serde_json::from_str(&text).with_context(|| format!("{url} returned unexpected JSON"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&payload)?);
    } else {
        print!("{}", render(&payload));
    }
    Ok(())
}

/// The status as a few lines of text.
pub fn render(p: &StatusPayload) -> String {
    let mut out = String::new();
    let state = serde_json::to_value(p.node_state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let role = if p.is_host {
        "host"
    } else if p.is_client {
        "client"
    } else {
        "worker"
    };
    let _ = writeln!(
        out,
        "node {} · {state} · {role} · v{}",
        p.node_id, p.version
    );
    let mesh = if p.mesh_id.is_empty() {
        "(none yet)"
    } else {
        &p.mesh_id
    };
    let _ = writeln!(
        out,
        "mesh {mesh} · fast memory {:.1} GB · {} in flight",
        p.my_vram_gb, p.inflight_requests
    );
    let models: BTreeSet<&String> = p
        .requested_models
        .iter()
        .chain(&p.hosted_models)
        .chain(p.measured_samples_by_model.keys())
        .collect();
    if models.is_empty() {
        let _ = writeln!(out, "no models");
    } else {
        let width = models.iter().map(|m| m.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(
            out,
            "{:width$}  hosted  tok/s p50   TTFT p50  samples  native tok/s",
            "model"
        );
        for m in models {
            let num = |v: Option<&f64>, unit: &str, prec: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}{unit}"))
            };
            let _ = writeln!(
                out,
                "{m:width$}  {:6}  {:>9}  {:>9}  {:>7}  {:>12}",
                if p.hosted_models.contains(m) {
                    "yes"
                } else {
                    "no"
                },
                num(p.measured_tps_p50_by_model.get(m), "", 2),
                num(p.measured_ttft_ms_p50_by_model.get(m), " ms", 0),
                p.measured_samples_by_model.get(m).copied().unwrap_or(0),
                num(p.native_tps_p50_by_model.get(m), "", 2),
            );
        }
    }
    if p.peers.is_empty() {
        let _ = writeln!(out, "peers: none");
    } else {
        let _ = writeln!(out, "peers:");
        for peer in &p.peers {
            let rtt = peer
                .rtt_ms
                .map_or_else(|| "undialable".to_string(), |r| format!("{r} ms"));
            let _ = writeln!(
                out,
                "  {} {:?} {:.1} GB rtt {rtt} hosts [{}]",
                peer.id,
                peer.role,
                peer.vram_gb,
                peer.hosted_models.join(", ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::status::payload::NodeState;
    use std::collections::BTreeMap;

    #[test]
    fn renders_models_with_their_measurements() {
        let model = "SmolLM2-135M-Instruct.Q4_1".to_string();
        let p = StatusPayload {
            version: "0.1.0".into(),
            node_id: "1f1f1f1f1f".into(),
            node_state: NodeState::Serving,
            is_host: true,
            is_client: false,
            models: vec![model.clone()],
            requested_models: vec![model.clone()],
            serving_models: vec![model.clone()],
            hosted_models: vec![model.clone()],
            my_vram_gb: 8.0,
            peers: vec![],
            inflight_requests: 0,
            mesh_id: String::new(),
            measured_tps_p50_by_model: BTreeMap::from([(model.clone(), 141.234)]),
            measured_ttft_ms_p50_by_model: BTreeMap::from([(model.clone(), 35.4)]),
            measured_samples_by_model: BTreeMap::from([(model.clone(), 2)]),
            native_tps_p50_by_model: BTreeMap::new(),
            native_ttft_ms_p50_by_model: BTreeMap::new(),
            native_samples_by_model: BTreeMap::new(),
            my_split_role: None,
            my_split_group: None,
        };
        let text = render(&p);
        assert_eq!(
            text,
            "node 1f1f1f1f1f · serving · host · v0.1.0\n\
             mesh (none yet) · fast memory 8.0 GB · 0 in flight\n\
             model                       hosted  tok/s p50   TTFT p50  samples  native tok/s\n\
             SmolLM2-135M-Instruct.Q4_1  yes        141.23      35 ms        2             -\n\
             peers: none\n"
        );
    }
}
