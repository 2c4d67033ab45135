//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
        // SPEC §3 spells it `validate-config FILE --database URL`
        visible_alias = "database",
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
    /// Create or update the configuration file's observers in one transaction, before any
    /// worker runs (deploy pipelines). Prints the plan: created, changed, unchanged, and the
    /// group's observers that are not in the file (kept, or disabled with --prune). Exit 0
    /// applied, 2 invalid file or an observer the database refused (nothing changed), 1 the
    /// database cannot be reached.
    Apply {
        /// The YAML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        /// Run everything in a transaction that is rolled back: the plan, checked by the
        /// database, with nothing changed.
        #[arg(long)]
        dry_run: bool,
        /// Disable the group's observers that are not in the file (they are never dropped).
        #[arg(long)]
        prune: bool,
    },
    /// System health: observers (backlog, oldest undelivered, leader and lease, dead letters,
    /// parked pairs, open breakers, last error), workers and their heartbeats, circuit breakers,
    /// and the problems found (no leader, no running worker, dead letters, ...).
    Status {
        /// Take the database URL from this configuration file if --database-url / DATABASE_URL is not set.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// For scripts and monitors: exit 4 when a problem of severity `error` is found (a group
        /// without leader or running worker, ...); warnings alone still exit 0.
        #[arg(long)]
        check: bool,
    },
    /// Trace one event end to end: the event, which observers matched, every attempt, dead
    /// letters, parked pairs and deduplication state (exit 3 if nothing is known about it).
    DebugEvent {
        /// The event id (`id` in the webhook body, `evt_<installation>_<ID>_<action>` in the webhook-id).
        #[arg(value_name = "ID")]
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Dead-letter queue: list, show, retry, retry-all, purge, stats.
    Dlq {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Deliver an observer's past events (ids FROM..=TO) again, with their original webhook-ids.
    Replay {
        /// The observer whose events to deliver again.
        #[arg(value_name = "OBSERVER")]
        observer: String,
        /// First event id (inclusive).
        #[arg(long, value_name = "ID")]
        from: i64,
        /// Last event id (inclusive).
        #[arg(long, value_name = "ID")]
        to: i64,
        /// Deliver even pairs that deduplication recorded as already delivered.
        #[arg(long)]
        force: bool,
        /// Only count the pairs that would be queued (nothing is changed).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// A group's delivery cursor (checkpoint): show it with its backlog, or skip the backlog
    /// after an incident (dry run first; the skipped events stay replayable with `replay`).
    Checkpoint {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// The job queue (docs/JOBS.md): list, show, retry, cancel, stats.
    Jobs {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Search the audit trail (PostgreSQL, observers.search_doc): events newest first, or counts
    /// by a facet (--facet) or per minute/hour/day (--timeseries). Needs the index to be filled
    /// (`search: enabled` in the worker's file, or `SELECT observers.search_index()`).
    Search {
        #[command(flatten)]
        args: SearchArgs,
        #[command(flatten)]
        db: DbArgs,
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

/// Where an operator command finds the database: --database-url / DATABASE_URL, else the
/// `database.url` of this configuration file.
#[derive(Debug, Clone, Default, Args)]
pub struct DbArgs {
    /// Take the database URL from this configuration file if --database-url / DATABASE_URL is not set.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

/// Filters of `dlq list`, `dlq retry-all` and `dlq purge`. Times are RFC 3339
/// (`2026-05-01T10:00:00Z`, `2026-05-01T12:00:00+02:00`, `2026-05-01`) or a duration ago (`1h`, `30m`, `2d`).
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilterArgs {
    /// Only this observer's dead letters.
    #[arg(long, value_name = "NAME")]
    pub observer: Option<String>,
    /// Only dead letters created at or after this time (RFC 3339, or a duration ago: `1h`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only dead letters created before this time (RFC 3339, or a duration ago: `30m`).
    #[arg(long, value_name = "TIME")]
    pub before: Option<String>,
    /// Only dead letters whose error contains this text (case-insensitive).
    #[arg(long = "error", value_name = "TEXT")]
    pub error_contains: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// At most this many entries.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: i32,
    },
    /// One dead letter with its payload.
    Show {
        #[arg(value_name = "ID")]
        id: i64,
    },
    /// Queue one dead letter for redelivery (same webhook-id). It leaves the DLQ only when the
    /// delivery succeeds.
    Retry {
        #[arg(value_name = "ID")]
        id: i64,
        /// Only say whether it would be queued.
        #[arg(long)]
        dry_run: bool,
    },
    /// Queue every matching dead letter for redelivery (all of them without filters).
    RetryAll {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Only count the entries that would be queued.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters. Refuses without a filter, --id or --all.
    Purge {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// Delete this entry (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<i64>,
        /// Delete every dead letter.
        #[arg(long)]
        all: bool,
        /// Only count the entries that would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Dead letters per observer: count, pending retries, oldest, newest, last error.
    Stats,
}

/// What `search` looks for. Times are RFC 3339 or a duration ago (`1h`, `30m`, `2d`).
#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    /// Words to find in the payload's values (websearch syntax: refund, "exact phrase", a -b, a or b).
    #[arg(value_name = "TEXT")]
    pub text: Option<String>,
    /// Only events of this table (schema.table; a bare name means public.name).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// Only events of this observer.
    #[arg(long, value_name = "NAME")]
    pub observer: Option<String>,
    /// Only INSERT, UPDATE or DELETE events.
    #[arg(long, value_name = "OP")]
    pub op: Option<String>,
    /// Only events captured at or after this time (RFC 3339, or a duration ago: `1h`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events captured before this time (RFC 3339, or a duration ago: `30m`).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// A field equal to a value, compared as text (`new.customer_id=42`, `old.status=paid`,
    /// `new.note=null`); repeatable, all must match.
    #[arg(long = "field", value_name = "PATH=VALUE")]
    pub fields: Vec<String>,
    /// At most this many events (or facet values).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: i32,
    /// Continue after the previous page (the token printed under it).
    #[arg(long, value_name = "TOKEN")]
    pub page: Option<String>,
    /// Count the matching events by table, op, observer or a field path (new.status).
    #[arg(long, value_name = "FACET")]
    pub facet: Option<String>,
    /// Count the matching events per minute, hour or day (UTC).
    #[arg(long, value_name = "BUCKET")]
    pub timeseries: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first (unfinished and retained finished ones).
    List {
        /// available, scheduled, running, retryable, completed, discarded or cancelled.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        #[arg(long, value_name = "OBSERVER")]
        observer: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: i32,
    },
    /// One job with its body (exit 3 if it does not exist).
    Show {
        #[arg(value_name = "ID")]
        id: i64,
    },
    /// Run a scheduled or retryable job now, or a discarded or cancelled one again.
    Retry {
        #[arg(value_name = "ID")]
        id: i64,
    },
    /// Cancel a job that is not running.
    Cancel {
        #[arg(value_name = "ID")]
        id: i64,
    },
    /// Jobs per group and queue by state, and the oldest due job's age.
    Stats,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Every group's cursor (snapshots, open batch, epoch), backlog and oldest undelivered event.
    Show {
        /// Only this group.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Skip a group's backlog: every event committed so far counts as delivered. Prints, per
    /// observer, how many events and which id range (replayable with `replay`). Needs --yes
    /// unless --dry-run.
    Skip {
        /// The worker group whose backlog to skip.
        #[arg(long, value_name = "GROUP")]
        group: String,
        /// Only report what would be skipped (nothing is changed).
        #[arg(long)]
        dry_run: bool,
        /// Confirm the skip (required without --dry-run: there is no interactive prompt).
        #[arg(long)]
        yes: bool,
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
        // SPEC §3's spelling
        let cli = Cli::try_parse_from([
            "fraiseql-observers",
            "validate-config",
            "f.yaml",
            "--database",
            "postgres://h/db",
        ])
        .unwrap();
        assert_eq!(cli.database_url.as_deref(), Some("postgres://h/db"));
    }
    #[test]
    fn operator_commands_parse() {
        let cli = Cli::try_parse_from([
            "fraiseql-observers",
            "dlq",
            "purge",
            "--id",
            "3",
            "--id",
            "4",
            "--observer",
            "orders",
            "--since",
            "1h",
            "--dry-run",
        ])
        .unwrap();
        match cli.command {
            Command::Dlq {
                command:
                    DlqCommand::Purge {
                        filter,
                        ids,
                        all,
                        dry_run,
                    },
                ..
            } => {
                assert_eq!(ids, [3, 4]);
                assert_eq!(filter.observer.as_deref(), Some("orders"));
                assert_eq!(filter.since.as_deref(), Some("1h"));
                assert!(!all && dry_run);
            }
            other => panic!("{other:?}"),
        }
        // -c works before and after the dlq subcommand
        for args in [
            ["fraiseql-observers", "dlq", "-c", "f.yaml", "stats"],
            ["fraiseql-observers", "dlq", "stats", "-c", "f.yaml"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            match cli.command {
                Command::Dlq { db, command } => {
                    assert_eq!(db.config, Some(PathBuf::from("f.yaml")));
                    assert!(matches!(command, DlqCommand::Stats));
                }
                other => panic!("{other:?}"),
            }
        }
        let cli = Cli::try_parse_from([
            "fraiseql-observers",
            "replay",
            "orders",
            "--from",
            "10",
            "--to",
            "20",
            "--force",
            "--format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.format, Format::Json);
        assert!(matches!(
            cli.command,
            Command::Replay {
                from: 10,
                to: 20,
                force: true,
                dry_run: false,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["fraiseql-observers", "dlq", "list"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq {
                command: DlqCommand::List { limit: 100, .. },
                ..
            }
        ));
        assert!(Cli::try_parse_from(["fraiseql-observers", "debug-event", "x"]).is_err());
        assert!(Cli::try_parse_from(["fraiseql-observers", "replay", "o", "--from", "1"]).is_err());
    }
}
