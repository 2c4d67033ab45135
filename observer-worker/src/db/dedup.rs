//! The `postgres` deduplication backend: batched calls of `observers.dedup_claim / confirm /
//! release` (pg_observers/sql/bootstrap/35_dedup.sql).

use std::collections::HashMap;
use std::time::Duration;

use super::{queries, Db, DbError, Lane};

/// What `dedup_claim` said about one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    /// Ours now: execute it.
    Claimed,
    /// It already succeeded (inside the TTL): skip it.
    Done,
    /// Another worker is executing it right now.
    Busy,
}

impl Db {
    /// The installation id of the extension (kept for the life of the database, and across
    /// pg_dump/restore); `None` if the row was deleted.
    pub async fn installation_id(&self) -> Result<Option<String>, DbError> {
        const CTX: &str = "observers.installation";
        let (c, stmt) = self
            .prepared(Lane::Side, CTX, queries::INSTALLATION_ID)
            .await?;
        let row = c
            .query_opt(&stmt, &[])
            .await
            .map_err(|e| self.err(CTX, e))?;
        row.map(|r| r.try_get(0).map_err(|e| self.err(CTX, e)))
            .transpose()
    }

    /// Claims `keys` (with their capture days, `YYYY-MM-DD`) for `owner`; one state per key,
    /// in input order.
    pub async fn dedup_claim(
        &self,
        keys: &[Vec<u8>],
        days: &[String],
        owner: &str,
        claim_ttl: Duration,
        done_ttl: Duration,
    ) -> Result<Vec<ClaimState>, DbError> {
        const CTX: &str = "observers.dedup_claim";
        let (c, stmt) = self
            .prepared(Lane::Dedup, CTX, queries::DEDUP_CLAIM)
            .await?;
        let rows = c
            .query(
                &stmt,
                &[
                    &keys,
                    &days,
                    &owner,
                    &claim_ttl.as_secs_f64(),
                    &done_ttl.as_secs_f64(),
                ],
            )
            .await
            .map_err(|e| self.err(CTX, e))?;
        let mut by_key: HashMap<Vec<u8>, ClaimState> = HashMap::with_capacity(rows.len());
        for row in rows {
            let key: Vec<u8> = row.try_get(0).map_err(|e| self.err(CTX, e))?;
            let state: String = row.try_get(1).map_err(|e| self.err(CTX, e))?;
            let state = match state.as_str() {
                "claimed" => ClaimState::Claimed,
                "done" => ClaimState::Done,
                _ => ClaimState::Busy,
            };
            by_key.insert(key, state);
        }
        // a key asked for twice in one batch is claimed once: the second one waits
        let mut seen = std::collections::HashSet::new();
        Ok(keys
            .iter()
            .map(|k| {
                let s = by_key.get(k).copied().unwrap_or(ClaimState::Busy);
                if s == ClaimState::Claimed && !seen.insert(k) {
                    ClaimState::Busy
                } else {
                    s
                }
            })
            .collect())
    }

    /// The keys among `keys` that are done (and in force) in `observers.dedup`; with `None`,
    /// whether any done-mark there is in force (one empty key if so).
    pub async fn dedup_done(
        &self,
        keys: Option<(&[Vec<u8>], &[String])>,
    ) -> Result<Vec<Vec<u8>>, DbError> {
        const CTX: &str = "observers.dedup_done";
        let (c, stmt) = self.prepared(Lane::Dedup, CTX, queries::DEDUP_DONE).await?;
        let (k, d): (Option<&[Vec<u8>]>, Option<&[String]>) = match keys {
            Some((k, d)) => (Some(k), Some(d)),
            None => (None, None),
        };
        let rows = c
            .query(&stmt, &[&k, &d])
            .await
            .map_err(|e| self.err(CTX, e))?;
        rows.iter()
            .map(|r| {
                r.try_get::<_, Option<Vec<u8>>>(0)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| self.err(CTX, e))
            })
            .collect()
    }

    pub async fn dedup_confirm(
        &self,
        keys: &[Vec<u8>],
        days: &[String],
        ttl: Duration,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.dedup_confirm";
        let (c, stmt) = self
            .prepared(Lane::Dedup, CTX, queries::DEDUP_CONFIRM)
            .await?;
        c.execute(&stmt, &[&keys, &days, &ttl.as_secs_f64()])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }

    pub async fn dedup_release(
        &self,
        keys: &[Vec<u8>],
        days: &[String],
        owner: &str,
    ) -> Result<(), DbError> {
        const CTX: &str = "observers.dedup_release";
        let (c, stmt) = self
            .prepared(Lane::Dedup, CTX, queries::DEDUP_RELEASE)
            .await?;
        c.execute(&stmt, &[&keys, &days, &owner])
            .await
            .map_err(|e| self.err(CTX, e))?;
        Ok(())
    }
}
