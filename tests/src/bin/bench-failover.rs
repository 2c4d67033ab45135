//! `bench-failover`: how long a group goes without a leader (used by `make bench`).
//!
//! Three workers of one group (the real release binary, deduplication on, `lease_ttl: 3s`), a
//! writer streaming 10-row transactions (~1,000 events/s), an in-process receiver. The current
//! leader is killed with SIGKILL `--kills` times at random moments (a fresh worker replaces each),
//! then stopped with SIGTERM `--sigterms` times. For each disruption:
//! * **handover**: from the signal until another worker holds the lease (`observers.leader_lease`,
//!   polled every 10 ms);
//! * **delivery gap**: the longest silence the receiver saw, from its last request before the
//!   signal to the first pair delivered for the first time after the takeover;
//! * **repeated**: pairs delivered again (in flight at the kill).
//!
//! Prints median and worst per kind and one JSON line starting with `{"bench":"failover"`.
//! Nothing here is a pass/fail threshold; the end-to-end chaos test checks the guarantees.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;
use observers_tests::chaos::{
    lease_holder, median_and_worst, wait_new_leader, what_the_receiver_saw, StreamWriter,
};
use observers_tests::cluster::{connect, with_database};
use observers_tests::receiver::{Receiver, Reply};
use observers_tests::util::{config_head, status_sum, wait_observer_ready};
use observers_tests::worker::Worker;
use rand::Rng;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bench-failover",
    version,
    about = "Handover time and delivery gap after kill -9 and SIGTERM of the leader"
)]
struct Args {
    /// Superuser URL of a running cluster with pg_observers installed (any database).
    #[arg(long, env = "BENCH_PGURL")]
    pgurl: String,

    /// The fraiseql-observers binary to run.
    #[arg(long, env = "FRAISEQL_OBSERVERS_BIN")]
    worker_bin: PathBuf,

    /// kill -9s of the leader.
    #[arg(long, default_value_t = 12)]
    kills: usize,

    /// SIGTERM handovers after the kills.
    #[arg(long, default_value_t = 3)]
    sigterms: usize,
}

const GROUP: &str = "default";
const WAIT: Duration = Duration::from_secs(60);

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

struct Pool<'a> {
    args: &'a Args,
    url: String,
    yaml_tail: String,
    next: usize,
    workers: Vec<(String, Worker)>,
}

impl Pool<'_> {
    /// Starts workers until there are three, each waiting until it leads or stands by.
    async fn fill(&mut self) -> anyhow::Result<()> {
        while self.workers.len() < 3 {
            let id = format!("bench-fo-{}", self.next);
            self.next += 1;
            let yaml = format!("{}{}", config_head(&id), self.yaml_tail);
            let w = Worker::start_bin(
                self.args.worker_bin.clone(),
                &id,
                &yaml,
                &[("DATABASE_URL", self.url.as_str())],
            );
            if !w
                .wait_for_log_where(WAIT, |l| {
                    l.contains("standby") || l.contains("leader lease acquired")
                })
                .await
            {
                w.dump_log();
                bail!("worker {id} neither leads nor stands by");
            }
            self.workers.push((id, w));
        }
        Ok(())
    }

    fn take(&mut self, id: &str) -> Worker {
        let i = self.workers.iter().position(|(w, _)| w == id).unwrap();
        self.workers.remove(i).1
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let admin = connect(&args.pgurl).await.context("connect")?;
    let db_name = format!("bench_failover_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await?;
    let url = with_database(&args.pgurl, &db_name);
    let result = measure(&args, &url).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await?;
    result
}

async fn measure(args: &Args, url: &str) -> anyhow::Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(
            "CREATE EXTENSION pg_observers; CREATE TABLE public.orders (id bigserial PRIMARY KEY, n int)",
        )
        .await?;
    let rx = Receiver::start().await?;
    rx.set_default("/orders", Reply::ok());
    let mut pool = Pool {
        args,
        url: url.to_owned(),
        yaml_tail: format!(
            "metrics: disabled\n\
             failover: {{ enabled: true, lease_ttl: 3s, standby_poll: 250ms }}\n\
             concurrent_execution: {{ enabled: true, max_in_flight: 32 }}\n\
             deduplication: {{ backend: postgres, ttl: 1h }}\n\
             observers:\n  - name: orders\n    table: public.orders\n    events: [INSERT]\n    actions:\n      \
             - type: webhook\n        url: {}\n        timeout: 5s\n        retry: {{ max_attempts: 50, initial_backoff: 100ms, max_backoff: 1s }}\n",
            rx.url("/orders")
        ),
        next: 0,
        workers: vec![],
    };
    pool.fill().await?;
    wait_observer_ready(&client, "orders", "public.orders", WAIT).await;
    let writer = StreamWriter::start(
        url.to_owned(),
        "public.orders",
        10,
        Duration::from_millis(8),
        0,
    );

    // (kind, signal time, handover)
    let mut events: Vec<(&str, SystemTime, Duration)> = vec![];
    for k in 0..args.kills + args.sigterms {
        let seen = rx.unique_count();
        if !rx
            .wait_until(WAIT, |rx| rx.unique_count() >= seen + 300)
            .await
        {
            bail!("nothing delivered before disruption {k}: {}", rx.summary());
        }
        let pause = rand::rng().random_range(0..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (leader, epoch) = lease_holder(url, GROUP)
            .await
            .context("nobody holds the lease")?;
        let mut w = pool.take(&leader);
        let kind = if k < args.kills { "kill -9" } else { "SIGTERM" };
        let at = SystemTime::now();
        let t = Instant::now();
        if k < args.kills {
            w.kill9();
        } else {
            w.sigterm();
        }
        if wait_new_leader(url, GROUP, &leader, epoch, WAIT)
            .await
            .is_none()
        {
            bail!("nobody took over from {leader} after {kind}");
        }
        let took = t.elapsed();
        events.push((kind, at, took));
        if k >= args.kills {
            w.wait_exit(WAIT).await;
        }
        drop(w);
        pool.fill().await?;
    }
    writer.finish().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM public.orders", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + WAIT;
    while (status_sum(&client, "backlog").await > 0 || (rx.unique_count() as i64) < rows)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered = rx.unique_count() as i64;
    for (_, mut w) in pool.workers.drain(..) {
        w.stop(WAIT).await;
    }

    let at: Vec<_> = events.iter().map(|(_, t, h)| (*t, *h)).collect();
    let (seen, _) =
        what_the_receiver_saw(&rx.deliveries_for("/orders"), &at, Duration::from_secs(5));
    println!();
    println!(
        "{:<34} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "failover (3 workers, lease_ttl 3s)",
        "count",
        "handover",
        "worst",
        "gap",
        "worst",
        "repeated"
    );
    println!("{}", "-".repeat(96));
    let mut report = serde_json::Map::new();
    for kind in ["kill -9", "SIGTERM"] {
        let idx: Vec<usize> = (0..events.len()).filter(|i| events[*i].0 == kind).collect();
        let Some((hm, hw)) = median_and_worst(idx.iter().map(|i| events[*i].2).collect()) else {
            continue;
        };
        let (gm, gw) = median_and_worst(idx.iter().map(|i| seen[*i].gap).collect()).unwrap();
        let repeated: usize = idx.iter().map(|i| seen[*i].repeated).sum();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{:<34} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9}",
            format!("{kind} of the leader (median)"),
            idx.len(),
            ms(hm),
            ms(hw),
            ms(gm),
            ms(gw),
            repeated
        );
        report.insert(
            kind.replace([' ', '-'], ""),
            json!({
                "count": idx.len(),
                "handover_median_ms": hm.as_secs_f64() * 1000.0,
                "handover_worst_ms": hw.as_secs_f64() * 1000.0,
                "gap_median_ms": gm.as_secs_f64() * 1000.0,
                "gap_worst_ms": gw.as_secs_f64() * 1000.0,
                "repeated": repeated,
            }),
        );
    }
    println!(
        "{rows} events written, {delivered} delivered ({})",
        if delivered >= rows {
            "all"
        } else {
            "NOT ALL: see the chaos e2e test"
        }
    );
    println!(
        "{}",
        json!({"bench": "failover", "events": rows, "delivered": delivered, "results": report})
    );
    Ok(())
}
