//! The `mesh-sim` binary: exit codes and messages a person sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mesh_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-sim"))
        .args(args)
        .env_remove("MESH_SEED")
        .output()
        .expect("the mesh-sim binary runs")
}

fn scenario() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/qwen3-8b-4080s-solo.toml")
        .display()
        .to_string()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn run_prints_a_text_report() {
    let out = mesh_sim(&["run", &scenario()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("scenario qwen3-8b-4080s-solo  seed 42  duration 1800 s  engine turmoil"),
        "the real node stack by default: {text}"
    );
    assert!(
        text.contains("Qwen3-8B-Q4_K_M  daily-driver  solo  rtx4080s"),
        "{text}"
    );
}

#[test]
fn run_json_with_a_seed_prints_that_seeds_report() {
    let out = mesh_sim(&[
        "run",
        &scenario(),
        "--json",
        "--seed",
        "7",
        "--engine",
        "des",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["seed"], 7);
    assert_eq!(json["models"][0]["plan"], "solo");
}

#[test]
fn a_bad_file_exits_non_zero_naming_the_file_and_the_key() {
    let text = std::fs::read_to_string(scenario())
        .unwrap()
        .replace("fast_memory_gb = 17.2", "fast_memory_gib = 17.2");
    let bad = temp_file("bad.toml", &text);
    let out = mesh_sim(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.toml") && err.contains("fast_memory_gib"),
        "{err}"
    );

    let invalid = temp_file(
        "invalid.toml",
        &text
            .replace("fast_memory_gib", "fast_memory_gb")
            .replace("rate_per_min = 3", "rate_per_min = 0"),
    );
    let out = mesh_sim(&["run", invalid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("[[traffic]] #1, `rate_per_min`"), "{err}");

    let out = mesh_sim(&["run", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml: cannot read"));
}

#[test]
fn the_turmoil_engine_runs_a_replay_and_refuses_what_it_cannot_run() {
    let out = mesh_sim(&["run", &scenario(), "--engine", "turmoil", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["engine"], "turmoil");
    assert_eq!(json["models"][0]["plan"], "solo");
    assert_eq!(json["models"][0]["hosts"][0], "rtx4080s");

    let big = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios/gossip-100-peers.toml")
        .display()
        .to_string();
    let out = mesh_sim(&["run", &big, "--engine", "turmoil"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("103 peers") && err.contains("--engine des"),
        "{err}"
    );
}

#[test]
fn calibration_prints_the_checked_in_table() {
    let out = mesh_sim(&["calibration"]);
    assert!(out.status.success());
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/CALIBRATION.md")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), on_disk);
}

#[test]
fn every_text_table_row_has_as_many_cells_as_its_header() {
    let out = mesh_sim(&["run", &scenario()]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .rposition(|l| l.starts_with("PEER ") && l.contains(" ID "))
        .unwrap();
    let peers = &lines[header..];
    let cells = |l: &str| l.split("  ").filter(|c| !c.trim().is_empty()).count();
    assert_eq!(peers.len(), 3, "{text}");
    // Empty cells print `-`, so every row has the header's columns.
    assert!(peers.iter().all(|l| cells(l) == cells(peers[0])), "{text}");
}

#[test]
fn out_writes_every_nodes_status_the_report_and_the_plots() {
    let dir = std::env::temp_dir().join(format!("mesh-sim-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = mesh_sim(&["run", &scenario(), "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "report.json",
        "report.txt",
        "ttft.svg",
        "tps.svg",
        "gossip.svg",
    ] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    for peer in ["entry", "rtx4080s"] {
        let text =
            std::fs::read_to_string(dir.join("status").join(format!("{peer}.json"))).unwrap();
        let status: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status["mesh_id"], "sim", "{peer}");
    }
    let ttft = std::fs::read_to_string(dir.join("ttft.svg")).unwrap();
    assert!(ttft.starts_with("<svg") && ttft.contains("Qwen3-8B-Q4_K_M"));
    assert!(ttft.matches("<circle").count() > 50, "one dot per chat");
    let report = std::fs::read_to_string(dir.join("report.json")).unwrap();
    assert_eq!(
        report,
        String::from_utf8(mesh_sim(&["run", &scenario(), "--json"]).stdout).unwrap()
    );
}

#[test]
fn a_run_that_breaks_an_invariant_exits_1_with_its_seed_and_derived_options() {
    let text = std::fs::read_to_string(scenario())
        .unwrap()
        .replace("start_s = 60", "start_s = 60\ndeadline_s = 0.05");
    let tight = temp_file("tight.toml", &text);
    let out = mesh_sim(&["run", tight.to_str().unwrap(), "--seed", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stdout.is_empty(), "the report is still printed");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("with seed 3"), "{err}");
    assert!(err.contains("chat_past_deadline"), "{err}");
    assert!(
        err.contains("derived options:") && err.contains("peer rtx4080s: id "),
        "{err}"
    );
}

#[test]
fn sweep_summarises_violations_over_seeds() {
    let out = mesh_sim(&["sweep", &scenario(), "--seeds", "1..4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("sweep qwen3-8b-4080s-solo  engine turmoil  seeds 1..4  (3 runs)"),
        "{text}"
    );
    assert!(text.contains("no invariant violated"), "{text}");

    let text = std::fs::read_to_string(scenario())
        .unwrap()
        .replace("start_s = 60", "start_s = 60\ndeadline_s = 0.05");
    let tight = temp_file("tight-sweep.toml", &text);
    let out = mesh_sim(&[
        "sweep",
        tight.to_str().unwrap(),
        "--seeds",
        "1..=2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failing_seeds"], serde_json::json!([1, 2]));
    assert!(json["totals"]["chat_past_deadline"].as_u64().unwrap() > 10);
}

#[test]
fn bench_prints_its_generated_scenario() {
    let out = mesh_sim(&[
        "bench",
        "--peers",
        "20",
        "--hours",
        "0.1",
        "--print-scenario",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let s = mesh_sim::scenario::Scenario::parse(&text, Path::new("bench.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.peers.len(), 21);
    assert_eq!(s.network.loss, 0.01);
}

#[test]
fn a_files_engine_key_picks_the_engine_unless_the_flag_overrides_it() {
    let text = std::fs::read_to_string(scenario()).unwrap();
    let i = text.find("duration_s").unwrap();
    let j = i + text[i..].find('\n').unwrap() + 1;
    let with = |engine: &str| format!("{}engine = \"{engine}\"\n{}", &text[..j], &text[j..]);
    let des = temp_file("engine-des.toml", &with("des"));
    let engine_of = |args: &[&str]| {
        let out = mesh_sim(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["engine"].as_str().unwrap().to_string()
    };
    assert_eq!(engine_of(&["run", des.to_str().unwrap(), "--json"]), "des");
    assert_eq!(
        engine_of(&[
            "run",
            des.to_str().unwrap(),
            "--json",
            "--engine",
            "turmoil"
        ]),
        "turmoil"
    );
    let bad = temp_file("engine-bad.toml", &with("quantum"));
    let out = mesh_sim(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("engine-bad.toml") && err.contains("quantum"),
        "{err}"
    );
}
