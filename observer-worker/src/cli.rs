//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "fraiseql-observers",
    version,
    about = "Delivers PostgreSQL change events captured by pg_observers (webhooks, with retries, dead letters and checkpoints)",
    propagate_version = true
)]
pub struct Cli {
    /// PostgreSQL URL (postgres://user@host:port/db). For `start`, an explicit
    /// --database-url wins over `database.url` in the file, which wins over
    /// the DATABASE_URL environment variable.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// Output format: of logs for `start`, of results for the other commands.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker (SIGTERM/SIGINT: finish in-flight work, save the checkpoint, exit 0).
    Start {
        /// The YAML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file; lists every problem with its YAML path and
    /// line:column (exit 0 valid, 2 invalid). With an explicit --database-url
    /// it also checks tables, columns and conditions against that database
    /// (read-only); without it, it connects nowhere.
    ValidateConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show `observers.status()`: observers, backlog, checkpoint, leader, dead letters.
    Status {
        /// Take the database URL from this configuration file if --database-url / DATABASE_URL is not set.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Read the running worker's Prometheus metrics (/metrics) and print a summary
    /// (exit 0 ok, 1 cannot reach the worker).
    Metrics {
        /// The worker's metrics URL [default: from the config file's metrics.listen, else
        /// http://127.0.0.1:9187/metrics].
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Take the URL from this configuration file's `metrics.listen`.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "fraiseql-observers",
            "start",
            "--config",
            "c.yaml",
            "--format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.format, Format::Json);
        assert!(matches!(cli.command, Command::Start { .. }));
        let cli = Cli::try_parse_from(["fraiseql-observers", "validate-config", "c.yaml"]).unwrap();
        assert!(matches!(cli.command, Command::ValidateConfig { .. }));
    }
}
