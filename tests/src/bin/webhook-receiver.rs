//! `webhook-receiver`: a standalone webhook endpoint for `make demo`, `make bench` and manual
//! testing. Accepts any POST on any path, verifies Standard Webhooks signatures when given a
//! secret, optionally fails a share of requests, and appends one JSON line per request to a log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use observers_tests::receiver::{open_log, Receiver, ReceiverOptions, Reply};

/// A webhook receiver for FraiseQL Observers (Standard Webhooks).
///
/// Every request is answered according to, in order: the --script statuses (one per request,
/// across all paths), then --fail-rate (answer --fail-status with that probability), then 200.
/// With --secret, requests whose webhook-signature does not verify are answered 401.
///
/// Log format (--log, one JSON object per line, appended, buffered and flushed every 200ms):
/// {"received_at": RFC3339, "path", "webhook_id", "webhook_timestamp",
///  "signature_valid": bool|null, "status": answered status, "body": JSON body (or the raw text)}
#[derive(Parser, Debug)]
#[command(name = "webhook-receiver", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Append one JSON line per request to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,

    /// Standard Webhooks secret (`whsec_<base64>` or a raw string) to verify signatures with.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,

    /// Accept requests whose signature does not verify (still logged as signature_valid=false).
    #[arg(long)]
    accept_invalid_signatures: bool,

    /// Share of requests (0.0-1.0) answered with --fail-status instead of 200.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,

    /// Status for --fail-rate failures.
    #[arg(long, default_value_t = 500)]
    fail_status: u16,

    /// Retry-After value sent with every scripted or random failure (e.g. `1`).
    #[arg(long)]
    retry_after: Option<String>,

    /// Comma-separated statuses answered to the first requests, e.g. `500,500,429` (then normal).
    #[arg(long, value_delimiter = ',')]
    script: Vec<u16>,

    /// Delay before every answer, e.g. `20ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,

    /// Print a one-line summary every INTERVAL to stderr (`0s` disables).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    stats_interval: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!(
            "--fail-rate must be between 0.0 and 1.0, got {}",
            args.fail_rate
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let log = match &args.log {
        Some(p) => {
            Some(open_log(p).with_context(|| format!("cannot open log file {}", p.display()))?)
        }
        None => None,
    };
    let with_extras = |mut r: Reply| {
        if let Some(ra) = &args.retry_after {
            if r.status >= 400 {
                r = r.retry_after(ra.clone());
            }
        }
        if let Some(d) = args.delay {
            r = r.delay(d);
        }
        r
    };
    let rx = Receiver::start_with(ReceiverOptions {
        listen: Some(args.listen),
        secret: args.secret.clone(),
        reject_invalid_signatures: args.secret.is_some() && !args.accept_invalid_signatures,
        keep_deliveries: false,
        log,
        default_reply: Some(with_extras(Reply::ok())),
        fail_rate: args.fail_rate,
        fail_reply: Some(with_extras(Reply::status(args.fail_status))),
        script: args
            .script
            .iter()
            .map(|s| with_extras(Reply::status(*s)))
            .collect(),
    })
    .await
    .context("cannot start the receiver")?;
    println!("webhook-receiver listening on http://{}", rx.addr());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stats_every = if args.stats_interval.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        args.stats_interval
    };
    let mut tick = tokio::time::interval(stats_every);
    tick.tick().await;
    let mut last = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let n = rx.count();
                eprintln!(
                    "webhook-receiver: {:.0} req/s; {}",
                    (n - last) as f64 / stats_every.as_secs_f64(),
                    rx.summary()
                );
                last = n;
            }
        }
    }
    eprintln!("webhook-receiver: shutting down; {}", rx.summary());
    rx.shutdown().await;
    Ok(())
}
