//! Lookup sources: a read-only SQL query on the worker's database, or an HTTP
//! `GET` answering JSON.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use reqwest::header::ACCEPT;
use serde_json::Value;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

use super::{LookupError, LookupResult, LookupStats, Request};
use crate::actions::egress::{denied_in, Egress};
use crate::actions::BoxFuture;
use crate::config::actions::redacted_url;
use crate::config::LookupSource;

/// Connections of the SQL lookup pool (separate from the consumer's pools).
pub const SQL_POOL_SIZE: usize = 4;
/// Largest HTTP lookup response read.
pub const MAX_HTTP_BODY: usize = 1024 * 1024;
/// Largest SQL lookup value (the row as JSON).
pub const MAX_SQL_VALUE: usize = 1024 * 1024;

/// What the lookups call: the worker's HTTP client (bound to its `destinations:` policy)
/// and, when SQL lookups exist, a pool.
pub struct Sources {
    http: Egress,
    pg: Option<Pool>,
}

impl Sources {
    pub fn new(http: Egress, pg: Option<Pool>) -> Sources {
        Sources { http, pg }
    }

    /// A small pool for SQL lookups on `pg` (no I/O until first use).
    pub fn sql_pool(
        pg: &tokio_postgres::Config,
        connect_timeout: Duration,
    ) -> Result<Pool, String> {
        let mut pg = pg.clone();
        pg.application_name("fraiseql-observers-lookups");
        let mgr = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(mgr)
            .max_size(SQL_POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .wait_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| e.to_string())
    }
}

/// The call of `request`'s source, owned so it can run in a shared task.
pub fn fetch(
    sources: Arc<Sources>,
    request: Request,
    stats: Arc<LookupStats>,
) -> BoxFuture<'static, LookupResult> {
    Box::pin(async move {
        LookupStats::bump(&stats.source_calls);
        let name = request.lookup.config.name.clone();
        let timeout = request.lookup.config.timeout;
        let call = async {
            match &request.lookup.config.source {
                LookupSource::Sql { query } => sql(&sources, query, &request.args, timeout).await,
                LookupSource::Http { .. } => {
                    http(
                        &sources,
                        request.url.as_deref().unwrap_or_default(),
                        timeout,
                    )
                    .await
                }
            }
        };
        // the sources enforce the timeout themselves; this is the safety net
        let r = match tokio::time::timeout(timeout + Duration::from_millis(250), call).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout after {}",
                humantime::format_duration(timeout)
            )),
        };
        r.map(Arc::new).map_err(|message| {
            LookupStats::bump(&stats.source_errors);
            LookupError::Source {
                lookup: name,
                message,
            }
        })
    })
}

async fn http(sources: &Sources, url: &str, timeout: Duration) -> Result<Value, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("the rendered URL is invalid ({e})"))?;
    let shown = redacted_url(&parsed);
    let client = sources
        .http
        .check(&parsed)
        .map_err(|denied| format!("GET {shown}: {denied}"))?;
    let mut response = client
        .get(parsed)
        .header(ACCEPT, "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            let e = e.without_url();
            if let Some(denied) = denied_in(&e) {
                format!("GET {shown}: {denied}")
            } else if e.is_timeout() {
                format!(
                    "GET {shown}: timeout after {}",
                    humantime::format_duration(timeout)
                )
            } else {
                format!("GET {shown}: {}", crate::db::root_cause(&e))
            }
        })?;
    let status = response.status();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_HTTP_BODY {
                    return Err(format!(
                        "GET {shown}: response larger than {MAX_HTTP_BODY} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let e = e.without_url();
                return Err(format!(
                    "GET {shown}: reading the response: {}",
                    crate::db::root_cause(&e)
                ));
            }
        }
    }
    if !status.is_success() {
        let snippet = crate::actions::webhook::body_snippet(&body[..body.len().min(200)]);
        return Err(format!(
            "GET {shown}: HTTP {}{}",
            status.as_u16(),
            if snippet.is_empty() {
                String::new()
            } else {
                format!(": {snippet}")
            }
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("GET {shown}: the response is not JSON ({e})"))
}

/// A parameter sent in text format: PostgreSQL parses it as whatever type the
/// query needs at that position (`WHERE id = $1` with `id int` gets `'3'::int`).
#[derive(Debug)]
struct TextParam<'a>(&'a str);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }
    tokio_postgres::types::to_sql_checked!();
}

/// The query wrapped so PostgreSQL builds the JSON object of the first row.
pub fn wrap_query(query: &str) -> String {
    format!("SELECT to_jsonb(fo_lookup_row) FROM ({query}\n) AS fo_lookup_row LIMIT 1")
}

async fn sql(
    sources: &Sources,
    query: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Value, String> {
    let Some(pool) = &sources.pg else {
        return Err("SQL lookups need the worker's database (no pool)".to_owned());
    };
    let pg_err = |what: &str, e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => format!("{what}: {}", crate::db::root_cause(&e)),
    };
    let mut client = pool
        .get()
        .await
        .map_err(|e| format!("database unavailable: {e}"))?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| pg_err("BEGIN READ ONLY", e))?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        timeout.as_millis().max(1)
    ))
    .await
    .map_err(|e| pg_err("SET statement_timeout", e))?;
    let stmt = tx
        .prepare_cached(&wrap_query(query))
        .await
        .map_err(|e| pg_err("preparing the query", e))?;
    let params: Vec<TextParam<'_>> = args.iter().map(|a| TextParam(a)).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let row = tx
        .query_opt(&stmt, &refs)
        .await
        .map_err(|e| pg_err("running the query", e))?;
    let value = match row {
        Some(r) => r
            .try_get::<_, Option<Value>>(0)
            .map_err(|e| pg_err("reading the row", e))?
            .unwrap_or(Value::Null),
        None => Value::Null,
    };
    tx.commit().await.map_err(|e| pg_err("COMMIT", e))?;
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
    if size > MAX_SQL_VALUE {
        return Err(format!(
            "the row is {size} bytes as JSON (at most {MAX_SQL_VALUE}): select fewer columns"
        ));
    }
    Ok(value)
}
