//! Lookup latency against an HTTP source that takes 50 ms: uncached vs Redis hit vs memory hit,
//! p50 / p99 / max. Calls the worker's lookup layer directly (`observer_worker::lookups`), with
//! the real receiver as the slow source and a private `redis-server`.
//!
//! `cargo run --release -p observers-tests --bin bench-lookups` (needs `redis-server`).
//! Targets (issue 3): Redis hit p99 < 1 ms, memory hit p99 < 50 µs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use observer_worker::config::{parse_str, Defaults};
use observer_worker::lookups::{LookupStats, Lookups, Sources};
use observers_tests::receiver::{Receiver, ReceiverOptions, Reply};
use observers_tests::RedisServer;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Calls measured against the uncached source (each takes the source's delay).
    #[arg(long, default_value_t = 100)]
    uncached_calls: usize,
    /// Cache hits measured per backend.
    #[arg(long, default_value_t = 20_000)]
    hits: usize,
    /// Delay of the source.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    source_delay: Duration,
}

struct Row {
    mode: &'static str,
    calls: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    source_calls: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn build(yaml: &str) -> Result<Lookups> {
    let env: HashMap<String, String> = HashMap::new();
    let config = parse_str(
        yaml,
        &env,
        &Defaults {
            worker_id: "bench".into(),
        },
    )
    .map_err(|p| anyhow!("bench config: {p:?}"))?;
    let http = observer_worker::actions::webhook::http_client(64)?;
    Lookups::build(
        &config.lookups,
        &config.caching,
        config.redis.as_ref(),
        Sources::new(http, None),
    )
    .map_err(|e| anyhow!("{e}"))
}

async fn measure(mode: &'static str, lookups: &Lookups, calls: usize, warm: bool) -> Result<Row> {
    let event = json!({"id": 1, "op": "INSERT", "table": "public.orders", "observer": "o",
                       "new": {"id": 1, "customer_id": 42}, "old": null, "changed": null,
                       "txid": 1, "captured_at": "2026-01-01T00:00:00Z"});
    if warm {
        lookups
            .resolve("profile", &event)
            .await
            .context("warm-up")?;
    }
    let before = LookupStats::get(&lookups.stats().source_calls);
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let v = lookups.resolve("profile", &event).await?;
        samples.push(t.elapsed());
        if v["tier"] != "gold" {
            return Err(anyhow!("{mode}: unexpected value {v}"));
        }
    }
    samples.sort();
    Ok(Row {
        mode,
        calls,
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        max: *samples.last().unwrap_or(&Duration::ZERO),
        source_calls: LookupStats::get(&lookups.stats().source_calls) - before,
    })
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // keep=false: the receiver does not record the (many) requests
    let rx = Receiver::start_with(ReceiverOptions {
        keep_deliveries: false,
        ..Default::default()
    })
    .await?;
    rx.set_default(
        "/profiles/42",
        Reply::ok()
            .body("application/json", r#"{"tier": "gold", "name": "Ada"}"#)
            .delay(args.source_delay),
    );
    let redis = RedisServer::start();
    let lookup = format!(
        "lookups:\n  - name: profile\n    http: \"{}/profiles/{{{{ new.customer_id }}}}\"\n    ttl: 1h\n",
        rx.url("")
    );

    let mut rows = Vec::new();
    let uncached = build(&format!("caching: disabled\n{lookup}"))?;
    rows.push(measure("uncached (source)", &uncached, args.uncached_calls, false).await?);
    let redis_lookups = build(&format!(
        "redis: {{ url: {} }}\ncaching: {{ enabled: true, backend: redis }}\n{lookup}",
        redis.url()
    ))?;
    rows.push(measure("redis hit", &redis_lookups, args.hits, true).await?);
    let memory = build(&format!(
        "caching: {{ enabled: true, backend: memory }}\n{lookup}"
    ))?;
    rows.push(measure("memory hit", &memory, args.hits, true).await?);

    println!(
        "lookup latency, source delay {} (one caller, sequential calls)",
        humantime::format_duration(args.source_delay)
    );
    println!(
        "{:<18} {:>8} {:>12} {:>12} {:>12} {:>13}",
        "mode", "calls", "p50", "p99", "max", "source calls"
    );
    for r in &rows {
        println!(
            "{:<18} {:>8} {:>12} {:>12} {:>12} {:>13}",
            r.mode,
            r.calls,
            fmt(r.p50),
            fmt(r.p99),
            fmt(r.max),
            r.source_calls
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: redis hit p99 < 1 ms: {}; memory hit p99 < 50 µs: {}",
        verdict(rows[1].p99 < Duration::from_millis(1)),
        verdict(rows[2].p99 < Duration::from_micros(50))
    );
    Ok(())
}
