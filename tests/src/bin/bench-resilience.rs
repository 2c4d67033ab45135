//! `bench-resilience`: what deduplication and circuit breakers cost (used by `make bench`).
//!
//! Runs against an existing cluster where `pg_observers` is installed (one fresh database per
//! run, dropped afterwards), the real worker binary, in-process receivers and a private
//! `redis-server`. Everything is measured side by side in one run, in rounds that alternate the
//! variants, and reported as the median over rounds plus the ratio to the baseline of the same
//! run:
//!
//! 1. **dedup drain**: a backlog of N events (1,000-row transactions) drained with
//!    deduplication off / `backend: redis` / `backend: postgres`.
//! 2. **breaker isolation**: N events for destination A interleaved with N events for
//!    destination B, where B is (a) healthy too, or (b) answering 503 (its breaker opens and its
//!    pairs are parked). Reported: A's drain rate in both (same outbox, same events; only B's
//!    health differs).
//!
//! Prints a table and one JSON line starting with `{"bench":"resilience"`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use observers_tests::cluster::{connect, with_database};
use observers_tests::receiver::{Receiver, ReceiverOptions, Reply};
use observers_tests::util::wait_observer_ready;
use observers_tests::worker::Worker;
use observers_tests::RedisServer;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bench-resilience",
    version,
    about = "Drain rate with dedup off/redis/postgres; healthy drain rate beside an open breaker"
)]
struct Args {
    /// Superuser URL of a running cluster with pg_observers installed (any database).
    #[arg(long, env = "BENCH_PGURL")]
    pgurl: String,

    /// The fraiseql-observers binary to run.
    #[arg(long, env = "FRAISEQL_OBSERVERS_BIN")]
    worker_bin: PathBuf,

    /// Events per drain.
    #[arg(long, default_value_t = 30_000)]
    events: u64,

    /// Rounds (each runs every variant once, in alternating order).
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Worker `concurrent_execution.max_in_flight`.
    #[arg(long, default_value_t = 256)]
    max_in_flight: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.worker_bin.is_file() {
        bail!(
            "worker binary {} not found: build it first (`cargo build --release -p observer-worker`)",
            args.worker_bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

const HEAD: &str = "database:\n  url: ${DATABASE_URL}\n\
    retry: { max_attempts: 1000, initial_backoff: 100ms, max_backoff: 2s }\n\
    metrics: disabled\n";

fn observer(name: &str, url: &str) -> String {
    format!(
        "  - name: {name}\n    table: public.{name}\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {url}\n        timeout: 10s\n"
    )
}

/// One measured drain: a fresh database and a fresh receiver for the healthy destination
/// (`/healthy`; webhook-ids repeat across databases), the observers' tables written
/// (interleaved per transaction), the worker started with `extra` config, timed until the
/// receiver has every event.
struct Drain<'a> {
    args: &'a Args,
    extra: String,
    /// `worker.attempt_log` (every attempt written to observers.attempt).
    attempt_log: bool,
    /// Observers (table name, YAML) given the healthy receiver's URL.
    observers: &'a dyn Fn(&str) -> Vec<(&'static str, String)>,
}

async fn drain(d: &Drain<'_>, tag: &str) -> anyhow::Result<f64> {
    let args = d.args;
    let rx = Receiver::start_with(ReceiverOptions {
        keep_deliveries: false,
        ..Default::default()
    })
    .await?;
    let observers = (d.observers)(&rx.url("/healthy"));
    let rx = &rx;
    let admin = connect(&args.pgurl).await.context("connect")?;
    let db_name = format!("bench_res_{}_{}", std::process::id(), tag);
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await?;
    let url = with_database(&args.pgurl, &db_name);
    let result = async {
        let client = connect(&url).await?;
        client.batch_execute("CREATE EXTENSION pg_observers").await?;
        for (name, _) in &observers {
            client
                .batch_execute(&format!(
                    "CREATE TABLE public.{name} (id bigserial PRIMARY KEY, account int, note text)"
                ))
                .await?;
        }
        let yaml = format!(
            "{HEAD}worker:\n  id: bench-resilience\n  group: default\n  batch_size: 1000\n  poll_interval: 1s\n  shutdown_timeout: 30s\n  attempt_log: {}\n\
             concurrent_execution: {{ enabled: true, max_in_flight: {} }}\n{}observers:\n{}",
            d.attempt_log,
            args.max_in_flight,
            d.extra,
            observers.iter().map(|(_, o)| o.as_str()).collect::<String>()
        );
        let env = [("DATABASE_URL", url.as_str())];
        let mut worker = Worker::start_bin(args.worker_bin.clone(), &format!("bench-res-{tag}"), &yaml, &env);
        for (name, _) in &observers {
            wait_observer_ready(&client, name, &format!("public.{name}"), Duration::from_secs(60)).await;
        }
        worker.stop(Duration::from_secs(60)).await;
        // the backlog, 1,000 rows per table per transaction
        let per = 1_000u64;
        let mut written = 0;
        while written < args.events {
            let rows = per.min(args.events - written);
            let mut sql = String::from("BEGIN;");
            for (name, _) in &observers {
                sql.push_str(&format!(
                    "INSERT INTO public.{name} (account, note) SELECT g % 1000, 'row ' || g FROM generate_series({}, {}) g;",
                    written,
                    written + rows - 1
                ));
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await?;
            written += rows;
        }
        let t0 = Instant::now();
        worker.restart();
        let target = args.events as usize;
        let ok = rx
            .wait_until(Duration::from_secs(600), |rx| {
                rx.unique_count_for("/healthy") >= target
            })
            .await;
        let secs = t0.elapsed().as_secs_f64();
        if !ok {
            worker.dump_log();
            bail!("{tag}: drain did not finish: {}", rx.summary());
        }
        worker.stop(Duration::from_secs(60)).await;
        Ok(args.events as f64 / secs)
    }
    .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await;
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let redis = RedisServer::start();
    let other = Receiver::start_with(ReceiverOptions {
        keep_deliveries: false,
        ..Default::default()
    })
    .await?;
    let down = Receiver::start_with(ReceiverOptions {
        keep_deliveries: false,
        default_reply: Some(Reply::status(503)),
        ..Default::default()
    })
    .await?;

    println!();
    println!(
        "{:<52} {:>12} {:>8}",
        "resilience benchmark (median of rounds)", "events/s", "ratio"
    );
    println!("{}", "-".repeat(74));

    // 1. dedup drain
    // (name, extra config, attempt log): the baseline is the plain path with the attempt log on
    // (the default); "off, no attempt log" shows what the attempt log costs
    let variants: Vec<(&str, String, bool)> = vec![
        ("off", "deduplication: disabled\n".to_owned(), true),
        (
            "off, no attempt log",
            "deduplication: disabled\n".to_owned(),
            false,
        ),
        (
            "redis",
            format!(
                "deduplication: {{ backend: redis, ttl: 1h }}\nredis: {{ url: \"{}\" }}\n",
                redis.url()
            ),
            true,
        ),
        (
            "redis, no attempt log",
            format!(
                "deduplication: {{ backend: redis, ttl: 1h }}\nredis: {{ url: \"{}\" }}\n",
                redis.url()
            ),
            false,
        ),
        (
            "postgres",
            "deduplication: { backend: postgres, ttl: 1h }\n".to_owned(),
            true,
        ),
    ];
    let mut rates: Vec<Vec<f64>> = vec![vec![]; variants.len()];
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let i = if round % 2 == 0 {
                k
            } else {
                variants.len() - 1 - k
            };
            let (name, extra, attempt_log) = &variants[i];
            let d = Drain {
                args: &args,
                extra: extra.clone(),
                attempt_log: *attempt_log,
                observers: &|url| vec![("bench_orders", observer("bench_orders", url))],
            };
            let r = drain(&d, &format!("dedup_{i}_{round}")).await?;
            eprintln!("  round {round}: dedup {name}: {r:.0} events/s");
            rates[i].push(r);
        }
    }
    let base = median(rates[0].clone());
    let mut report = json!({"bench": "resilience", "events": args.events, "rounds": args.rounds});
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let m = median(rates[i].clone());
        println!(
            "{:<52} {:>12.0} {:>8.2}",
            format!("drain, deduplication {name}"),
            m,
            m / base
        );
        let key = name.replace(", ", "_").replace(' ', "_");
        report[format!("dedup_{key}_events_per_s")] = json!(m.round());
        report[format!("dedup_{key}_ratio")] = json!(((m / base) * 1000.0).round() / 1000.0);
    }

    // 2. breaker isolation
    let breaker = "circuit_breaker: { failure_ratio: 0.5, min_requests: 20, open_for: 30s, half_open_requests: 3 }\n";
    let mut b_healthy = vec![];
    let mut b_down = vec![];
    for round in 0..args.rounds {
        for k in 0..2 {
            let with_down = (round + k) % 2 == 1;
            let other_url = if with_down {
                down.url("/down")
            } else {
                other.url("/other")
            };
            let observers = move |url: &str| {
                vec![
                    ("bench_healthy", observer("bench_healthy", url)),
                    ("bench_other", observer("bench_other", &other_url)),
                ]
            };
            let d = Drain {
                args: &args,
                extra: breaker.to_owned(),
                attempt_log: true,
                observers: &observers,
            };
            let r = drain(&d, &format!("breaker_{round}_{with_down}")).await?;
            eprintln!(
                "  round {round}: destination A beside {}: {r:.0} events/s",
                if with_down {
                    "a dead B (breaker open)"
                } else {
                    "a healthy B"
                }
            );
            if with_down {
                b_down.push(r)
            } else {
                b_healthy.push(r)
            }
        }
    }
    let a = median(b_healthy);
    let b = median(b_down);
    println!(
        "{:<52} {:>12.0} {:>8.2}",
        "destination A, B healthy", a, 1.0
    );
    println!(
        "{:<52} {:>12.0} {:>8.2}",
        "destination A, B down (breaker open, pairs parked)",
        b,
        b / a
    );
    println!(
        "{:<52} {:>21}",
        "  requests that reached the dead destination",
        down.count()
    );
    report["breaker_b_healthy_events_per_s"] = json!(a.round());
    report["breaker_b_down_events_per_s"] = json!(b.round());
    report["breaker_ratio"] = json!(((b / a) * 1000.0).round() / 1000.0);
    report["dead_destination_requests"] = json!(down.count());
    println!("{}", "-".repeat(74));
    println!("{report}");
    down.shutdown().await;
    other.shutdown().await;
    drop(redis);
    Ok(())
}
