//! Metrics of the search index and the Elasticsearch sink (docs/METRICS.md, "Search"). Names
//! are in [`super::metrics::names`] with every other family; registered by
//! [`super::metrics::Metrics::new`], recorded where they happen (`crate::search`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::metrics::names;

/// Seconds per bulk request: milliseconds locally, seconds for a big batch over a WAN.
const BULK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What became of one document sent to Elasticsearch (`outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// 2xx: indexed now.
    Created,
    /// 409: already indexed (a resend after a crash): counts as done.
    Exists,
    /// 429 / 5xx for this item: sent again (counted per attempt).
    Retried,
    /// 400 and other item errors (or 413 for a lone document): `observers.feed_dead_letter`.
    DeadLettered,
}

impl ItemOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Created => "created",
            ItemOutcome::Exists => "exists",
            ItemOutcome::Retried => "retried",
            ItemOutcome::DeadLettered => "dead_lettered",
        }
    }
}

#[derive(Clone)]
pub struct SearchMetrics {
    pub indexed: IntCounter,
    pub es_items: IntCounterVec,
    pub es_requests: IntCounterVec,
    pub es_bulk_duration: Histogram,
    pub es_breaker_open: IntGauge,
    pub es_lag: prometheus::Gauge,
    pub es_yielded: prometheus::Counter,
}

impl SearchMetrics {
    pub fn register(r: &Registry) -> Result<SearchMetrics, prometheus::Error> {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: T,
        ) -> Result<T, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let m = SearchMetrics {
            indexed: reg(
                r,
                IntCounter::with_opts(Opts::new(
                    names::SEARCH_INDEXED,
                    "Events this worker copied into the PostgreSQL search index (observers.search_index()).",
                ))?,
            )?,
            es_items: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        names::ES_ITEMS,
                        "Documents sent to Elasticsearch, by outcome: created, exists (409: already indexed, counts as done), retried (429/5xx, per attempt), dead_lettered.",
                    ),
                    &["outcome"],
                )?,
            )?,
            es_requests: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        names::ES_REQUESTS,
                        "Bulk requests, by result: ok (per-item answers), too_large (413: split), retry (429/5xx for the whole request), held (401/403, connection failure, timeout: the breaker opens).",
                    ),
                    &["result"],
                )?,
            )?,
            es_bulk_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        names::ES_BULK_DURATION,
                        "Duration of one bulk request to Elasticsearch, in seconds.",
                    )
                    .buckets(BULK_BUCKETS.to_vec()),
                )?,
            )?,
            es_breaker_open: reg(
                r,
                IntGauge::with_opts(Opts::new(
                    names::ES_BREAKER_OPEN,
                    "1 while the Elasticsearch sink holds everything (401/403, connection failures, timeouts) and waits before its next try.",
                ))?,
            )?,
            es_lag: reg(
                r,
                prometheus::Gauge::with_opts(Opts::new(
                    names::ES_LAG,
                    "Seconds between now and the capture of the oldest event the Elasticsearch sink is copying; 0 when it has copied everything committed.",
                ))?,
            )?,
            es_yielded: reg(
                r,
                prometheus::Counter::with_opts(Opts::new(
                    names::ES_YIELDED,
                    "Seconds the Elasticsearch sink waited because delivery was behind (yield_to_delivery).",
                ))?,
            )?,
        };
        for o in [
            ItemOutcome::Created,
            ItemOutcome::Exists,
            ItemOutcome::Retried,
            ItemOutcome::DeadLettered,
        ] {
            m.es_items.with_label_values(&[o.as_str()]);
        }
        for r in ["ok", "too_large", "retry", "held"] {
            m.es_requests.with_label_values(&[r]);
        }
        Ok(m)
    }

    pub fn item(&self, o: ItemOutcome, n: u64) {
        self.es_items.with_label_values(&[o.as_str()]).inc_by(n);
    }
}
