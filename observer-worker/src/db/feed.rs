//! Copies of the outbox that follow a feed cursor (52_search.sql): the PostgreSQL search index
//! (`observers.search_index()`, one call per page) and the Elasticsearch sink (a [`FeedSession`]:
//! `feed_fetch` a page, copy it, `feed_save` what was acknowledged or dead-lettered).

use tokio_postgres::{Client, NoTls};

use super::{root_cause, Db, DbError, Lane};

/// One page of the search index: how many events were indexed.
const SEARCH_INDEX: &str = "SELECT observers.search_index($1)";
const SEARCH_MAINTAIN: &str = "SELECT observers.search_maintain()";

/// The rows of the Elasticsearch sink's next page; the row images as `jsonb::text` (every digit
/// of a `numeric` kept). The worker builds the documents (`search::document`): no per-document
/// work in the database beyond reading the page.
const FEED_FETCH_ROWS: &str =
    "SELECT f.id, f.observer_id, f.observer, f.table_name, f.op, f.txid, \
       f.captured_at, f.new::text, f.old::text, f.changed \
     FROM observers.feed_fetch($1, $2) AS f";
const FEED_SAVE: &str = "SELECT observers.feed_save($1, $2, $3)";
const DEAD_LETTER_ADD: &str = "SELECT observers.feed_dead_letter_add($1, $2, $3, $4, $5, $6)";

impl Db {
    /// Indexes the next `lim` events into `observers.search_doc`; how many were indexed.
    pub async fn search_index(&self, lim: i32) -> Result<i32, DbError> {
        const CTX: &str = "observers.search_index";
        let c = self.client(Lane::Side, CTX).await?;
        let row = c
            .query_one(SEARCH_INDEX, &[&lim])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get::<_, i32>(0).map_err(|e| self.err(CTX, e))
    }

    /// Partitions and retention of the search index; a one-line summary.
    pub async fn search_maintain(&self) -> Result<String, DbError> {
        const CTX: &str = "observers.search_maintain";
        let c = self.client(Lane::Side, CTX).await?;
        let row = c
            .query_one(SEARCH_MAINTAIN, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.try_get::<_, Option<String>>(0)
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(CTX, e))
    }

    /// A connection of its own for one feed, holding the feed's session advisory lock so that
    /// one worker at a time copies it (the lock goes with the session: a crashed worker's
    /// connection ends and another worker's next try gets it). `Ok(None)`: another session
    /// holds it.
    pub async fn feed_session(&self, feed: &str) -> Result<Option<FeedSession>, DbError> {
        const CTX: &str = "feed session";
        let (client, connection) =
            self.pg_config()
                .connect(NoTls)
                .await
                .map_err(|e| DbError::Unavailable {
                    target: self.target().to_owned(),
                    message: root_cause(&e),
                })?;
        let target = self.target().to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %root_cause(&e), "feed connection ended");
            }
        });
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('pg_observers.feed'), hashtext($1))",
                &[&feed],
            )
            .await
            .map_err(|e| DbError::classify(&target, CTX, e))?
            .try_get(0)
            .map_err(|e| DbError::classify(&target, CTX, e))?;
        if !locked {
            return Ok(None);
        }
        Ok(Some(FeedSession {
            client,
            target,
            feed: feed.to_owned(),
        }))
    }
}

/// One outbox row of a feed page, as `observers.feed_fetch()` returns it; the row images as
/// `jsonb::text`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    pub event_id: i64,
    pub observer_id: Option<i32>,
    pub observer: Option<String>,
    pub table: Option<String>,
    pub op: Option<String>,
    pub txid: Option<i64>,
    pub captured_at: std::time::SystemTime,
    pub new: Option<String>,
    pub old: Option<String>,
    pub changed: Option<Vec<Option<String>>>,
}

/// An item that goes to `observers.feed_dead_letter`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedDeadLetter {
    pub event_id: i64,
    pub target: String,
    pub status: Option<i32>,
    pub error: String,
    pub document: String,
}

/// The connection (and advisory lock) of one feed's copier.
pub struct FeedSession {
    client: Client,
    target: String,
    feed: String,
}

impl FeedSession {
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The next page of the feed (the same page again until [`FeedSession::save`] moves past it).
    pub async fn fetch_rows(&self, lim: i32) -> Result<Vec<FeedRow>, DbError> {
        const CTX: &str = "observers.feed_fetch";
        let rows = self
            .client
            .query(FEED_FETCH_ROWS, &[&self.feed, &lim])
            .await
            .map_err(|e| DbError::classify(&self.target, CTX, e))?;
        rows.iter()
            .map(|r| {
                Ok(FeedRow {
                    event_id: r.try_get(0)?,
                    observer_id: r.try_get(1)?,
                    observer: r.try_get(2)?,
                    table: r.try_get(3)?,
                    op: r.try_get(4)?,
                    txid: r.try_get(5)?,
                    captured_at: r.try_get(6)?,
                    new: r.try_get(7)?,
                    old: r.try_get(8)?,
                    changed: r.try_get(9)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| DbError::classify(&self.target, CTX, e))
    }

    /// Every event of the page up to `last_id` is copied (acknowledged or dead-lettered).
    pub async fn save(&self, last_id: i64, copied: i64) -> Result<bool, DbError> {
        const CTX: &str = "observers.feed_save";
        self.client
            .query_one(FEED_SAVE, &[&self.feed, &last_id, &copied])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| DbError::classify(&self.target, CTX, e))
    }

    pub async fn dead_letter(&self, items: &[FeedDeadLetter]) -> Result<(), DbError> {
        const CTX: &str = "observers.feed_dead_letter_add";
        if items.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = items.iter().map(|i| i.event_id).collect();
        let targets: Vec<&str> = items.iter().map(|i| i.target.as_str()).collect();
        let statuses: Vec<Option<i32>> = items.iter().map(|i| i.status).collect();
        let errors: Vec<&str> = items.iter().map(|i| i.error.as_str()).collect();
        let docs: Vec<&str> = items.iter().map(|i| i.document.as_str()).collect();
        self.client
            .query_one(
                DEAD_LETTER_ADD,
                &[&self.feed, &ids, &targets, &statuses, &errors, &docs],
            )
            .await
            .map_err(|e| DbError::classify(&self.target, CTX, e))?;
        Ok(())
    }
}
