//! The guides cannot drift from the product (issue 14 §4): every fenced block of the guides
//! below that a reader would run is run, in document order, as one bash script per guide,
//! against a fresh database and the real binaries. docs/TESTING.md ("Guides") lists the
//! conventions:
//!
//! * ```` ```sql ```` — run with `psql "$DATABASE_URL" -v ON_ERROR_STOP=1` (the database is a
//!   fresh one per guide, `DATABASE_URL` set, superuser);
//! * ```` ```sh ```` — run as written, in one bash session per guide (`set -euo pipefail`; a
//!   command put in the background with `&` lives until the guide's end), in a scratch
//!   directory that holds a link to the repository's `examples/`, with `fraiseql-observers`,
//!   `webhook-receiver` and `psql` on `PATH`;
//! * ```` ```<lang> file=NAME ```` — written to `NAME` in the scratch directory (configuration
//!   files, receivers), for the `sh` blocks to use;
//! * ```` ```yaml ```` without `file=` — a whole configuration: `validate-config` must accept it;
//! * anything else (`text`, `json`, `toml`, `console`, …) is shown, not run.
//!
//! Ports 8080-8089 written in a guide are replaced by free ports, and the role names a guide
//! creates get a per-run suffix (roles are cluster-wide), so that guides run beside other tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use observers_tests::cluster::{free_port, pg_bin_dir};
use observers_tests::worker::{worker_bin, workspace_root};

const GUIDES: &[&str] = &[
    "README.md",
    "INTEGRATION_GUIDE.md",
    "CONFIGURATION_EXAMPLES.md",
    "PERFORMANCE_TUNING.md",
    "MIGRATION_GUIDE.md",
];

/// Languages shown but never run.
const SHOWN: &[&str] = &[
    "", "text", "json", "toml", "console", "http", "promql", "ini",
];

#[derive(Debug)]
struct Block {
    line: usize,
    lang: String,
    file: Option<String>,
    body: String,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = vec![];
    let mut current: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        match current.as_mut() {
            None => {
                if let Some(info) = line.trim_start().strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let lang = words.next().unwrap_or("").to_owned();
                    let file = words
                        .find_map(|w| w.strip_prefix("file="))
                        .map(str::to_owned);
                    current = Some(Block {
                        line: i + 1,
                        lang,
                        file,
                        body: String::new(),
                    });
                }
            }
            Some(b) => {
                if line.trim_start().starts_with("```") {
                    out.push(current.take().unwrap());
                } else {
                    b.body.push_str(line);
                    b.body.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "an unclosed ``` block");
    out
}

/// `CREATE ROLE name` in the guide's SQL: renamed with `suffix` everywhere in the guide.
fn created_roles(md: &str) -> Vec<String> {
    let mut roles = vec![];
    for part in md.split("CREATE ROLE ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !roles.contains(&name) {
            roles.push(name);
        }
    }
    roles
}

fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (pos, _) in text.match_indices(word) {
        if pos < last {
            continue;
        }
        let before = text[..pos].chars().next_back();
        let after = text[pos + word.len()..].chars().next();
        if before.is_some_and(is_ident) || after.is_some_and(is_ident) {
            continue;
        }
        out.push_str(&text[last..pos]);
        out.push_str(with);
        last = pos + word.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The guide as one bash script (and the files it writes), after the port and role renames.
fn script_for(name: &str, md: &str, suffix: &str, ports: &BTreeMap<u16, u16>) -> String {
    let mut md = md.to_owned();
    for (from, to) in ports {
        md = replace_word(&md, &from.to_string(), &to.to_string());
    }
    for role in created_roles(&md) {
        md = replace_word(&md, &role, &format!("{role}_{suffix}"));
    }
    let mut s = String::from(
        "set -euo pipefail\n\
         trap 'jobs -p | xargs -r kill 2>/dev/null || true; wait 2>/dev/null || true' EXIT\n",
    );
    let mut runnable = 0;
    for (n, b) in blocks(&md).into_iter().enumerate() {
        let tag = format!("GUIDE_BLOCK_{n}_EOF");
        s.push_str(&format!(
            "echo '>>> {name}:{} ({})' >&2\n",
            b.line,
            if b.lang.is_empty() { "text" } else { &b.lang }
        ));
        match (b.lang.as_str(), &b.file) {
            (_, Some(file)) => {
                assert!(
                    !file.contains('/') && !file.starts_with('.'),
                    "{name}:{}: file= must be a plain name",
                    b.line
                );
                s.push_str(&format!("cat > '{file}' <<'{tag}'\n{}{tag}\n", b.body));
                runnable += 1;
            }
            ("sql", None) => {
                s.push_str(&format!(
                    "psql \"$DATABASE_URL\" -X -q -v ON_ERROR_STOP=1 <<'{tag}'\n{}{tag}\n",
                    b.body
                ));
                runnable += 1;
            }
            ("sh", None) => {
                s.push_str(&b.body);
                runnable += 1;
            }
            ("yaml", None) => {
                s.push_str(&format!(
                    "cat > guide-block-{n}.yaml <<'{tag}'\n{}{tag}\n\
                     fraiseql-observers validate-config guide-block-{n}.yaml\n",
                    b.body
                ));
                runnable += 1;
            }
            (lang, None) => assert!(
                SHOWN.contains(&lang),
                "{name}:{}: a ```{lang} block is neither run nor in the shown-only list; \
                 give it file=NAME or use a shown-only language",
                b.line
            ),
        }
    }
    assert!(runnable > 0, "{name}: nothing to run");
    s.push_str(&format!("echo '>>> {name}: every block ran' >&2\n"));
    s
}

#[test]
fn the_block_parser_and_the_renames_work() {
    let md = "x\n```sql\nCREATE ROLE app_w LOGIN;\n```\n```yaml file=a.yaml\nurl: http://127.0.0.1:8081/\n```\n```text\nno\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 3);
    assert_eq!(
        (b[1].lang.as_str(), b[1].file.as_deref()),
        ("yaml", Some("a.yaml"))
    );
    let s = script_for("t", md, "x1", &BTreeMap::from([(8081, 40001)]));
    assert!(s.contains("CREATE ROLE app_w_x1 LOGIN"), "{s}");
    assert!(s.contains("127.0.0.1:40001/"), "{s}");
    assert!(!s.contains("no\n"), "{s}");
    assert_eq!(
        replace_word("app_w app_wx xapp_w app_w;", "app_w", "R"),
        "R app_wx xapp_w R;"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runnable_block_of_the_guides_runs() {
    let docs = workspace_root().join("docs");
    let bin_dir = worker_bin().parent().unwrap().to_path_buf();
    assert!(
        bin_dir.join("webhook-receiver").exists(),
        "{} not built (cargo build --bins)",
        bin_dir.join("webhook-receiver").display()
    );
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        pg_bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = vec![];
    // the guides' files use the default metrics address, as a reader's would
    let _port = crate::common::DEFAULT_METRICS_PORT.lock().await;
    // OBSERVERS_TEST_GUIDES=INTEGRATION_GUIDE.md,README.md runs only those (while writing one)
    let only = std::env::var("OBSERVERS_TEST_GUIDES").ok();
    let chosen: Vec<&str> = match &only {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => GUIDES.to_vec(),
    };
    for name in chosen {
        let md =
            std::fs::read_to_string(docs.join(name)).unwrap_or_else(|e| panic!("docs/{name}: {e}"));
        let db = observers_tests::fresh_db(&format!("guide_{name}")).await;
        let suffix: String = db
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let ports: BTreeMap<u16, u16> = (8080..=8089).map(|p| (p, free_port())).collect();
        let script = script_for(name, &md, &suffix, &ports);
        let dir: PathBuf = std::env::temp_dir().join(format!("observers-guide-{}", db.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // the guides refer to the repository's examples/ as a reader's checkout has them
        std::os::unix::fs::symlink(workspace_root().join("examples"), dir.join("examples"))
            .unwrap();
        std::fs::write(dir.join("guide.sh"), &script).unwrap();
        let run = tokio::process::Command::new("bash")
            .arg("guide.sh")
            .current_dir(&dir)
            .env("PATH", &path)
            .env("DATABASE_URL", &db.url)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(300), run).await {
            Ok(Ok(o)) if o.status.success() => {
                let _ = std::fs::remove_dir_all(&dir); // kept only when the guide failed
            }
            Ok(Ok(o)) => failures.push(format!(
                "docs/{name} failed (exit {:?}; script {}):\n--- stdout\n{}\n--- stderr\n{}",
                o.status.code(),
                dir.join("guide.sh").display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Ok(Err(e)) => failures.push(format!("docs/{name}: cannot run bash: {e}")),
            Err(_) => failures.push(format!("docs/{name}: still running after 300 s")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
