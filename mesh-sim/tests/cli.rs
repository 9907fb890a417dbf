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
        text.starts_with("scenario qwen3-8b-4080s-solo  seed 42"),
        "{text}"
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
fn the_turmoil_engine_says_when_it_arrives() {
    let out = mesh_sim(&["run", &scenario(), "--engine", "turmoil"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("issue 5"));
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
    let peers: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("PEER"))
        .collect();
    let cells = |l: &str| l.split("  ").filter(|c| !c.trim().is_empty()).count();
    assert_eq!(peers.len(), 3, "{text}");
    // Empty cells print `-`, so every row has the header's columns.
    assert!(peers.iter().all(|l| cells(l) == cells(peers[0])), "{text}");
}
