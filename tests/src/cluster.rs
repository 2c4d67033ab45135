//! Throwaway PostgreSQL 15 clusters.
//!
//! A [`Cluster`] is a private `initdb` in a fresh directory under `/tmp/observers-test-*`, listening
//! on `127.0.0.1` only with `trust` auth, a free port and its unix socket inside the data
//! directory. PostgreSQL refuses to run as root, so when the tests run as root every `initdb` /
//! `pg_ctl` call goes through `runuser -u postgres` and the directory is owned by `postgres`.
//!
//! Most tests share one cluster per test run ([`shared_url`]): the one `make test` started (env
//! `OBSERVERS_TEST_PGURL`), or else one started lazily per test binary and stopped at exit. Each
//! test still gets its own database ([`fresh_db`]) with `CREATE EXTENSION pg_observers`. Tests that
//! stop or restart the database start a private [`Cluster`].

use std::ffi::OsStr;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// Where the PostgreSQL 15 server binaries live (override with `OBSERVERS_TEST_PGBIN`).
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("OBSERVERS_TEST_PGBIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Env var naming an already running cluster (superuser URL) the tests share.
pub const SHARED_URL_ENV: &str = "OBSERVERS_TEST_PGURL";

/// Prefix of every private cluster directory; stale ones (owner process gone) are swept.
const DIR_PREFIX: &str = "observers-test-";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("could not run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}):\n{output}")]
    Failed {
        cmd: String,
        status: String,
        output: String,
    },
    #[error("filesystem error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Other(String),
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL binary, as `postgres` when we are root.
fn pg_command(bin: &str) -> Command {
    let path = pg_bin_dir().join(bin);
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut cmd: Command) -> Result<Output, ClusterError> {
    let desc = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ClusterError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ClusterError::Failed {
            cmd: desc,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(out)
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A private PostgreSQL cluster. Dropping it stops the server and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    base: PathBuf,
    data: PathBuf,
    port: u16,
    running: AtomicBool,
    keep: bool,
}

impl Cluster {
    /// `initdb` + start a new cluster. Blocking (a second or two).
    pub fn start() -> Result<Cluster, ClusterError> {
        sweep_stale_clusters();
        let base = make_base_dir()?;
        let data = base.join("data");
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]);
        if let Err(e) = run(initdb) {
            let _ = fs::remove_dir_all(&base);
            return Err(e);
        }
        let mut last_err = None;
        // The port is only reserved between bind and start: retry with a new one if taken.
        for _ in 0..5 {
            let port = free_port();
            write_conf(&data, port)?;
            let cluster = Cluster {
                base: base.clone(),
                data: data.clone(),
                port,
                running: AtomicBool::new(false),
                keep: std::env::var_os("OBSERVERS_TEST_KEEP").is_some(),
            };
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let log = fs::read_to_string(cluster.log_path()).unwrap_or_default();
                    // Forget it without running Drop (which would remove the directory).
                    std::mem::forget(cluster);
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        let _ = fs::remove_dir_all(&base);
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        let _ = fs::remove_dir_all(&base);
        Err(last_err.unwrap_or_else(|| ClusterError::Other("could not start cluster".into())))
    }

    /// Superuser URL of database `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log (`server.log` next to the data directory).
    pub fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(args);
        run(c).map(|_| ())
    }

    fn start_server(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["-w", "-t", "60", "start"])?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Start a stopped cluster again (same port, same data).
    pub fn start_again(&self) -> Result<(), ClusterError> {
        self.start_server()
    }

    /// Fast shutdown (`pg_ctl stop -m fast`).
    pub fn stop(&self) -> Result<(), ClusterError> {
        if self.running.swap(false, Ordering::SeqCst) {
            self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"])?;
        }
        Ok(())
    }

    /// Crash-like shutdown (`pg_ctl stop -m immediate`): no checkpoint, crash recovery at start.
    pub fn stop_immediate(&self) -> Result<(), ClusterError> {
        if self.running.swap(false, Ordering::SeqCst) {
            self.pg_ctl(&["-w", "-t", "60", "-m", "immediate", "stop"])?;
        }
        Ok(())
    }

    /// `pg_ctl restart -m fast`: every connection is terminated, the server comes back.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "restart"])?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stop the server (immediately) and remove the directory. Idempotent.
    pub fn destroy(&self) {
        if self.running.swap(false, Ordering::SeqCst) {
            let _ = self.pg_ctl(&["-w", "-t", "30", "-m", "immediate", "stop"]);
        }
        if self.keep {
            eprintln!(
                "OBSERVERS_TEST_KEEP set: leaving cluster directory {}",
                self.base.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.base);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn make_base_dir() -> Result<PathBuf, ClusterError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}-{:08x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos
    ));
    fs::create_dir(&base).map_err(io_err(&base))?;
    fs::write(base.join("owner.pid"), std::process::id().to_string()).map_err(io_err(&base))?;
    if running_as_root() {
        let mut c = Command::new("chown");
        c.arg("postgres:postgres").arg(&base);
        run(c)?;
    }
    Ok(base)
}

fn write_conf(data: &Path, port: u16) -> Result<(), ClusterError> {
    // postgresql.auto.conf is read last and rewritten on every attempt (port may change).
    let conf = format!(
        "# written by observers-tests (cluster.rs)\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = '{dir}'\n\
         max_connections = 200\n\
         shared_buffers = 128MB\n\
         fsync = off\n\
         synchronous_commit = on\n\
         full_page_writes = off\n\
         log_min_messages = warning\n\
         log_line_prefix = '%m [%p] %d '\n\
         observers.verify_tuples = on\n\
         {preload}",
        dir = data.display(),
        // pg_observers preloaded (the event id counter's shared memory reserved at start-up,
        // capture/ids.rs); OBSERVERS_TEST_PRELOAD=0 runs the tests without it
        preload = if std::env::var("OBSERVERS_TEST_PRELOAD").as_deref() == Ok("0") {
            ""
        } else {
            "shared_preload_libraries = 'pg_observers'\n"
        }
    );
    let path = data.join("postgresql.auto.conf");
    fs::write(&path, conf).map_err(io_err(&path))?;
    if running_as_root() {
        let mut c = Command::new("chown");
        c.arg("postgres:postgres").arg(&path);
        run(c)?;
    }
    Ok(())
}

/// Remove clusters left behind by test processes that died without cleaning up.
fn sweep_stale_clusters() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        let base = entry.path();
        let Ok(owner) = fs::read_to_string(base.join("owner.pid")) else {
            continue;
        };
        let Ok(pid) = owner.trim().parse::<i32>() else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let data = base.join("data");
        if data.join("postmaster.pid").exists() {
            let mut c = pg_command("pg_ctl");
            c.arg("-D")
                .arg(&data)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"]);
            let _ = run(c);
        }
        let _ = fs::remove_dir_all(&base);
    }
}

/// A database error with its SQLSTATE, message, detail and hint (`Display` of
/// `tokio_postgres::Error` says only "db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!("; where: {w}"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Connect and drive the connection on the current tokio runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the server goes away; tests see
        // the latter as errors on their queries.
        let _ = conn.await;
    });
    Ok(client)
}

/// Connect, retrying until `timeout` (a server that is starting or restarting).
pub async fn connect_retry(url: &str, timeout: Duration) -> Result<Client, tokio_postgres::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

enum Shared {
    External(String),
    Owned(Cluster),
}

static SHARED: OnceLock<Shared> = OnceLock::new();

extern "C" fn destroy_shared_cluster() {
    if let Some(Shared::Owned(c)) = SHARED.get() {
        c.destroy();
    }
}

/// Superuser URL (database `postgres`) of the cluster shared by this test run.
pub fn shared_url() -> String {
    let shared = SHARED.get_or_init(|| match std::env::var(SHARED_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Shared::External(url.trim().to_owned()),
        _ => {
            let c = Cluster::start()
                .unwrap_or_else(|e| panic!("cannot start the shared test cluster: {e}"));
            // Statics are never dropped: stop the cluster when the process exits.
            // SAFETY: registering a plain extern "C" fn with no captured state.
            unsafe {
                libc::atexit(destroy_shared_cluster);
            }
            Shared::Owned(c)
        }
    });
    match shared {
        Shared::External(url) => url.clone(),
        Shared::Owned(c) => c.url(),
    }
}

/// Replace the database name in a `postgres://` URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/dbname -- the path starts after the authority.
    let after_scheme = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[after_scheme..].find('/') {
        Some(i) => &head[..after_scheme + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A private cluster of one test (`Cluster::start` on a blocking thread), for tests that stop,
/// restart or reconfigure PostgreSQL or need a cluster where the extension was never installed.
/// Panics when it cannot start. Removed when the last `Arc` is dropped.
pub async fn private_cluster() -> std::sync::Arc<Cluster> {
    std::sync::Arc::new(
        tokio::task::spawn_blocking(Cluster::start)
            .await
            .expect("cluster start thread")
            .expect("private cluster"),
    )
}

/// A database made for one test, with `pg_observers` installed.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Client,
}

impl TestDb {
    /// Another session on the same database.
    pub async fn connect(&self) -> Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }
}

fn unique_db_name(hint: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let clean: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!(
        "t_{clean}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new database on the shared cluster with `CREATE EXTENSION pg_observers`.
pub async fn fresh_db(name_hint: &str) -> TestDb {
    let url = shared_url();
    fresh_db_on(&url, name_hint).await
}

static INSTALL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A new database on the cluster at `server_url` with `CREATE EXTENSION pg_observers`.
pub async fn fresh_db_on(server_url: &str, name_hint: &str) -> TestDb {
    let name = unique_db_name(name_hint);
    let admin = connect_retry(server_url, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test cluster {server_url}: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", pg_error(&e)));
    let url = with_database(server_url, &name);
    let client = connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    // Installs are serialised within this process: concurrent first installs in two databases
    // race on the cluster-wide roles (FINDINGS-tests.md F1; covered by
    // install::concurrent_create_extension_in_several_databases).
    let installed = {
        let _one_at_a_time = INSTALL_LOCK.lock().await;
        client.batch_execute("CREATE EXTENSION pg_observers").await
    };
    if let Err(e) = installed {
        panic!(
            "CREATE EXTENSION pg_observers failed in {name}: {}\n\
             Is the extension installed? (`make install-ext`, or \
             `cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config` in pg_observers/)",
            pg_error(&e)
        );
    }
    TestDb { name, url, client }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5/postgres", "x"),
            "postgres://postgres@127.0.0.1:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u@h:5/db?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
    }

    #[test]
    fn db_names_are_unique_and_safe() {
        let a = unique_db_name("Late Commit!");
        let b = unique_db_name("Late Commit!");
        assert_ne!(a, b);
        assert!(a.starts_with("t_late_commit__"), "{a}");
        assert!(a.len() < 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_cluster_start_restart_stop() {
        let c = tokio::task::spawn_blocking(Cluster::start)
            .await
            .unwrap()
            .expect("start cluster");
        let client = connect(&c.url()).await.expect("connect");
        let v: String = client
            .query_one("SHOW server_version", &[])
            .await
            .unwrap()
            .get(0);
        assert!(v.starts_with("15"), "server version {v}");
        let listen: String = client
            .query_one("SHOW listen_addresses", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(listen, "127.0.0.1");

        // restart kills existing sessions; a new one works
        let c = std::sync::Arc::new(c);
        let c2 = c.clone();
        tokio::task::spawn_blocking(move || c2.restart())
            .await
            .unwrap()
            .expect("restart");
        assert!(
            client.query_one("SELECT 1", &[]).await.is_err(),
            "old session survived a restart"
        );
        let client = connect_retry(&c.url(), Duration::from_secs(30))
            .await
            .expect("reconnect");
        client
            .query_one("SELECT 1", &[])
            .await
            .expect("query after restart");

        let c2 = c.clone();
        tokio::task::spawn_blocking(move || c2.stop_immediate())
            .await
            .unwrap()
            .expect("stop");
        assert!(
            connect(&c.url()).await.is_err(),
            "connect succeeded on a stopped cluster"
        );
        let c2 = c.clone();
        tokio::task::spawn_blocking(move || c2.start_again())
            .await
            .unwrap()
            .expect("start again");
        connect_retry(&c.url(), Duration::from_secs(30))
            .await
            .expect("connect after start");

        let base = c.base.clone();
        drop(client);
        let c = std::sync::Arc::try_unwrap(c).expect("sole owner");
        drop(c);
        assert!(
            !base.exists(),
            "cluster directory {} not removed",
            base.display()
        );
    }
}
