//! `fraiseql-observers`: entry point. Exit codes: 0 ok (also after a clean
//! SIGTERM/SIGINT shutdown), 1 runtime error, 2 bad configuration or usage, 3 not found
//! (operator commands: dead letter, event, observer, group; docs/CLI_TOOLS.md).

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use observer_worker::cli::{Cli, Command, Format};
use observer_worker::commands;
use observer_worker::config::{self, Config, Defaults, ProcessEnv};
use observer_worker::error::{WorkerError, EXIT_CONFIG, EXIT_RUNTIME};
use observer_worker::telemetry;

/// mimalloc: the worker allocates many small, short-lived buffers per request
/// on several threads, where glibc malloc spends a noticeable share of the CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches(); // usage errors exit 2 here
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let url_on_command_line =
        matches.value_source("database_url") == Some(ValueSource::CommandLine);

    let code = match cli.command {
        Command::ValidateConfig { ref file } => match (&cli.database_url, url_on_command_line) {
            // only an explicit --database-url turns on the live checks (not DATABASE_URL)
            (Some(url), true) => match runtime() {
                Ok(rt) => rt.block_on(commands::validate_config_live(
                    file,
                    url,
                    cli.format,
                    &mut std::io::stdout().lock(),
                )),
                Err(e) => fail(&e),
            },
            _ => commands::validate_config(file, cli.format, &mut std::io::stdout().lock()),
        },
        Command::Status { ref config, .. } => run_operator(&cli, config.as_deref()),
        Command::DebugEvent { ref db, .. }
        | Command::Dlq { ref db, .. }
        | Command::Replay { ref db, .. }
        | Command::Checkpoint { ref db, .. }
        | Command::Jobs { ref db, .. }
        | Command::Search { ref db, .. } => run_operator(&cli, db.config.as_deref()),
        Command::Start { ref config } => run_start(&cli, config, url_on_command_line),
        Command::Apply {
            ref config,
            dry_run,
            prune,
        } => run_apply(&cli, config, url_on_command_line, dry_run, prune),
        Command::Metrics {
            ref url,
            ref config,
        } => run_metrics(&cli, url.as_deref(), config.as_deref()),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `status`, `dlq ...`, `debug-event`, `replay`: the URL from --database-url / DATABASE_URL,
/// else from `database.url` of the --config file.
fn run_operator(cli: &Cli, config_path: Option<&Path>) -> i32 {
    // an empty DATABASE_URL counts as unset
    let given = cli.database_url.as_deref().filter(|u| !u.trim().is_empty());
    let url = match (given, config_path) {
        (Some(u), _) => u.to_owned(),
        (None, Some(path)) => match config::load_file(
            path,
            &ProcessEnv,
            &Defaults::for_this_process(),
        ) {
            Ok(Config { database, .. }) => match database.url {
                Some(u) => u,
                None => return usage(
                    "no database URL: pass --database-url, set DATABASE_URL or set database.url",
                ),
            },
            Err(e) => return report_config_error(&e, cli.format),
        },
        (None, None) => {
            return usage(
                "no database URL: pass --database-url, set DATABASE_URL, or --config FILE",
            )
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    rt.block_on(commands::run_operator(
        &cli.command,
        &url,
        cli.format,
        &mut std::io::stdout().lock(),
    ))
    .unwrap_or(EXIT_CONFIG)
}

/// `metrics`: --url, else `metrics.listen` of --config, else the default address.
fn run_metrics(cli: &Cli, url: Option<&str>, config_path: Option<&Path>) -> i32 {
    use observer_worker::metrics_cli;
    let url = match (url, config_path) {
        (Some(u), _) => u.to_owned(),
        (None, Some(path)) => {
            match config::load_file(path, &ProcessEnv, &Defaults::for_this_process()) {
                Ok(c) if !c.metrics.enabled => {
                    return usage(&format!(
                        "metrics are disabled in {} (`metrics: disabled`): the worker serves none",
                        path.display()
                    ))
                }
                Ok(c) => metrics_cli::url_from_listen(&c.metrics.listen),
                Err(e) => return report_config_error(&e, cli.format),
            }
        }
        (None, None) => metrics_cli::DEFAULT_URL.to_owned(),
    };
    match runtime() {
        Ok(rt) => rt.block_on(metrics_cli::run(
            &url,
            cli.format,
            &mut std::io::stdout().lock(),
        )),
        Err(e) => fail(&e),
    }
}

/// The configuration of `start` / `apply` and the database URL: --database-url on the command
/// line > database.url in the file > DATABASE_URL. `Err(exit code)` after reporting.
fn config_and_url(
    cli: &Cli,
    config_path: &Path,
    url_on_command_line: bool,
) -> Result<(Config, String), i32> {
    let config = match config::load_file(config_path, &ProcessEnv, &Defaults::for_this_process()) {
        Ok(c) => c,
        Err(e) => return Err(report_config_error(&e, cli.format)),
    };
    let url = if url_on_command_line {
        cli.database_url.clone()
    } else {
        None
    }
    .or_else(|| config.database.url.clone())
    .or_else(|| cli.database_url.clone());
    let Some(url) = url else {
        return Err(usage("no database URL: set database.url in the configuration, pass --database-url, or set DATABASE_URL"));
    };
    Ok((config, url))
}

/// `apply --config FILE [--dry-run] [--prune]`.
fn run_apply(
    cli: &Cli,
    config_path: &Path,
    url_on_command_line: bool,
    dry_run: bool,
    prune: bool,
) -> i32 {
    let (config, url) = match config_and_url(cli, config_path, url_on_command_line) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result = rt.block_on(commands::apply::run(
        &url,
        &config,
        dry_run,
        prune,
        cli.format,
        &mut std::io::stdout().lock(),
    ));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.code
        }
    }
}

fn run_start(cli: &Cli, config_path: &Path, url_on_command_line: bool) -> i32 {
    let (config, url) = match config_and_url(cli, config_path, url_on_command_line) {
        Ok(x) => x,
        Err(code) => return code,
    };

    telemetry::init_logging(cli.format);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    rt.block_on(async move {
        let stop = CancellationToken::new();
        tokio::spawn(watch_signals(stop.clone()));
        match observer_worker::worker::run(config, &url, stop).await {
            Ok(()) => 0,
            Err(e) => {
                let code = e.exit_code();
                match &e {
                    WorkerError::Config(_) | WorkerError::Usage(_) => eprintln!("error: {e}"),
                    _ => error!(exit_code = code, "{e}"),
                }
                code
            }
        }
    })
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit immediately.
async fn watch_signals(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the worker with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = name,
        "shutdown requested: finishing in-flight work (send the signal again to exit at once)"
    );
    stop.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    warn!("second signal: exiting immediately; unfinished events will be delivered again");
    std::process::exit(EXIT_RUNTIME);
}

fn report_config_error(e: &config::ConfigError, format: Format) -> i32 {
    let mut err = std::io::stderr().lock();
    let _ = match (format, e) {
        (Format::Json, config::ConfigError::Invalid { file, .. }) => {
            writeln!(err, "{}", commands::problems_json(file, e))
        }
        _ => writeln!(err, "error: {e}"),
    };
    EXIT_CONFIG
}

fn usage(message: &str) -> i32 {
    eprintln!("error: {message}");
    EXIT_CONFIG
}

fn fail(e: &anyhow::Error) -> i32 {
    eprintln!("error: {e:#}");
    EXIT_RUNTIME
}
