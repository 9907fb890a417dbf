//! The command line and configuration: clap flags, each also readable from a `CLOSEDMESH_*`
//! environment variable, over an optional TOML file (`--config`). Flags win over the
//! environment, which wins over the file, which wins over the defaults.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub const DEFAULT_API_ADDR: &str = "127.0.0.1:9337";

#[derive(Debug, Parser)]
#[command(
    name = "mesh-node",
    version,
    about = "A ClosedMesh node: serve models to the mesh, or be its entry."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Contribute: run models (llama-server) and serve them through this node's API.
    Serve(ServeArgs),
    /// Public entry: routes chats to the mesh's hosts (SLA gate, fallback) and audits them;
    /// with `--model` it also serves models itself.
    Entry(EntryArgs),
    /// Mint an invite for this node's mesh (reads the node's data dir).
    Invite(InviteArgs),
    /// Print a running node's status.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// GGUF model file(s) to serve; repeat the flag or list several.
    #[arg(long = "model", value_name = "FILE.gguf", num_args = 1.., env = "CLOSEDMESH_MODEL", value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Join an existing mesh with an invite (or @file holding one).
    #[arg(long, env = "CLOSEDMESH_JOIN")]
    pub join: Option<String>,
    /// Where the HTTP API listens [default: 127.0.0.1:9337].
    #[arg(long, env = "CLOSEDMESH_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// State, logs and pidfiles [default: ~/.closedmesh].
    #[arg(long, env = "CLOSEDMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// iroh relays: `default`, `disabled`, or a relay URL [default: default].
    #[arg(long, env = "CLOSEDMESH_RELAY")]
    pub relay: Option<RelayMode>,
    /// Cap on the fast memory this node advertises, in GB.
    #[arg(long, env = "CLOSEDMESH_MAX_VRAM_GB")]
    pub max_vram_gb: Option<f64>,
    /// llama-server binary [default: `llama-server` on PATH].
    #[arg(long, env = "CLOSEDMESH_LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// rpc-server binary [default: `rpc-server` or `ggml-rpc-server` on PATH].
    #[arg(long, env = "CLOSEDMESH_RPC_SERVER")]
    pub rpc_server: Option<PathBuf>,
    /// CPU threads for llama-server (`-t`) [default: llama.cpp's choice].
    #[arg(long, env = "CLOSEDMESH_LLAMA_THREADS")]
    pub llama_threads: Option<u32>,
    /// Seconds the proxy waits for a backend's response head [default: 600].
    #[arg(long, env = "CLOSEDMESH_FIRST_BYTE_TIMEOUT_S")]
    pub first_byte_timeout_s: Option<u64>,
    /// Seconds a healthy llama-server settles before its native baseline is measured
    /// [default: 30].
    #[arg(long, env = "CLOSEDMESH_BASELINE_SETTLE_S")]
    pub baseline_settle_s: Option<f64>,
    /// TOML file with any of the settings above (keys in snake_case, `models` a list).
    #[arg(long, env = "CLOSEDMESH_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct EntryArgs {
    /// Join a mesh with an invite (or @file holding one).
    #[arg(long, env = "CLOSEDMESH_JOIN")]
    pub join: Option<String>,
    /// Where the public API listens [default: 127.0.0.1:9337].
    #[arg(long, env = "CLOSEDMESH_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// State and logs [default: ~/.closedmesh]; give an entry its own when a host runs on the
    /// same machine (the data dir holds the node's identity).
    #[arg(long, env = "CLOSEDMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// iroh relays: `default`, `disabled`, or a relay URL [default: default].
    #[arg(long, env = "CLOSEDMESH_RELAY")]
    pub relay: Option<RelayMode>,
    /// Seconds a host may take to send a chat's response head [default: 300].
    #[arg(long, env = "CLOSEDMESH_FIRST_BYTE_TIMEOUT_S")]
    pub first_byte_timeout_s: Option<u64>,
    /// Redis (`redis://[:password@]host:port[/db]`) for mesh-share counters and per-IP fallback
    /// budgets shared by several entries [default: counters in the data dir].
    #[arg(long, env = "CLOSEDMESH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The fallback provider's OpenAI-compatible API root [default: https://openrouter.ai/api/v1].
    #[arg(long, env = "CLOSEDMESH_FALLBACK_BASE_URL")]
    pub fallback_base_url: Option<String>,
    /// A file holding the fallback provider's API key (or set CLOSEDMESH_FALLBACK_API_KEY).
    #[arg(long, env = "CLOSEDMESH_FALLBACK_API_KEY_FILE")]
    pub fallback_api_key_file: Option<PathBuf>,
    /// A file of inference API keys, one per line, that chats must present as
    /// `Authorization: Bearer` (or set CLOSEDMESH_API_KEYS) [default: open].
    #[arg(long, env = "CLOSEDMESH_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// GGUF model file(s) the entry also serves itself, as `serve` does (repeat the flag or
    /// list several); its own llama-server is then the ground truth of its audits
    /// [default: none].
    #[arg(long = "model", value_name = "FILE.gguf", num_args = 1.., env = "CLOSEDMESH_ENTRY_MODEL", value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// llama-server binary, when the entry serves models [default: `llama-server` on PATH].
    #[arg(long, env = "CLOSEDMESH_LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// rpc-server binary, when the entry serves models [default: on PATH, if any].
    #[arg(long, env = "CLOSEDMESH_RPC_SERVER")]
    pub rpc_server: Option<PathBuf>,
    /// CPU threads for the entry's own llama-server (`-t`).
    #[arg(long, env = "CLOSEDMESH_LLAMA_THREADS")]
    pub llama_threads: Option<u32>,
    /// Cap on the fast memory the entry advertises when it serves models, in GB.
    #[arg(long, env = "CLOSEDMESH_MAX_VRAM_GB")]
    pub max_vram_gb: Option<f64>,
    /// Seconds the entry's own llama-server settles before its native baseline [default: 30].
    #[arg(long, env = "CLOSEDMESH_BASELINE_SETTLE_S")]
    pub baseline_settle_s: Option<f64>,
    /// Mean seconds between two audits of a (peer, model) pair (SPEC §7) [default: 60].
    #[arg(long, env = "CLOSEDMESH_AUDIT_INTERVAL_S")]
    pub audit_interval_s: Option<f64>,
    /// `observe` (verdicts logged and shown in /api/status) or `enforce` (2 consecutive
    /// mismatches take a (peer, model) out of rotation for 15 min) [default: observe].
    #[arg(long, env = "CLOSEDMESH_VERIFY_MODE", value_parser = crate::audit::parse_mode)]
    pub verify_mode: Option<mesh_core::status::VerifyMode>,
    /// TOML file with any of the settings above (keys in snake_case).
    #[arg(long, env = "CLOSEDMESH_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct InviteArgs {
    /// How long the invite stays valid.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Write the invite here (owner-readable only) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The data dir of the node whose mesh the invite is for [default: ~/.closedmesh].
    #[arg(long, env = "CLOSEDMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Revoke this invite (its text, or @file) instead of minting one: the running node
    /// gossips the revocation, and members refuse the invite from then on.
    #[arg(long, value_name = "INVITE|@FILE", conflicts_with_all = ["out"])]
    pub revoke: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The node's API address.
    #[arg(long, env = "CLOSEDMESH_API_ADDR", default_value = DEFAULT_API_ADDR)]
    pub api_addr: SocketAddr,
    /// Print the raw `/api/status` JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMode {
    Default,
    Disabled,
    Url(String),
}

impl FromStr for RelayMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(RelayMode::Default),
            "disabled" => Ok(RelayMode::Disabled),
            u if u.starts_with("https://") || u.starts_with("http://") => {
                Ok(RelayMode::Url(u.to_string()))
            }
            other => Err(format!(
                "relay must be `default`, `disabled` or an http(s) URL, not {other:?}"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for RelayMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The `--config` TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    pub models: Option<Vec<PathBuf>>,
    pub join: Option<String>,
    pub api_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub relay: Option<RelayMode>,
    pub max_vram_gb: Option<f64>,
    pub llama_server: Option<PathBuf>,
    pub rpc_server: Option<PathBuf>,
    pub llama_threads: Option<u32>,
    pub first_byte_timeout_s: Option<u64>,
    pub baseline_settle_s: Option<f64>,
}

/// `serve`'s settings after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub models: Vec<PathBuf>,
    pub join: Option<String>,
    pub api_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub relay: RelayMode,
    pub max_vram_gb: Option<f64>,
    pub llama_server: PathBuf,
    pub rpc_server: Option<PathBuf>,
    pub llama_threads: Option<u32>,
    pub first_byte_timeout: Duration,
    pub baseline_settle: Duration,
}

impl ServeConfig {
    /// Merges flags/env (`args`) over the file named by `--config`, over the defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<ServeConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<ServeFile>(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => ServeFile::default(),
        };
        let models = if args.models.is_empty() {
            file.models.unwrap_or_default()
        } else {
            args.models
        };
        if models.is_empty() {
            bail!("no model to serve: pass --model <file.gguf> (or `models` in --config)");
        }
        let data_dir = match args.data_dir.or(file.data_dir) {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let llama_server = match args.llama_server.or(file.llama_server) {
            Some(p) => p,
            None => find_on_path(&["llama-server"]).context(
                "llama-server not found: pass --llama-server PATH, set CLOSEDMESH_LLAMA_SERVER, \
                 or run scripts/setup-real-parts.sh",
            )?,
        };
        let rpc_server = args
            .rpc_server
            .or(file.rpc_server)
            .or_else(|| find_on_path(&["rpc-server", "ggml-rpc-server"]));
        let max_vram_gb = args.max_vram_gb.or(file.max_vram_gb);
        let baseline_settle = match args.baseline_settle_s.or(file.baseline_settle_s) {
            None => mesh_core::baseline::SETTLE,
            Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
            Some(s) => bail!("--baseline-settle-s must be a non-negative number, got {s}"),
        };
        if let Some(gb) = max_vram_gb {
            if !(gb.is_finite() && gb >= 0.0) {
                bail!("--max-vram-gb must be a non-negative number, got {gb}");
            }
        }
        Ok(ServeConfig {
            models,
            join: args.join.or(file.join),
            api_addr: args.api_addr.or(file.api_addr).unwrap_or_else(|| {
                DEFAULT_API_ADDR
                    .parse()
                    .expect("the default address parses")
            }),
            data_dir,
            relay: args.relay.or(file.relay).unwrap_or(RelayMode::Default),
            max_vram_gb,
            llama_server,
            rpc_server,
            llama_threads: args.llama_threads.or(file.llama_threads),
            first_byte_timeout: Duration::from_secs(
                args.first_byte_timeout_s
                    .or(file.first_byte_timeout_s)
                    .unwrap_or(crate::proxy::DEFAULT_FIRST_BYTE_TIMEOUT.as_secs()),
            ),
            baseline_settle,
        })
    }
}

/// `~/.closedmesh`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: pass --data-dir")?;
    Ok(Path::new(&home).join(".closedmesh"))
}

pub(crate) fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["mesh-node", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_the_config_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(
            &cfg,
            r#"
models = ["/m/a.gguf", "/m/b.gguf"]
api_addr = "127.0.0.1:7000"
data_dir = "/var/lib/closedmesh"
relay = "disabled"
llama_threads = 2
"#,
        )
        .unwrap();
        let c = ServeConfig::resolve(parse(&[
            "--config",
            cfg.to_str().unwrap(),
            "--api-addr",
            "127.0.0.1:9000",
            "--max-vram-gb",
            "8",
            // A flag, because CLOSEDMESH_LLAMA_SERVER is usually set where tests run.
            "--llama-server",
            "/opt/llama-server",
        ]))
        .unwrap();
        assert_eq!(
            c.models,
            [PathBuf::from("/m/a.gguf"), PathBuf::from("/m/b.gguf")]
        );
        assert_eq!(c.api_addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/closedmesh"));
        assert_eq!(c.relay, RelayMode::Disabled);
        assert_eq!(c.llama_server, PathBuf::from("/opt/llama-server"));
        assert_eq!(c.llama_threads, Some(2));
        assert_eq!(c.max_vram_gb, Some(8.0));
        assert_eq!(c.first_byte_timeout, Duration::from_secs(600));
        assert_eq!(c.baseline_settle, Duration::from_secs(30));

        let c = ServeConfig::resolve(parse(&[
            "--config",
            cfg.to_str().unwrap(),
            "--model",
            "/x/c.gguf",
            "--relay",
            "https://relay.example/",
            "--llama-server",
            "/opt/llama-server",
            "--baseline-settle-s",
            "1.5",
        ]))
        .unwrap();
        assert_eq!(c.baseline_settle, Duration::from_millis(1_500));
        assert_eq!(c.models, [PathBuf::from("/x/c.gguf")]);
        assert_eq!(c.relay, RelayMode::Url("https://relay.example/".into()));
    }

    #[test]
    fn unknown_config_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(&cfg, "modles = []\n").unwrap();
        let err = ServeConfig::resolve(parse(&["--config", cfg.to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("modles"), "{err:#}");
        assert!(Cli::try_parse_from(["mesh-node", "serve", "--relay", "sometimes"]).is_err());
        let err = ServeConfig::resolve(parse(&["--llama-server", "/bin/true"])).unwrap_err();
        assert!(err.to_string().contains("--model"));
    }

    #[test]
    fn several_models_after_one_flag_or_repeated() {
        let a = parse(&["--model", "a.gguf", "b.gguf", "--model", "c.gguf"]);
        assert_eq!(a.models.len(), 3);
    }

    #[test]
    fn status_defaults_to_the_local_api() {
        let cli = Cli::try_parse_from(["mesh-node", "status", "--json"]).unwrap();
        let Command::Status(s) = cli.command else {
            panic!("not status")
        };
        assert!(s.json);
        assert_eq!(s.api_addr, DEFAULT_API_ADDR.parse().unwrap());
    }
}
