//! Durable state: the node registry, agent events, incidents and the feed.
//!
//! One implementation over sqlx's `Any` driver serves SQLite (the default,
//! in WAL mode) and PostgreSQL; the SQL is the common subset of both.

use crate::dto::{self, CardsDoc, CheckpointDoc, CulpritDoc, CursorDoc, IncidentDoc, RecoveryDoc};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use vigil_core::cluster::Registration;
use vigil_core::incident::Incident;
use vigil_core::ledger::LedgerRow;
use vigil_core::model::AgentEvent;
use vigil_core::{JobId, Millis, NodeId};

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {0:?}: expected sqlite://PATH or postgres://...")]
    BadUrl(String),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

/// Reads one stored document as a core type; `what` names it in the error.
fn load<D, T>(body: &str, what: &str) -> Result<T, StoreError>
where
    D: serde::de::DeserializeOwned + TryInto<T, Error = dto::DocError>,
{
    dto::load::<D, T>(body).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A feed event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    pub seq: u64,
    pub at_ms: Millis,
    pub kind: String,
    pub data: serde_json::Value,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS nodes (
        id TEXT PRIMARY KEY,
        boot_id TEXT NOT NULL,
        spare BIGINT NOT NULL,
        job TEXT,
        cards_json TEXT NOT NULL,
        registered_at_ms BIGINT NOT NULL,
        supervises BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS agent_events (
        node TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        body_json TEXT NOT NULL,
        PRIMARY KEY (node, boot_id, seq))",
    "CREATE TABLE IF NOT EXISTS incidents (
        id BIGINT PRIMARY KEY,
        job TEXT,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        detected_at_ms BIGINT NOT NULL,
        body_json TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS recoveries (
        job TEXT PRIMARY KEY,
        body_json TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger (
        job TEXT NOT NULL,
        bucket_ms BIGINT NOT NULL,
        category TEXT NOT NULL,
        culprit_json TEXT NOT NULL,
        card_ms BIGINT NOT NULL,
        PRIMARY KEY (job, bucket_ms, category, culprit_json))",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        job TEXT NOT NULL,
        step BIGINT NOT NULL,
        body_json TEXT NOT NULL,
        PRIMARY KEY (job, step))",
    "CREATE TABLE IF NOT EXISTS ledger_cursors (
        job TEXT PRIMARY KEY,
        body_json TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS feed (
        seq BIGINT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        data_json TEXT NOT NULL)",
];

impl Store {
    /// Opens (creating if needed) the store at `url`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let mut relaxed = false;
        let (backend, connect_url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                match kv {
                    "sync=normal" => relaxed = true,
                    "sync=full" => relaxed = false,
                    other => {
                        return Err(StoreError::BadUrl(format!(
                            "{url} (unknown option {other:?}; only sync=full or sync=normal)"
                        )));
                    }
                }
            }
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_owned()));
            }
            if path != ":memory:"
                && let Some(parent) = std::path::Path::new(path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::Dir {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        let max = if backend == Backend::Sqlite { 4 } else { 8 };
        // Every commit is fsynced by default (synchronous=FULL), so an
        // acknowledged event survives a power loss. `sync=normal` keeps
        // durability across process crashes (SIGKILL) only, for throwaway
        // stores such as the demo's.
        let sync = if relaxed {
            "PRAGMA synchronous=NORMAL"
        } else {
            "PRAGMA synchronous=FULL"
        };
        let is_sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if is_sqlite {
                        sqlx::Executor::execute(conn, sync).await?;
                    }
                    Ok(())
                })
            })
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&connect_url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        for ddl in SCHEMA {
            sqlx::query(ddl).execute(&pool).await?;
        }
        // Stores created before the column existed; for the others the
        // database answers that the column is already there.
        if let Err(e) =
            sqlx::query("ALTER TABLE nodes ADD COLUMN supervises BIGINT NOT NULL DEFAULT 0")
                .execute(&pool)
                .await
        {
            let msg = e.to_string();
            if !(msg.contains("duplicate column") || msg.contains("already exists")) {
                tracing::warn!(error = %msg, "cannot add the nodes.supervises column");
            }
        }
        Ok(Store { pool, backend })
    }

    /// The connection pool, for tests that break the store on purpose.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Records a node's registration.
    /// Stores a complete (or invalid) checkpoint of a job.
    pub async fn save_checkpoint(
        &self,
        job: &vigil_core::JobId,
        c: &vigil_core::cluster::CheckpointState,
    ) -> Result<(), StoreError> {
        let body = dto::encode(&CheckpointDoc::from(c))?;
        sqlx::query(
            "INSERT INTO checkpoints (job, step, body_json) VALUES ($1, $2, $3)
             ON CONFLICT (job, step) DO UPDATE SET body_json = excluded.body_json",
        )
        .bind(job.as_str())
        .bind(c.step as i64)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The stored checkpoints, oldest first per job.
    pub async fn checkpoints(
        &self,
    ) -> Result<Vec<(vigil_core::JobId, vigil_core::cluster::CheckpointState)>, StoreError> {
        let rows = sqlx::query("SELECT job, body_json FROM checkpoints ORDER BY job, step")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let job: String = r.try_get(0)?;
                let body: String = r.try_get(1)?;
                Ok((
                    vigil_core::JobId::new(job)
                        .map_err(|e| StoreError::Corrupt(format!("checkpoint job: {e}")))?,
                    load::<CheckpointDoc, _>(&body, "checkpoint")?,
                ))
            })
            .collect()
    }

    /// Stores the role a recovery gave a node (its job, whether it is a spare).
    pub async fn set_node_role(
        &self,
        node: &vigil_core::NodeId,
        job: Option<&vigil_core::JobId>,
        spare: bool,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET job = $1, spare = $2 WHERE id = $3")
            .bind(job.map(|j| j.as_str().to_owned()))
            .bind(i64::from(spare))
            .bind(node.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn upsert_node(&self, reg: &Registration, now: Millis) -> Result<(), StoreError> {
        let cards = dto::encode(&CardsDoc::from(reg.cards.as_slice()))?;
        sqlx::query(
            "INSERT INTO nodes (id, boot_id, spare, job, cards_json, registered_at_ms, supervises)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO UPDATE SET boot_id = excluded.boot_id, spare = excluded.spare,
               job = excluded.job, cards_json = excluded.cards_json,
               registered_at_ms = excluded.registered_at_ms, supervises = excluded.supervises",
        )
        .bind(reg.node.as_str())
        .bind(&reg.boot_id)
        .bind(i64::from(reg.spare))
        .bind(reg.job.as_ref().map(|j| j.as_str().to_owned()))
        .bind(cards)
        .bind(now)
        .bind(i64::from(reg.supervises))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every registered node.
    pub async fn nodes(&self) -> Result<Vec<Registration>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, boot_id, spare, job, cards_json, supervises FROM nodes ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let cards: String = r.try_get(4)?;
                let job: Option<String> = r.try_get(3)?;
                Ok(Registration {
                    node: NodeId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    boot_id: r.try_get(1)?,
                    spare: r.try_get::<i64, _>(2)? != 0,
                    job: job
                        .map(JobId::new)
                        .transpose()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    cards: load::<CardsDoc, _>(&cards, "node cards")?,
                    supervises: r.try_get::<i64, _>(5)? != 0,
                })
            })
            .collect()
    }

    /// Highest stored event sequence number of one agent boot.
    pub async fn max_event_seq(&self, node: &NodeId, boot_id: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT MAX(seq) FROM agent_events WHERE node = $1 AND boot_id = $2")
            .bind(node.as_str())
            .bind(boot_id)
            .fetch_one(&self.pool)
            .await?;
        let max: Option<i64> = row.try_get(0)?;
        Ok(max.unwrap_or(0).max(0) as u64)
    }

    /// Stores events in one transaction and returns those not stored before
    /// (duplicates by node, boot id and sequence are skipped).
    pub async fn append_events(
        &self,
        node: &NodeId,
        boot_id: &str,
        events: Vec<AgentEvent>,
        now: Millis,
    ) -> Result<Vec<AgentEvent>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut fresh = Vec::with_capacity(events.len());
        for ev in events {
            let body =
                serde_json::to_string(&ev.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let done = sqlx::query(
                "INSERT INTO agent_events (node, boot_id, seq, at_ms, received_ms, body_json)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(node.as_str())
            .bind(boot_id)
            .bind(ev.seq as i64)
            .bind(ev.at_ms)
            .bind(now)
            .bind(body)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                fresh.push(ev);
            }
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// Sequence numbers of every stored event of a node (for audits and
    /// tests), per boot id, ascending.
    pub async fn event_seqs(&self, node: &NodeId) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT boot_id, seq FROM agent_events WHERE node = $1 ORDER BY boot_id, seq",
        )
        .bind(node.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64)))
            .collect()
    }

    /// Inserts or replaces incidents, in one transaction.
    pub async fn save_incidents(&self, incidents: &[Incident]) -> Result<(), StoreError> {
        if incidents.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for inc in incidents {
            let body = dto::encode(&IncidentDoc::from(inc))?;
            sqlx::query(
                "INSERT INTO incidents (id, job, kind, state, detected_at_ms, body_json)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET job = excluded.job, kind = excluded.kind,
                   state = excluded.state, detected_at_ms = excluded.detected_at_ms,
                   body_json = excluded.body_json",
            )
            .bind(inc.id.0 as i64)
            .bind(inc.job.as_ref().map(|j| j.as_str().to_owned()))
            .bind(inc.kind.as_str())
            .bind(match inc.state {
                vigil_core::incident::IncidentState::Open => "open",
                vigil_core::incident::IncidentState::Resolved => "resolved",
            })
            .bind(inc.detected_at.0)
            .bind(body)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The first column of every row of `sql`, each a stored document `D`
    /// of a `T`; one that does not load is a corrupt store, named by `what`.
    async fn json_bodies<D, T>(&self, sql: &str, what: &str) -> Result<Vec<T>, StoreError>
    where
        D: serde::de::DeserializeOwned + TryInto<T, Error = dto::DocError>,
    {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let body: String = r.try_get(0)?;
                load::<D, T>(&body, what)
            })
            .collect()
    }

    /// Every incident, oldest first.
    pub async fn incidents(&self) -> Result<Vec<Incident>, StoreError> {
        self.json_bodies::<IncidentDoc, _>(
            "SELECT body_json FROM incidents ORDER BY id",
            "incident",
        )
        .await
    }

    /// Stores a job's recovery (replacing the previous record).
    pub async fn save_recovery(&self, r: &vigil_core::cluster::Recovery) -> Result<(), StoreError> {
        let body = dto::encode(&RecoveryDoc::from(r))?;
        sqlx::query(
            "INSERT INTO recoveries (job, body_json) VALUES ($1, $2)
             ON CONFLICT (job) DO UPDATE SET body_json = excluded.body_json",
        )
        .bind(r.job.as_str())
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a job's finished recovery.
    pub async fn delete_recovery(&self, job: &vigil_core::JobId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM recoveries WHERE job = $1")
            .bind(job.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores ledger amounts (absolute values) and job cursors, in one
    /// transaction.
    pub async fn save_ledger(
        &self,
        rows: &[LedgerRow],
        cursors: &[vigil_core::ledger::Cursor],
    ) -> Result<(), StoreError> {
        if rows.is_empty() && cursors.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for r in rows {
            // Unversioned: the culprit is part of the primary key.
            let culprit = serde_json::to_string(&CulpritDoc::from(&r.culprit))?;
            sqlx::query(
                "INSERT INTO ledger (job, bucket_ms, category, culprit_json, card_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (job, bucket_ms, category, culprit_json)
                 DO UPDATE SET card_ms = excluded.card_ms",
            )
            .bind(r.job.as_str())
            .bind(r.bucket_ms)
            .bind(r.category.as_str())
            .bind(culprit)
            .bind(r.card_ms)
            .execute(&mut *tx)
            .await?;
        }
        for c in cursors {
            let body = dto::encode(&CursorDoc(c.clone()))?;
            sqlx::query(
                "INSERT INTO ledger_cursors (job, body_json) VALUES ($1, $2)
                 ON CONFLICT (job) DO UPDATE SET body_json = excluded.body_json",
            )
            .bind(c.job.as_str())
            .bind(body)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored ledger.
    pub async fn ledger(
        &self,
    ) -> Result<(Vec<LedgerRow>, Vec<vigil_core::ledger::Cursor>), StoreError> {
        let rows = sqlx::query(
            "SELECT job, bucket_ms, category, culprit_json, card_ms FROM ledger ORDER BY job, bucket_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let job: String = r.try_get(0)?;
            let category: String = r.try_get(2)?;
            let culprit: String = r.try_get(3)?;
            out.push(LedgerRow {
                job: vigil_core::JobId::new(job)
                    .map_err(|e| StoreError::Corrupt(format!("ledger job: {e}")))?,
                bucket_ms: r.try_get(1)?,
                category: vigil_core::ledger::Category::parse(&category)
                    .ok_or_else(|| StoreError::Corrupt(format!("ledger category {category:?}")))?,
                culprit: load::<CulpritDoc, _>(&culprit, "ledger culprit")?,
                card_ms: r.try_get(4)?,
            });
        }
        let cursors = self
            .json_bodies::<CursorDoc, _>(
                "SELECT body_json FROM ledger_cursors ORDER BY job",
                "ledger cursor",
            )
            .await?;
        Ok((out, cursors))
    }

    /// Recoveries in progress when the controller stopped.
    pub async fn recoveries(&self) -> Result<Vec<vigil_core::cluster::Recovery>, StoreError> {
        self.json_bodies::<RecoveryDoc, _>(
            "SELECT body_json FROM recoveries ORDER BY job",
            "recovery",
        )
        .await
    }

    /// Appends feed events, in one transaction.
    pub async fn append_feed(&self, rows: &[FeedRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for f in rows {
            sqlx::query(
                "INSERT INTO feed (seq, at_ms, kind, data_json) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(f.seq as i64)
            .bind(f.at_ms)
            .bind(&f.kind)
            .bind(f.data.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Feed events with `seq > after`, ascending, at most `limit`.
    pub async fn feed_after(&self, after: u64, limit: u32) -> Result<Vec<FeedRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, data_json FROM feed WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get(3)?;
                Ok(FeedRow {
                    seq: r.try_get::<i64, _>(0)? as u64,
                    at_ms: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    data: serde_json::from_str(&data)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    /// Highest feed sequence number stored.
    pub async fn max_feed_seq(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT MAX(seq) FROM feed")
            .fetch_one(&self.pool)
            .await?;
        let max: Option<i64> = row.try_get(0)?;
        Ok(max.unwrap_or(0).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as the store wrote it before documents had a version.
    const OLD_INCIDENT: &str = r#"{"id":"inc-3","job":"pretrain","kind":"card_fault","state":"open","cause":{"node":"n2","card":5,"rank":null,"signal":"xid:79"},"detected_at":"2026-01-02T03:04:05.678Z","resolved_at":null,"phases":[{"name":"detect","start":"2026-01-02T03:04:05Z","end":null}],"action":null,"checkpoint":null,"lost_steps":null,"evidence":["xid 79 on n2/5"],"folded":0}"#;

    #[tokio::test]
    async fn an_old_unversioned_row_still_loads_beside_new_ones() {
        let dir = std::env::temp_dir().join(format!("vigil-store-dto-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&format!("sqlite://{}/vigil.db", dir.display()))
            .await
            .expect("store");
        sqlx::query(
            "INSERT INTO incidents (id, job, kind, state, detected_at_ms, body_json)
             VALUES (3, 'pretrain', 'card_fault', 'open', 1767323045678, $1)",
        )
        .bind(OLD_INCIDENT)
        .execute(store.pool())
        .await
        .expect("old row");
        let old = store.incidents().await.expect("load");
        assert_eq!(old.len(), 1);
        let mut new = old[0].clone();
        new.id = vigil_core::IncidentId(4);
        store.save_incidents(&[new]).await.expect("save");
        let both = store.incidents().await.expect("load both");
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].cause.what, both[1].cause.what);
        let row = sqlx::query("SELECT body_json FROM incidents WHERE id = 4")
            .fetch_one(store.pool())
            .await
            .expect("row");
        let body: String = row.try_get(0).expect("body");
        assert!(body.contains(r#""v":1"#), "{body}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
