//! A private OpenSearch-API server for one test: `osmem-server`, the in-memory
//! OpenSearch-compatible server that the PyPI package `osmem-server` ships as a static binary
//! (scripts/install-deps.sh installs it). It is not Elasticsearch: docs/SEARCH.md says what was
//! verified against it.
//!
//! The binary is `$OSMEM_SERVER_BIN`, else what `python3 -c 'import osmem_server;
//! print(osmem_server.resolve_binary())'` prints. It listens on a free port (`-addr
//! 127.0.0.1:0`) and prints `{"url": ...}` on its first line. Dropping the handle kills it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A running `osmem-server` child.
pub struct OsMem {
    url: String,
    child: Child,
}

/// Where the binary is. Panics with an install hint.
pub fn binary() -> String {
    if let Ok(b) = std::env::var("OSMEM_SERVER_BIN") {
        return b;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 to find osmem-server ({e})"));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "osmem-server is not installed: `pip install osmem-server` (make test runs scripts/install-deps.sh, which does), or set OSMEM_SERVER_BIN; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

impl OsMem {
    pub fn start() -> OsMem {
        let mut child = Command::new(binary())
            .args([
                "-addr",
                "127.0.0.1:0",
                "-no-stdin-watch",
                "-parent-pid",
                &std::process::id().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start osmem-server ({e})"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read osmem-server's first line");
        // keep draining its stdout, so that a later write never meets a closed pipe
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("osmem-server said {line:?} ({e})"));
        let url = v["url"]
            .as_str()
            .unwrap_or_else(|| panic!("no url in {line:?}"))
            .to_owned();
        OsMem { url, child }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for OsMem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
