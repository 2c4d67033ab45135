//! `bench-e2e`: end-to-end benchmark of FraiseQL Observers (used by `make bench`).
//!
//! Runs against an existing cluster where `pg_observers` is installed (it creates and drops its
//! own database), the real worker binary, and an in-process webhook receiver that answers 200
//! at once. Two measurements:
//!
//! 1. **drain**: a backlog of N events (default 100,000; 1,000-row transactions) is written
//!    while the worker is stopped; then the worker starts and we time until the receiver has
//!    every event. Reported from worker start (includes start-up) and from first to last
//!    delivery, plus duplicate deliveries (expected 0).
//! 2. **latency**: with the worker running, writers insert 1-row transactions at a steady rate
//!    (default 1,000/s for 15 s, shared by 16 connections). Latency of an event = time the receiver got the request -
//!    time the writer's COMMIT returned (both clocks are this process's). p50/p95/p99/max.
//!
//! Prints a table and one machine-readable JSON line starting with `{"bench":"e2e"`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use observers_tests::cluster::{connect, with_database};
use observers_tests::receiver::{Receiver, ReceiverOptions};
use observers_tests::util::wait_observer_ready;
use observers_tests::worker::Worker;
use parking_lot::Mutex;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bench-e2e",
    version,
    about = "End-to-end benchmark: backlog drain rate and commit-to-delivery latency"
)]
struct Args {
    /// Superuser URL of a running cluster with pg_observers installed (any database).
    #[arg(long, env = "BENCH_PGURL")]
    pgurl: String,

    /// The fraiseql-observers binary to run.
    #[arg(long, env = "FRAISEQL_OBSERVERS_BIN")]
    worker_bin: PathBuf,

    /// Events in the drain backlog.
    #[arg(long, default_value_t = 100_000)]
    events: u64,

    /// Rows per transaction when writing the backlog.
    #[arg(long, default_value_t = 1_000)]
    backlog_txn_rows: u64,

    /// Steady write rate of the latency phase (1-row transactions per second).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,

    /// Length of the latency phase.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Writer connections sharing the steady rate (enough that commit latency with fsync on
    /// does not hold the rate back).
    #[arg(long, default_value_t = 16)]
    writers: u64,

    /// Worker `concurrent_execution.max_in_flight`.
    #[arg(long, default_value_t = 256)]
    max_in_flight: u32,

    /// Worker `worker.batch_size`.
    #[arg(long, default_value_t = 1_000)]
    batch_size: u32,

    /// Skip the drain phase.
    #[arg(long)]
    skip_drain: bool,

    /// Skip the latency phase.
    #[arg(long)]
    skip_latency: bool,

    /// Write one CSV line per latency event (row id, commit, receive, as unix seconds) to FILE.
    #[arg(long, value_name = "FILE")]
    latency_csv: Option<PathBuf>,

    /// Keep the benchmark database afterwards.
    #[arg(long)]
    keep_db: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.worker_bin.is_file() {
        bail!(
            "worker binary {} not found: build it first (`cargo build --release -p observer-worker`)",
            args.worker_bin.display()
        );
    }
    if args.rate == 0 || args.writers == 0 {
        bail!("--rate and --writers must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn worker_yaml(args: &Args, rx: &Receiver) -> String {
    format!(
        "database:\n  url: ${{DATABASE_URL}}\n\
         worker:\n  id: bench-worker\n  group: default\n  batch_size: {batch}\n  poll_interval: 1s\n  shutdown_timeout: 30s\n\
         retry: {{ max_attempts: 5, initial_backoff: 100ms, max_backoff: 2s }}\n\
         concurrent_execution: {{ enabled: true, max_in_flight: {mif} }}\n\
         metrics: disabled\n\
         observers:\n\
         \x20 - name: bench_backlog\n    table: public.bench_backlog\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {drain}\n        timeout: 10s\n\
         \x20 - name: bench_latency\n    table: public.bench_latency\n    events: [INSERT]\n    actions:\n      - type: webhook\n        url: {lat}\n        timeout: 10s\n",
        batch = args.batch_size,
        mif = args.max_in_flight,
        drain = rx.url("/bench/drain"),
        lat = rx.url("/bench/latency"),
    )
}

async fn run(args: Args) -> anyhow::Result<()> {
    let db_name = format!("bench_e2e_{}", std::process::id());
    let admin = connect(&args.pgurl)
        .await
        .with_context(|| format!("cannot connect to {}", args.pgurl))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .context("CREATE DATABASE")?;
    let url = with_database(&args.pgurl, &db_name);
    let result = bench(&args, &url).await;
    if args.keep_db {
        eprintln!("database kept: {url}");
    } else if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await
    {
        eprintln!("warning: could not drop {db_name}: {e}");
    }
    result
}

async fn bench(args: &Args, url: &str) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(
            "CREATE EXTENSION pg_observers;
             CREATE TABLE public.bench_backlog (id bigserial PRIMARY KEY, account int NOT NULL, amount numeric(12,2) NOT NULL, note text);
             CREATE TABLE public.bench_latency (id bigserial PRIMARY KEY, account int NOT NULL, amount numeric(12,2) NOT NULL, note text);",
        )
        .await
        .context("set up the benchmark database (is pg_observers installed?)")?;
    let rx = Receiver::start_with(ReceiverOptions {
        keep_deliveries: true,
        ..Default::default()
    })
    .await?;
    let yaml = worker_yaml(args, &rx);
    let env = [("DATABASE_URL", url)];

    // Register the observers (the worker applies its YAML at start), then stop it.
    let mut worker = Worker::start_bin(args.worker_bin.clone(), "bench-e2e", &yaml, &env);
    eprintln!("worker log: {}", worker.log_path().display());
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        wait_observer_ready(
            &client,
            "bench_backlog",
            "public.bench_backlog",
            Duration::from_secs(60),
        )
        .await;
        wait_observer_ready(
            &client,
            "bench_latency",
            "public.bench_latency",
            Duration::from_secs(60),
        )
        .await;
    })
    .await;
    if ready.is_err() {
        worker.dump_log();
        bail!("the worker did not register the benchmark observers");
    }

    let mut report = json!({"bench": "e2e"});
    println!();
    println!("{:<44} {:>14}", "end-to-end benchmark", "value");
    println!("{}", "-".repeat(59));

    if !args.skip_drain {
        worker.stop(Duration::from_secs(60)).await;
        let drain = drain(args, &client, &rx, &mut worker).await?;
        report["drain"] = drain;
    }
    if !args.skip_latency {
        if !worker.is_running() {
            worker.restart();
        }
        // Latency depends on how much the outbox retains (it is only dropped by retention):
        // report it next to the numbers.
        let retained: i64 = client
            .query_one("SELECT count(*) FROM observers.event", &[])
            .await?
            .get(0);
        let mut lat = latency(args, url, &rx).await?;
        lat["outbox_rows_at_start"] = json!(retained);
        println!("{:<44} {:>14}", "  outbox rows retained at start", retained);
        report["latency"] = lat;
    }
    let st = worker.stop(Duration::from_secs(60)).await;
    if st.code() != Some(0) {
        eprintln!("warning: worker exited with {st}");
    }
    rx.shutdown().await;
    println!("{}", "-".repeat(59));
    println!("{report}");
    Ok(())
}

async fn drain(
    args: &Args,
    client: &tokio_postgres::Client,
    rx: &Receiver,
    worker: &mut Worker,
) -> anyhow::Result<serde_json::Value> {
    let n = args.events;
    let per = args.backlog_txn_rows.max(1);
    let t = Instant::now();
    let mut written = 0u64;
    while written < n {
        let rows = per.min(n - written);
        client
            .execute(
                "INSERT INTO public.bench_backlog (account, amount, note)
                 SELECT g % 1000, (g % 10000) / 100.0, 'backlog row ' || g FROM generate_series($1::bigint, $2::bigint) g",
                &[&(written as i64), &((written + rows - 1) as i64)],
            )
            .await?;
        written += rows;
    }
    let write_s = t.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>14}",
        format!("backlog written ({per}-row txns)"),
        format!("{n} events")
    );
    println!("{:<44} {:>14.1}", "  write time (s)", write_s);

    let base_count = rx.count();
    let started = SystemTime::now();
    let t0 = Instant::now();
    worker.restart();
    let timeout = Duration::from_secs(600);
    let ok = rx
        .wait_until(timeout, |rx| {
            rx.unique_count_for("/bench/drain") >= n as usize
        })
        .await;
    let total_s = t0.elapsed().as_secs_f64();
    if !ok {
        worker.dump_log();
        bail!("drain did not finish within {timeout:?}: {}", rx.summary());
    }
    let d = rx.deliveries_for("/bench/drain");
    let requests = rx.count() - base_count;
    let first = d.iter().map(|x| x.received_at).min().unwrap_or(started);
    let last = d.iter().map(|x| x.received_at).max().unwrap_or(started);
    let active_s = last
        .duration_since(first)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-9);
    let startup_s = first
        .duration_since(started)
        .unwrap_or_default()
        .as_secs_f64();
    let unique: std::collections::HashSet<&str> =
        d.iter().filter_map(|x| x.webhook_id.as_deref()).collect();
    let duplicates = d.len() - unique.len();
    let rate_total = n as f64 / total_s;
    let rate_active = n as f64 / active_s;
    println!(
        "{:<44} {:>14.0}",
        "drain rate, from worker start (events/s)", rate_total
    );
    println!(
        "{:<44} {:>14.0}",
        "drain rate, first to last delivery (events/s)", rate_active
    );
    println!(
        "{:<44} {:>14.2}",
        "  worker start to first delivery (s)", startup_s
    );
    println!("{:<44} {:>14}", "  duplicate deliveries", duplicates);
    Ok(json!({
        "events": n,
        "requests": requests,
        "unique": unique.len(),
        "duplicates": duplicates,
        "seconds_from_start": round3(total_s),
        "seconds_first_to_last": round3(active_s),
        "startup_seconds": round3(startup_s),
        "events_per_s": rate_total.round(),
        "events_per_s_active": rate_active.round(),
        "max_in_flight": args.max_in_flight,
        "batch_size": args.batch_size,
    }))
}

async fn latency(args: &Args, url: &str, rx: &Receiver) -> anyhow::Result<serde_json::Value> {
    let commits: Arc<Mutex<HashMap<i64, SystemTime>>> = Arc::new(Mutex::new(HashMap::new()));
    let per_writer_period = Duration::from_secs_f64(args.writers as f64 / args.rate as f64);
    let total = (args.rate as f64 * args.duration.as_secs_f64()).round() as u64;
    let t0 = Instant::now() + Duration::from_millis(200);
    let mut tasks = vec![];
    for w in 0..args.writers {
        let c = connect(url).await?;
        let commits = commits.clone();
        let my_total = total / args.writers + u64::from(w < total % args.writers);
        // Writers are staggered so that together they write every 1/rate seconds.
        let offset = Duration::from_secs_f64(w as f64 / args.rate as f64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at((t0 + offset).into(), per_writer_period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..my_total {
                tick.tick().await;
                let row = c
                    .query_one(
                        "INSERT INTO public.bench_latency (account, amount, note) VALUES ($1, $2::float8::numeric, 'latency') RETURNING id",
                        &[&((i % 1000) as i32), &((i % 10000) as f64 / 100.0)],
                    )
                    .await?;
                let committed = SystemTime::now();
                commits.lock().insert(row.get::<_, i64>(0), committed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let write_s = (Instant::now() - t0).as_secs_f64();
    let written = commits.lock().len();
    let ok = rx
        .wait_until(Duration::from_secs(120), |rx| {
            rx.unique_count_for("/bench/latency") >= written
        })
        .await;
    if !ok {
        bail!(
            "latency phase: not every event was delivered within 120 s: {}",
            rx.summary()
        );
    }
    let commits = commits.lock().clone();
    let mut lat_ms: Vec<f64> = vec![];
    let mut seen = std::collections::HashSet::new();
    let mut negative = 0u64;
    let mut csv = String::from("row_id,committed_unix_s,received_unix_s\n");
    for d in rx.deliveries_for("/bench/latency") {
        let Some(row_id) = d.body.as_ref().and_then(|b| b["new"]["id"].as_i64()) else {
            continue;
        };
        if !seen.insert(row_id) {
            continue;
        }
        let Some(c) = commits.get(&row_id) else {
            continue;
        };
        if args.latency_csv.is_some() {
            let unix = |t: SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            };
            csv.push_str(&format!(
                "{row_id},{:.6},{:.6}\n",
                unix(*c),
                unix(d.received_at)
            ));
        }
        match d.received_at.duration_since(*c) {
            Ok(dt) => lat_ms.push(dt.as_secs_f64() * 1e3),
            // The receiver can get the request before the writer's COMMIT reply arrives.
            Err(_) => {
                negative += 1;
                lat_ms.push(0.0);
            }
        }
    }
    if let Some(path) = &args.latency_csv {
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))?;
    }
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if lat_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (lat_ms.len() - 1) as f64).round() as usize;
        lat_ms[i.min(lat_ms.len() - 1)]
    };
    let achieved = written as f64 / write_s;
    let (p50, p95, p99, max) = (
        pct(50.0),
        pct(95.0),
        pct(99.0),
        lat_ms.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "{:<44} {:>14}",
        format!("latency: steady writes ({} writers)", args.writers),
        format!("{achieved:.0}/s x {:.0}s", write_s)
    );
    println!("{:<44} {:>14.1}", "  commit -> delivery p50 (ms)", p50);
    println!("{:<44} {:>14.1}", "  commit -> delivery p95 (ms)", p95);
    println!("{:<44} {:>14.1}", "  commit -> delivery p99 (ms)", p99);
    println!("{:<44} {:>14.1}", "  commit -> delivery max (ms)", max);
    Ok(json!({
        "target_rate": args.rate,
        "achieved_rate": achieved.round(),
        "events": written,
        "measured": lat_ms.len(),
        "delivered_before_commit_ack": negative,
        "p50_ms": round3(p50),
        "p95_ms": round3(p95),
        "p99_ms": round3(p99),
        "max_ms": round3(max),
        "clock": "receiver receive time minus writer COMMIT-return time (same process)",
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
