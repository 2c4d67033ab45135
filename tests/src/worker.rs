//! The real `fraiseql-observers` binary as a child process.
//!
//! [`Worker::start`] writes the YAML config to a temp file, runs `fraiseql-observers start
//! --config FILE` with stdout+stderr appended to a log file under `target/e2e-logs/`, and lets a
//! test SIGTERM it, `kill -9` it, restart it with the same config, wait for its exit status or
//! for a log line. When a test panics while a `Worker` is alive, dropping it prints the tail of
//! the log (and the path of the full log) into the test's output.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Env var overriding the binary path.
pub const BIN_ENV: &str = "FRAISEQL_OBSERVERS_BIN";

/// Root of the cargo workspace (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of the worker binary; panics with instructions when it does not exist.
pub fn worker_bin() -> PathBuf {
    let path = std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("fraiseql-observers"));
    if !path.is_file() {
        panic!(
            "worker binary {} not found: run `cargo build -p observer-worker` first \
             (or point {BIN_ENV} at a built fraiseql-observers binary)",
            path.display()
        );
    }
    path
}

/// Directory for worker logs of the end-to-end tests: `target/e2e-logs/`. Files older than
/// two days are pruned once per process.
pub fn log_dir() -> PathBuf {
    static PRUNED: std::sync::Once = std::sync::Once::new();
    let d = std::env::var_os("OBSERVERS_TEST_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("e2e-logs"));
    let _ = fs::create_dir_all(&d);
    PRUNED.call_once(|| prune_old_files(&d, Duration::from_secs(2 * 24 * 3600)));
    d
}

fn prune_old_files(dir: &Path, older_than: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > older_than)
            .unwrap_or(false);
        if old && e.path().is_file() {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn unique_suffix() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A running (or exited) worker process.
pub struct Worker {
    bin: PathBuf,
    name: String,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    starts: u32,
    /// Print the log when dropped (set on panic automatically).
    pub dump_log_on_drop: bool,
}

impl Worker {
    /// Write `yaml` to a temp file and run `fraiseql-observers start --config FILE`.
    /// `env` is added to the inherited environment (`RUST_LOG` defaults to `info`).
    pub fn start(name: &str, yaml: &str, env: &[(&str, &str)]) -> Worker {
        Self::start_bin(worker_bin(), name, yaml, env)
    }

    /// [`Worker::start`] with an explicit binary path (`bench-e2e --worker-bin`).
    pub fn start_bin(bin: PathBuf, name: &str, yaml: &str, env: &[(&str, &str)]) -> Worker {
        let name = format!("{}-{}", sanitize(name), unique_suffix());
        let dir = log_dir();
        let config_path = dir.join(format!("{name}.yaml"));
        fs::write(&config_path, yaml).unwrap_or_else(|e| {
            panic!("cannot write worker config {}: {e}", config_path.display())
        });
        let log_path = dir.join(format!("{name}.log"));
        let mut w = Worker {
            bin,
            name,
            child: None,
            exit: None,
            config_path,
            log_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
            dump_log_on_drop: false,
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "worker {} is still running",
            self.name
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open worker log {}: {e}", self.log_path.display()));
        let _ = writeln!(
            log,
            "=== observers-tests: start #{} of `fraiseql-observers start --config {}` ===",
            self.starts,
            self.config_path.display()
        );
        let err = log.try_clone().expect("dup log file handle");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("start").arg("--config").arg(&self.config_path);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1").env("RUST_BACKTRACE", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        // ETXTBSY: another thread of this test process may be between fork and exec while
        // holding a just-written executable open; retry briefly.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot spawn {}: {e}", self.bin.display()),
            }
        };
        self.child = Some(child);
        self.exit = None;
    }

    /// Start it again (same config, same env, same log file) after it exited or was killed.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            panic!("restart() on a running worker: stop or kill it first");
        }
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send a signal to the running process.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// SIGTERM: graceful shutdown.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.exit = c.wait().ok();
        }
    }

    /// Is the process still running? Reaps it if it exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(st))) => {
                self.exit = Some(st);
                self.child = None;
                false
            }
            Some(Err(_)) | None => false,
        }
    }

    /// Exit status of the last run, if it exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    /// Wait for the process to exit; `None` on timeout (the process keeps running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the log contains `needle` (case-sensitive); `false` on timeout.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_where(timeout, |l| l.contains(needle))
            .await
    }

    /// Wait until at least `n` log lines contain `needle` (a message the worker logs more than
    /// once, e.g. at start and after a recovery); `false` on timeout.
    pub async fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until some log line satisfies `pred`; `false` on timeout.
    pub async fn wait_for_log_where(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().any(&pred) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait for the exit status (panics if it does not exit within `timeout`).
    pub async fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.sigterm();
        match self.wait_exit(timeout).await {
            Some(st) => st,
            None => {
                self.dump_log();
                panic!(
                    "worker {} did not exit within {timeout:?} after SIGTERM",
                    self.name
                )
            }
        }
    }

    /// Print the last 300 lines of the log and its path to stderr.
    pub fn dump_log(&self) {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(300);
        eprintln!(
            "----- worker log {} ({} lines{}) -----",
            self.log_path.display(),
            lines.len(),
            if from > 0 { ", last 300 shown" } else { "" }
        );
        for l in &lines[from..] {
            eprintln!("{l}");
        }
        eprintln!("----- end of worker log -----");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.dump_log_on_drop || std::thread::panicking() {
            self.dump_log();
        }
    }
}

/// Run a one-shot CLI command (`validate-config FILE`, `status`, ...) with a timeout.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(worker_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run fraiseql-observers {args:?}: {e}"),
        Err(_) => panic!("fraiseql-observers {args:?} did not finish within {timeout:?}"),
    }
}

/// Write `content` to a fresh file in the log directory (configs for `validate-config` etc.).
pub fn write_temp_file(name: &str, content: &str) -> PathBuf {
    let path = log_dir().join(format!("{}-{}", unique_suffix(), sanitize(name)));
    let mut f =
        File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.write_all(content.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;

    /// A stand-in for the worker: logs its arguments and an env var, exits 0 on SIGTERM.
    fn fake_worker() -> PathBuf {
        let path = log_dir().join(format!("fake-worker-{}.sh", unique_suffix()));
        fs::write(
            &path,
            "#!/bin/sh\n\
             echo \"args: $*\"\n\
             echo \"env: $FAKE_VALUE\" >&2\n\
             trap 'echo terminating; exit 0' TERM\n\
             echo ready\n\
             while true; do sleep 0.05; done\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_log_sigterm_restart_kill9() {
        let bin = fake_worker();
        let mut w = Worker::start_bin(
            bin.clone(),
            "fake",
            "database: {}\n",
            &[("FAKE_VALUE", "42")],
        );
        assert!(
            w.wait_for_log("ready", Duration::from_secs(10)).await,
            "{}",
            w.log()
        );
        let log = w.log();
        assert!(
            log.contains(&format!(
                "args: start --config {}",
                w.config_path().display()
            )),
            "{log}"
        );
        assert!(log.contains("env: 42"), "stderr captured: {log}");
        assert_eq!(
            fs::read_to_string(w.config_path()).unwrap(),
            "database: {}\n"
        );
        assert!(w.is_running());

        let st = w.stop(Duration::from_secs(10)).await;
        assert_eq!(st.code(), Some(0));
        assert!(w.log().contains("terminating"));
        assert!(!w.is_running());

        w.restart();
        assert!(
            w.wait_for_log_where(Duration::from_secs(10), |l| l.contains("start #2"))
                .await,
            "restart marker missing: {}",
            w.log()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.log().matches("ready").count() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.kill9();
        assert_eq!(
            w.exit_status().and_then(|s| s.signal()),
            Some(libc::SIGKILL)
        );
        assert_eq!(
            w.log().matches("ready").count(),
            2,
            "both runs appended to one log"
        );
        assert_eq!(
            w.wait_exit(Duration::from_millis(10))
                .await
                .and_then(|s| s.signal()),
            Some(libc::SIGKILL)
        );
        let _ = fs::remove_file(bin);
    }
}
