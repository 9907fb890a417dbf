use super::*;

const FILE: &str = "scenarios/test.toml";

/// SPEC §10's example, verbatim, plus the `cuda-b` peer its crash event names.
const SPEC_EXAMPLE: &str = r#"
name = "deepseek-70b-3peer-split"
seed = 42
duration_s = 900

[[model]]
name = "DeepSeek-R1-Distill-Llama-70B-Q4_K_M"
size_gb = 42.5           # GGUF bytes / 1e9
params_b = 70
# tier = "capacity"      # optional; default from the catalog

[[peer]]
name = "mac-mini"
backend = "metal"        # metal | cuda | rocm | vulkan | cpu
fast_memory_gb = 14.5
system_ram_gb = 24
mem_bandwidth_gbps = 120
serve = ["DeepSeek-R1-Distill-Llama-70B-Q4_K_M"]
# behaviour = "honest"   # honest | cheaper_quant | smaller_model | canned_text | replay_fingerprint | probe_aware
# role = "entry"         # an entry node: no model, runs the SLA gate and the audit loop
# join_at_s = 0

[[peer]]
name = "cuda-b"
backend = "cuda"
fast_memory_gb = 17.2
system_ram_gb = 32
mem_bandwidth_gbps = 736
serve = ["DeepSeek-R1-Distill-Llama-70B-Q4_K_M"]

[network]
latency_ms = [20, 100]   # uniform per link
loss = 0.01

[[traffic]]
model = "DeepSeek-R1-Distill-Llama-70B-Q4_K_M"
rate_per_min = 2
prompt_tokens = 200
max_tokens = 256

[[event]]
at_s = 300
kind = "crash"           # crash | restart | leave | partition | heal | set_latency
peers = ["cuda-b"]
"#;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, Path::new(FILE))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ScenarioError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

/// The SPEC example with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    assert!(
        SPEC_EXAMPLE.contains(from),
        "{from:?} is not in the example"
    );
    SPEC_EXAMPLE.replacen(from, to, 1)
}

#[test]
fn spec_example_parses_with_its_defaults() {
    let s = parse(SPEC_EXAMPLE).unwrap();
    assert_eq!(
        (s.name.as_str(), s.seed, s.duration_s),
        ("deepseek-70b-3peer-split", 42, 900.0)
    );
    assert_eq!(s.models[0].tier, None);
    let mac = &s.peers[0];
    assert_eq!(mac.backend, Backend::Metal);
    assert_eq!(mac.behaviour, Behaviour::Honest);
    assert_eq!(mac.role, PeerRole::Contributor);
    assert_eq!(mac.join_at_s, 0.0);
    assert_eq!(s.network.latency_ms, [20.0, 100.0]);
    assert_eq!(s.network.bandwidth_mbps, 100.0);
    assert_eq!(s.events[0].kind, EventKind::Crash);
}

#[test]
fn every_optional_field_parses() {
    let text = edited(
        "params_b = 70\n",
        "params_b = 70\ntier = \"capacity\"\nactive_params_b = 70\nlayers = 80\nembedding_length = 8192\n",
    )
    .replacen(
        "serve = [\"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"]\n",
        "serve = [\"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"]\ngpu_name = \"Apple M4\"\n\
         ram_bandwidth_gbps = 120\ncompute_tflops = 4.5\nbehaviour = \"probe_aware\"\n\
         join_at_s = 10\nmax_inflight = 2\nmax_vram_gb = 12\nfitt_mib = 9933\n",
        1,
    )
    .replacen("loss = 0.01\n", "loss = 0.01\nbandwidth_mbps = 8\n", 1)
    .replacen("max_tokens = 256\n", "max_tokens = 256\nstart_s = 30\nentry = \"gate\"\n", 1)
        + r#"
[[peer]]
name = "gate"
role = "entry"
fallback = true

[[event]]
at_s = 400
kind = "set_latency"
peers = ["mac-mini", "gate"]
latency_ms = [5, 10]
loss = 0.02

[[event]]
at_s = 500
kind = "set_latency"
latency_ms = 40
"#;
    let s = parse(&text).unwrap();
    assert_eq!(s.models[0].tier, Some(Tier::Capacity));
    assert_eq!(s.models[0].layers, Some(80));
    let mac = &s.peers[0];
    assert_eq!(mac.behaviour, Behaviour::ProbeAware);
    assert_eq!((mac.max_inflight, mac.fitt_mib), (Some(2), Some(9933)));
    assert!(s.peers[2].is_entry() && s.peers[2].fallback);
    assert_eq!(s.traffic[0].entry.as_deref(), Some("gate"));
    assert_eq!(s.events[1].latency_ms.unwrap().range(), [5.0, 10.0]);
    assert_eq!(s.events[2].latency_ms.unwrap().range(), [40.0, 40.0]);
}

#[test]
fn shipped_scenarios_are_valid() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn unknown_keys_are_errors_naming_the_key_and_the_file() {
    for (from, to, key) in [
        ("seed = 42\n", "seed = 42\nsede = 1\n", "sede"),
        (
            "params_b = 70\n",
            "params_b = 70\nquant = \"Q4\"\n",
            "quant",
        ),
        (
            "fast_memory_gb = 14.5\n",
            "fast_mem_gb = 14.5\n",
            "fast_mem_gb",
        ),
        ("loss = 0.01\n", "loss = 0.01\njitter_ms = 3\n", "jitter_ms"),
        (
            "max_tokens = 256\n",
            "max_tokens = 256\nstream = true\n",
            "stream",
        ),
        (
            "kind = \"crash\"",
            "kind = \"crash\"\nduration_s = 5",
            "duration_s",
        ),
    ] {
        let err = parse(&edited(from, to)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ScenarioError::Parse { .. }), "{msg}");
        assert!(msg.starts_with(FILE), "{msg}");
        assert!(msg.contains(key) && msg.contains("unknown field"), "{msg}");
    }
}

#[test]
fn bad_enum_values_and_types_are_parse_errors() {
    for (from, to, hint) in [
        ("backend = \"metal\"", "backend = \"tpu\"", "tpu"),
        ("kind = \"crash\"", "kind = \"explode\"", "explode"),
        ("# behaviour = \"honest\"", "behaviour = \"liar\"", "liar"),
        ("# tier = \"capacity\"", "tier = \"premium\"", "premium"),
        ("size_gb = 42.5", "size_gb = \"big\"", "size_gb"),
        ("seed = 42", "seed = -1", "seed"),
    ] {
        let msg = parse(&edited(from, to)).unwrap_err().to_string();
        assert!(msg.contains(hint), "{msg}");
    }
    let msg = parse("name = \"x\"\nduration_s = 1\n")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing field `seed`"), "{msg}");
}

fn has(problems: &[Problem], entry: &str, field: &str, kind: &ProblemKind) -> bool {
    problems
        .iter()
        .any(|p| p.entry.to_string() == entry && p.field == field && &p.kind == kind)
}

#[test]
fn semantic_problems_name_the_entry_and_the_field() {
    let model = "[[model]] #1 \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"";
    let mac = "[[peer]] #1 \"mac-mini\"";
    let cases: Vec<(String, &str, &str, ProblemKind)> = vec![
        (
            edited("name = \"deepseek-70b-3peer-split\"", "name = \"\""),
            "top level",
            "name",
            ProblemKind::Empty,
        ),
        (
            edited("duration_s = 900", "duration_s = 0"),
            "top level",
            "duration_s",
            ProblemKind::NotPositive(0.0),
        ),
        (
            edited("size_gb = 42.5", "size_gb = -42.5"),
            model,
            "size_gb",
            ProblemKind::NotPositive(-42.5),
        ),
        (
            edited("params_b = 70", "params_b = 70\nlayers = 0"),
            model,
            "layers",
            ProblemKind::Zero,
        ),
        (
            edited("params_b = 70", "params_b = 70\nactive_params_b = 80"),
            model,
            "active_params_b",
            ProblemKind::OutOfRange {
                value: 80.0,
                expected: "at most `params_b`",
            },
        ),
        (
            edited("fast_memory_gb = 14.5", "fast_memory_gb = -1"),
            mac,
            "fast_memory_gb",
            ProblemKind::NotPositive(-1.0),
        ),
        (
            edited("system_ram_gb = 24\n", ""),
            mac,
            "system_ram_gb",
            ProblemKind::RequiredForContributor,
        ),
        (
            edited(
                "serve = [\"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"]",
                "serve = []",
            ),
            mac,
            "serve",
            ProblemKind::NoServe,
        ),
        (
            edited(
                "serve = [\"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"]",
                "serve = [\"Qwen3-9B\"]",
            ),
            mac,
            "serve",
            ProblemKind::UnknownModel("Qwen3-9B".into()),
        ),
        (
            edited("# role = \"entry\"", "role = \"entry\"").replacen(
                "fast_memory_gb = 14.5\n",
                "",
                1,
            ),
            mac,
            "fast_memory_gb",
            ProblemKind::RequiredForContributor,
        ),
        (
            edited("# join_at_s = 0", "join_at_s = 901"),
            mac,
            "join_at_s",
            ProblemKind::AfterEnd {
                at: 901.0,
                duration: 900.0,
            },
        ),
        (
            edited("latency_ms = [20, 100]", "latency_ms = [100, 20]"),
            "[network]",
            "latency_ms",
            ProblemKind::BadRange {
                lo: 100.0,
                hi: 20.0,
            },
        ),
        (
            edited("loss = 0.01", "loss = 1.5"),
            "[network]",
            "loss",
            ProblemKind::OutOfRange {
                value: 1.5,
                expected: "a probability in [0, 1)",
            },
        ),
        (
            edited(
                "model = \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"\nrate",
                "model = \"Llama-9000\"\nrate",
            ),
            "[[traffic]] #1",
            "model",
            ProblemKind::UnknownModel("Llama-9000".into()),
        ),
        (
            edited("rate_per_min = 2", "rate_per_min = 0"),
            "[[traffic]] #1",
            "rate_per_min",
            ProblemKind::NotPositive(0.0),
        ),
        (
            edited("max_tokens = 256", "max_tokens = 0"),
            "[[traffic]] #1",
            "max_tokens",
            ProblemKind::Zero,
        ),
        (
            edited("max_tokens = 256", "max_tokens = 256\nentry = \"mac-mini\""),
            "[[traffic]] #1",
            "entry",
            ProblemKind::NotAnEntry("mac-mini".into()),
        ),
        (
            edited("peers = [\"cuda-b\"]", "peers = [\"cuda-z\"]"),
            "[[event]] #1",
            "peers",
            ProblemKind::UnknownPeer("cuda-z".into()),
        ),
        (
            edited("peers = [\"cuda-b\"]", "peers = []"),
            "[[event]] #1",
            "peers",
            ProblemKind::NeedsPeers("crash"),
        ),
        (
            edited("at_s = 300", "at_s = 1000"),
            "[[event]] #1",
            "at_s",
            ProblemKind::AfterEnd {
                at: 1000.0,
                duration: 900.0,
            },
        ),
        (
            edited(
                "peers = [\"cuda-b\"]",
                "peers = [\"cuda-b\"]\nlatency_ms = 5",
            ),
            "[[event]] #1",
            "latency_ms",
            ProblemKind::NotApplicable("crash"),
        ),
        (
            edited("kind = \"crash\"", "kind = \"set_latency\""),
            "[[event]] #1",
            "latency_ms",
            ProblemKind::MissingLatency,
        ),
    ];
    for (text, entry, field, kind) in cases {
        let found = problems(&text);
        assert!(
            has(&found, entry, field, &kind),
            "wanted {entry} `{field}`: {kind}\ngot {found:#?}"
        );
    }
}

#[test]
fn duplicate_names_are_reported() {
    let text = format!(
        "{SPEC_EXAMPLE}\n[[peer]]\nname = \"mac-mini\"\nrole = \"entry\"\n\n\
         [[model]]\nname = \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"\nsize_gb = 1\nparams_b = 1\n"
    );
    let found = problems(&text);
    let dup = |n: &str| ProblemKind::Duplicate(n.into());
    assert!(has(
        &found,
        "[[peer]] #3 \"mac-mini\"",
        "name",
        &dup("mac-mini")
    ));
    assert!(has(
        &found,
        "[[model]] #2 \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"",
        "name",
        &dup("DeepSeek-R1-Distill-Llama-70B-Q4_K_M")
    ));
}

#[test]
fn event_timelines_are_checked() {
    // A restart of a peer that never went down, and a crash of one already crashed.
    let text = format!(
        "{SPEC_EXAMPLE}\n[[event]]\nat_s = 100\nkind = \"restart\"\npeers = [\"mac-mini\"]\n\n\
         [[event]]\nat_s = 310\nkind = \"crash\"\npeers = [\"cuda-b\"]\n\n\
         [[event]]\nat_s = 320\nkind = \"restart\"\npeers = [\"cuda-b\"]\n"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(has(
        &found,
        "[[event]] #2",
        "peers",
        &ProblemKind::NotDown {
            peer: "mac-mini".into(),
            at: 100.0
        }
    ));
    assert!(has(
        &found,
        "[[event]] #3",
        "peers",
        &ProblemKind::NotRunning {
            peer: "cuda-b".into(),
            at: 310.0
        }
    ));
    // A crash before the peer joins.
    let late = edited("# join_at_s = 0", "join_at_s = 500").replacen(
        "peers = [\"cuda-b\"]",
        "peers = [\"mac-mini\"]",
        1,
    );
    assert!(has(
        &problems(&late),
        "[[event]] #1",
        "peers",
        &ProblemKind::NotRunning {
            peer: "mac-mini".into(),
            at: 300.0
        }
    ));
}

#[test]
fn all_problems_are_listed_in_one_error_with_the_file() {
    let text = edited("size_gb = 42.5", "size_gb = 0").replacen(
        "rate_per_min = 2",
        "rate_per_min = -2",
        1,
    );
    let err = parse(&text).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("scenarios/test.toml: 2 problem(s):"),
        "{msg}"
    );
    assert!(msg.contains("  - [[model]] #1 \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\", `size_gb`: must be a finite number greater than 0, got 0"), "{msg}");
    assert!(
        msg.contains(
            "  - [[traffic]] #1, `rate_per_min`: must be a finite number greater than 0, got -2"
        ),
        "{msg}"
    );
}

#[test]
fn fallback_is_for_entries_only_and_a_scenario_needs_peers() {
    let found = problems(&edited(
        "mem_bandwidth_gbps = 120",
        "mem_bandwidth_gbps = 120\nfallback = true",
    ));
    assert!(has(
        &found,
        "[[peer]] #1 \"mac-mini\"",
        "fallback",
        &ProblemKind::FallbackOnContributor
    ));
    let found = problems("name = \"empty\"\nseed = 1\nduration_s = 10\n");
    assert!(has(&found, "top level", "peer", &ProblemKind::NoPeers));
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let err = Scenario::load(Path::new("/nonexistent/scenario.toml")).unwrap_err();
    assert!(matches!(err, ScenarioError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/scenario.toml: cannot read"),
        "{err}"
    );
}
