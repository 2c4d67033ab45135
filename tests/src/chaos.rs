//! Pieces shared by the chaos end-to-end test and `bench-failover`: a writer that streams
//! through database restarts, who holds a group's lease, waiting for a takeover, and what the
//! receiver saw around each disruption (the delivery gap, the pairs delivered twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::connect;
use crate::receiver::Delivery;

/// Streams `rows`-row INSERTs into `table` (one transaction each, `pause` between them),
/// reconnecting through outages, until stopped and at least `min_rows` were written.
pub struct StreamWriter {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamWriter {
    pub fn start(url: String, table: &str, rows: u64, pause: Duration, min_rows: u64) -> Self {
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (written.clone(), stop.clone());
        let sql = format!("INSERT INTO {table} (n) SELECT g FROM generate_series(1, {rows}) g");
        let task = tokio::spawn(async move {
            let mut client = None;
            while !(s.load(Ordering::SeqCst) && w.load(Ordering::SeqCst) >= min_rows) {
                if client.is_none() {
                    client = connect(&url).await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                match client.as_ref().unwrap().execute(sql.as_str(), &[]).await {
                    // an INSERT cut off by a restart may or may not have committed: callers read
                    // the truth from the table; this count only paces
                    Ok(_) => {
                        w.fetch_add(rows, Ordering::SeqCst);
                    }
                    Err(_) => client = None,
                }
                tokio::time::sleep(pause).await;
            }
        });
        StreamWriter {
            written,
            stop,
            task,
        }
    }

    /// Rows written so far (as reported to the client).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Stops once at least `min_rows` were written.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

/// The worker that holds `group`'s lease now and its epoch, if any (a fresh session each time:
/// callers restart the database).
pub async fn lease_holder(url: &str, group: &str) -> Option<(String, i64)> {
    let c = connect(url).await.ok()?;
    let r = c
        .query_opt(
            "SELECT worker_id, epoch FROM observers.leader_lease \
              WHERE group_name = $1 AND expires_at > clock_timestamp()",
            &[&group],
        )
        .await
        .ok()??;
    Some((r.get(0), r.get(1)))
}

/// Waits (polling every 10 ms) until a worker other than `old` holds the lease with an epoch
/// above `old_epoch`; `None` after `bound`.
pub async fn wait_new_leader(
    url: &str,
    group: &str,
    old: &str,
    old_epoch: i64,
    bound: Duration,
) -> Option<(String, i64)> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some((w, e)) = lease_holder(url, group).await {
            if w != old && e > old_epoch {
                return Some((w, e));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// What the receiver saw around one disruption.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The longest silence between two arrivals, from the last arrival before the disruption to
    /// the first pair delivered for the first time after the takeover.
    pub gap: Duration,
    /// Pairs delivered again whose first delivery came nearest to this disruption (a pair in
    /// flight at a kill may reach the receiver a few milliseconds after the signal: its first
    /// delivery is then just after the disruption, not before it).
    pub repeated: usize,
    /// Up to five of them: `webhook-id` and when it was first delivered, relative to the
    /// disruption (`+12ms` after, `-3ms` before).
    pub examples: Vec<String>,
}

/// For disruptions at `at` (ascending) with their handover times: what the receiver saw, and
/// how many repeated pairs had their first delivery farther than `window` from every
/// disruption (none can be explained by a disruption: should be none). `deliveries` in arrival
/// order; only successful ones count.
pub fn what_the_receiver_saw(
    deliveries: &[Delivery],
    at: &[(SystemTime, Duration)],
    window: Duration,
) -> (Vec<Seen>, usize) {
    let ok: Vec<&Delivery> = deliveries.iter().filter(|d| d.succeeded()).collect();
    let mut first: HashMap<&str, SystemTime> = HashMap::new();
    let mut fresh = vec![false; ok.len()];
    let mut seen = vec![Seen::default(); at.len()];
    let mut before_any = 0;
    for (i, d) in ok.iter().enumerate() {
        let Some(id) = d.webhook_id.as_deref() else {
            continue;
        };
        match first.get(id) {
            None => {
                first.insert(id, d.received_at);
                fresh[i] = true;
            }
            Some(t1) => {
                let distance = |t: &SystemTime| {
                    t.duration_since(*t1)
                        .or_else(|_| t1.duration_since(*t))
                        .unwrap_or_default()
                };
                match at
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (t, _))| distance(t))
                    .filter(|(_, (t, _))| distance(t) <= window)
                {
                    Some((r, (t, _))) => {
                        seen[r].repeated += 1;
                        if seen[r].examples.len() < 5 {
                            let rel = match t1.duration_since(*t) {
                                Ok(d) => format!("+{d:?}"),
                                Err(e) => format!("-{:?}", e.duration()),
                            };
                            seen[r].examples.push(format!("{id} first delivered {rel}"));
                        }
                    }
                    None => before_any += 1,
                }
            }
        }
    }
    for (r, (t, handover)) in at.iter().enumerate() {
        let start = ok.iter().rposition(|d| d.received_at <= *t);
        let end = ok
            .iter()
            .enumerate()
            .position(|(i, d)| fresh[i] && d.received_at > *t + *handover);
        if let (Some(s), Some(e)) = (start, end) {
            seen[r].gap = ok[s..=e]
                .windows(2)
                .filter_map(|w| w[1].received_at.duration_since(w[0].received_at).ok())
                .max()
                .unwrap_or_default();
        }
    }
    (seen, before_any)
}

/// Median and worst of `v` (`None` when empty).
pub fn median_and_worst(mut v: Vec<Duration>) -> Option<(Duration, Duration)> {
    v.sort();
    Some((*v.get(v.len() / 2)?, *v.last()?))
}
