//! Pidfiles for the child processes, so a node restarted after a crash can stop the orphans of
//! its previous run — by pid, and only after checking the pid is still the very process it
//! started (same argv, which includes the per-launch API key), never by name.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a pidfile records about one child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    pub pid: u32,
    /// Program and arguments exactly as launched.
    pub argv: Vec<String>,
}

/// A written pidfile; [`PidFile::remove`] it once the child is gone.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes `<dir>/<name>.pid.json` (owner-only: the argv holds the child's API key).
    pub fn write(dir: &Path, name: &str, record: &PidRecord) -> io::Result<PidFile> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.pid.json"));
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_private(&tmp, &json)?;
        fs::rename(&tmp, &path)?;
        Ok(PidFile { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn remove(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove pidfile");
            }
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Whether `pid` is alive and running exactly `argv` (a zombie or a reused pid is not).
pub fn process_matches(pid: u32, argv: &[String]) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 || kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // A zombie's cmdline is empty, so it never matches.
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
            let args: Vec<&[u8]> = raw
                .strip_suffix(b"\0")
                .unwrap_or(&raw)
                .split(|&b| b == 0)
                .collect();
            args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes())
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::process::Command::new("ps")
            .args(["-ww", "-o", "command=", "-p", &pid.to_string()])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == argv.join(" "))
    }
}

/// What happened to one pidfile found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaped {
    /// The recorded process was still running and has been stopped.
    Killed { pid: u32, forced: bool },
    /// The process was gone, or the pid now belongs to something else: left alone.
    Stale { pid: u32 },
    /// The pidfile could not be read.
    Unreadable { path: PathBuf },
}

/// Stops every still-running process recorded in `dir` (SIGTERM, then SIGKILL after `grace`)
/// and removes the pidfiles.
pub async fn reap_orphans(dir: &Path, grace: Duration) -> Vec<Reaped> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".pid.json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let record = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<PidRecord>(&b).ok());
        let report = match record {
            None => Reaped::Unreadable { path: path.clone() },
            Some(r) if process_matches(r.pid, &r.argv) => {
                let forced = terminate(r.pid, &r.argv, grace).await;
                tracing::warn!(pid = r.pid, program = %r.argv.first().map(String::as_str).unwrap_or(""), forced, "stopped an orphan of a previous run");
                Reaped::Killed { pid: r.pid, forced }
            }
            Some(r) => Reaped::Stale { pid: r.pid },
        };
        let _ = fs::remove_file(&path);
        out.push(report);
    }
    out
}

/// SIGTERM, wait up to `grace` for the process to go, then SIGKILL. Returns whether it took the
/// SIGKILL.
async fn terminate(pid: u32, argv: &[String], grace: Duration) -> bool {
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !process_matches(pid, argv) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if process_matches(pid, argv) {
        let _ = kill(target, Signal::SIGKILL);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> (std::process::Child, Vec<String>) {
        let argv = vec!["sleep".to_string(), "300".to_string()];
        let child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .spawn()
            .expect("spawn sleep");
        (child, argv)
    }

    #[tokio::test]
    async fn orphan_recorded_in_a_pidfile_is_stopped_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, argv) = sleeper();
        let record = PidRecord {
            pid: child.id(),
            argv: argv.clone(),
        };
        let file = PidFile::write(dir.path(), "llama-server-m", &record).unwrap();
        // spawn() returns once the child is in execve, a moment before the kernel publishes its
        // new argv.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !process_matches(child.id(), &argv) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sleep never showed its argv"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let reaped = reap_orphans(dir.path(), Duration::from_secs(5)).await;
        assert_eq!(
            reaped,
            [Reaped::Killed {
                pid: child.id(),
                forced: false
            }]
        );
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was terminated, not finished");
        assert!(!file.path().exists());
    }

    #[tokio::test]
    async fn a_pid_now_running_something_else_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, _) = sleeper();
        // The recorded launch had a different argv (another api key): the pid was reused.
        let record = PidRecord {
            pid: child.id(),
            argv: vec!["llama-server".into(), "--api-key".into(), "old".into()],
        };
        PidFile::write(dir.path(), "llama-server-m", &record).unwrap();
        std::fs::write(dir.path().join("garbage.pid.json"), b"{").unwrap();

        let reaped = reap_orphans(dir.path(), Duration::from_secs(1)).await;
        assert_eq!(reaped.len(), 2);
        assert!(reaped.contains(&Reaped::Stale { pid: child.id() }));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the unrelated process still runs"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn dead_pid_does_not_match() {
        let (mut child, argv) = sleeper();
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process_matches(pid, &argv));
    }
}
