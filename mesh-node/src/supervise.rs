//! Running `llama-server` for one model: launch on a free loopback port with a fresh API key
//! (argv from mesh-core's `launch_args`), wait for `/health` within a size-scaled timeout, publish
//! the backend as ready, restart with backoff when it dies, and stop it by pid on shutdown.
//! Pidfiles in `<data dir>/run/` let the next run stop orphans; output goes to `<data dir>/logs/`.

use crate::backend::{BackendState, Backends};
use crate::dial::Upstream;
use crate::pidfile::{PidFile, PidRecord};
use mesh_core::launch::{self, Device, LlamaServerLaunch, NoMmapFlag, Placement};
use mesh_core::peer::ModelName;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a child gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// A GGUF file this node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// The file stem: the name the mesh knows the model by.
    pub name: ModelName,
    pub path: PathBuf,
    pub size_bytes: u64,
}

impl LocalModel {
    pub fn from_path(path: &Path) -> io::Result<LocalModel> {
        let meta = fs::metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = file.strip_suffix(".gguf").unwrap_or(&file).to_string();
        Ok(LocalModel {
            name,
            path: path.to_path_buf(),
            size_bytes: meta.len(),
        })
    }
}

/// Everything one llama-server supervisor needs.
#[derive(Debug, Clone)]
pub struct LlamaSpec {
    pub program: PathBuf,
    pub model: LocalModel,
    pub device: Device,
    /// Solo (with or without mmap spill) or split host over RPC tunnel ports.
    pub placement: Placement,
    pub threads: Option<u32>,
    pub no_mmap: NoMmapFlag,
    pub logs_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Told when the server turns healthy and when it stops (the native-baseline collector).
    pub events: Option<mpsc::UnboundedSender<ServerEvent>>,
    /// Appended to `launch_args` (a split host asks for `-lv 4`, so its log records which
    /// device holds each layer).
    pub extra_args: Vec<String>,
}

/// A supervised llama-server's life, for listeners.
#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// Healthy and routable at `upstream`.
    Ready {
        model: LocalModel,
        upstream: Upstream,
        placement: Placement,
    },
    /// Exited, restarting, or stopped for good.
    Stopped { model: ModelName },
}

impl LlamaSpec {
    fn emit(&self, event: ServerEvent) {
        if let Some(tx) = &self.events {
            // The listener going away is no reason to stop serving.
            let _ = tx.send(event);
        }
    }
}

/// Why one launch did not become (or stay) a healthy backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LaunchError {
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("exited during start-up ({0})")]
    ExitedEarly(ExitStatus),
    #[error("not healthy within {0:?}")]
    HealthTimeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Keeps llama-server running for `spec.model` until `shutdown` turns true (or its sender goes),
/// then stops it gracefully and returns.
pub async fn supervise_llama(
    spec: LlamaSpec,
    backends: Arc<Backends>,
    mut shutdown: watch::Receiver<bool>,
) {
    let model = spec.model.name.clone();
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        match run_once(&spec, &backends, &mut shutdown).await {
            Ok(Exit::Shutdown) => break,
            Ok(Exit::Exited(status)) => tracing::warn!(%model, %status, "llama-server exited"),
            Err(e) => tracing::warn!(%model, error = %e, "llama-server launch failed"),
        }
        failures = if started.elapsed() >= launch::STABLE_RUN {
            1
        } else {
            failures.saturating_add(1)
        };
        backends.set(&model, BackendState::Restarting { failures });
        let delay = launch::restart_delay(failures);
        tracing::info!(%model, failures, delay_ms = delay.as_millis() as u64, "restarting llama-server after backoff");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    backends.set(&model, BackendState::Stopped);
}

enum Exit {
    Exited(ExitStatus),
    Shutdown,
}

/// One launch, until the child exits, fails to come up, or the node shuts down.
async fn run_once(
    spec: &LlamaSpec,
    backends: &Backends,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Exit, LaunchError> {
    if *shutdown.borrow() {
        return Ok(Exit::Shutdown);
    }
    let model = &spec.model.name;
    backends.set(model, BackendState::Loading);
    let port = free_loopback_port()?;
    let api_key = random_key()?;
    let mut args = launch::launch_args(&LlamaServerLaunch {
        model_path: spec.model.path.to_string_lossy().into_owned(),
        alias: model.clone(),
        port,
        api_key: api_key.clone(),
        threads: spec.threads,
        placement: spec.placement.clone(),
        device: spec.device,
        no_mmap: spec.no_mmap,
    });
    args.extend(spec.extra_args.iter().cloned());
    let name = format!("llama-server-{}", file_safe(&spec.model.name));
    let mut running = Running::spawn(
        &spec.program,
        &args,
        &name,
        &spec.logs_dir,
        &spec.run_dir,
        Some(&api_key),
    )?;
    let upstream = Upstream::tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Some(api_key));
    let timeout = launch::health_timeout(spec.model.size_bytes);
    let t0 = Instant::now();
    let healthy = tokio::select! {
        r = wait_healthy(&upstream, &mut running.child, timeout) => Some(r),
        _ = shutdown.wait_for(|stop| *stop) => None,
    };
    match healthy {
        None => {
            running.stop().await;
            return Ok(Exit::Shutdown);
        }
        Some(Err(e)) => {
            running.stop().await;
            return Err(e);
        }
        Some(Ok(())) => {}
    }
    tracing::info!(model = %model, port, pid = running.pid(), load_ms = t0.elapsed().as_millis() as u64, "llama-server ready");
    backends.set(model, BackendState::Ready(upstream.clone()));
    spec.emit(ServerEvent::Ready {
        model: spec.model.clone(),
        upstream,
        placement: spec.placement.clone(),
    });
    let exited = tokio::select! {
        s = running.wait() => Some(s),
        _ = shutdown.wait_for(|stop| *stop) => None,
    };
    backends.set(model, BackendState::Loading);
    spec.emit(ServerEvent::Stopped {
        model: model.clone(),
    });
    match exited {
        Some(status) => Ok(Exit::Exited(status?)),
        None => {
            running.stop().await;
            Ok(Exit::Shutdown)
        }
    }
}

async fn wait_healthy(
    upstream: &Upstream,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(LaunchError::ExitedEarly(status));
        }
        // llama-server answers 503 while loading, 200 once it can serve.
        let probe = tokio::time::timeout(Duration::from_secs(2), upstream.get_status("/health"));
        if let Ok(Ok(200)) = probe.await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::HealthTimeout(timeout));
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

/// A launched child with its pidfile. Dropped without [`Running::stop`] (the runtime going away),
/// the child still gets SIGTERM and then tokio's `kill_on_drop` SIGKILL; its pidfile stays for
/// the next run to check.
pub(crate) struct Running {
    pub(crate) child: Child,
    pidfile: Option<PidFile>,
    name: String,
}

impl Running {
    /// Starts `program args` with its output appended to `<logs_dir>/<name>.log` (`secret`
    /// redacted from the logged command line) and its pidfile in `run_dir`.
    pub(crate) fn spawn(
        program: &Path,
        args: &[String],
        name: &str,
        logs_dir: &Path,
        run_dir: &Path,
        secret: Option<&str>,
    ) -> Result<Running, LaunchError> {
        let name = name.to_string();
        fs::create_dir_all(logs_dir)?;
        let log_path = logs_dir.join(format!("{name}.log"));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let program_path = program;
        let program = program.to_string_lossy().into_owned();
        let shown: Vec<&str> = args
            .iter()
            .map(|a| {
                if Some(a.as_str()) == secret {
                    "<redacted>"
                } else {
                    a.as_str()
                }
            })
            .collect();
        writeln!(
            log,
            "=== mesh-node launching: {program} {}",
            shown.join(" ")
        )?;
        let mut cmd = Command::new(program_path);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let mut argv = vec![program];
        argv.extend(args.iter().cloned());
        let pidfile = PidFile::write(run_dir, &name, &PidRecord { pid, argv })?;
        tracing::info!(pid, log = %log_path.display(), "launched {name}");
        Ok(Running {
            child,
            pidfile: Some(pidfile),
            name,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        if let Some(p) = self.pidfile.take() {
            p.remove();
        }
        Ok(status)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; removes the pidfile once the child is gone.
    pub(crate) async fn stop(&mut self) {
        stop_child(&mut self.child, &self.name).await;
        if let Some(p) = self.pidfile.take() {
            p.remove();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Cancelled mid-flight (shutdown): signal now; `kill_on_drop` follows with SIGKILL.
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// Stops a child by pid: SIGTERM, wait, SIGKILL.
pub async fn stop_child(child: &mut Child, name: &str) {
    let Some(pid) = child.id() else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(_) => tracing::info!(pid, "stopped {name}"),
        Err(_) => {
            tracing::warn!(pid, "{name} ignored SIGTERM for {STOP_GRACE:?}; killing");
            let _ = child.kill().await;
        }
    }
}

/// On Linux the child gets SIGTERM if the node dies without cleaning up (e.g. SIGKILL).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(2) syscall.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(io::Error::from)
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A port the OS considers free right now. Another process may take it before the child binds;
/// then the child exits and the next attempt picks another.
pub fn free_loopback_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// 128 bits from the OS, hex.
pub fn random_key() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(format!("cm-{}", hex::encode(bytes)))
}

pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_is_the_gguf_file_stem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        fs::write(&path, b"GGUF1234").unwrap();
        let m = LocalModel::from_path(&path).unwrap();
        assert_eq!(m.name, "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(m.size_bytes, 8);
        assert!(LocalModel::from_path(dir.path()).is_err());
        assert!(LocalModel::from_path(&dir.path().join("missing.gguf")).is_err());
    }

    #[test]
    fn keys_are_fresh_per_launch() {
        let a = random_key().unwrap();
        assert_eq!(a.len(), 3 + 32);
        assert_ne!(a, random_key().unwrap());
        assert_eq!(file_safe("a/b c.Q4_1"), "a_b_c.Q4_1");
    }
}
