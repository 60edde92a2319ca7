//! The embedded catalog: one SQLite file (WAL), schema versioned by `PRAGMA user_version`.
//! Scalar columns serve SQL queries and sorting; the whole feature is kept as JSON beside them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{CatalogMeta, CatalogStore, Feature, FeatureSummary};
use crate::error::{Result, StoreError};

/// Schema migrations, applied in order; `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE features (
         id INTEGER PRIMARY KEY, count INTEGER NOT NULL, contexts INTEGER NOT NULL,
         max REAL NOT NULL, mean REAL NOT NULL, label TEXT NOT NULL, label_score REAL NOT NULL,
         data TEXT NOT NULL);
     CREATE TABLE feature_tokens (token TEXT NOT NULL, feature INTEGER NOT NULL, count INTEGER NOT NULL);
     CREATE INDEX feature_tokens_by_token ON feature_tokens (token, count DESC);",
    "CREATE TABLE feature_flags (concept TEXT NOT NULL, feature INTEGER NOT NULL, score REAL NOT NULL);
     CREATE INDEX feature_flags_by_concept ON feature_flags (concept, score DESC);",
    // The tie-breaker of the ORDER BY belongs in the index, or every match is sorted.
    "DROP INDEX feature_tokens_by_token;
     CREATE INDEX feature_tokens_by_token ON feature_tokens (token, count DESC, feature);
     DROP INDEX feature_flags_by_concept;
     CREATE INDEX feature_flags_by_concept ON feature_flags (concept, score DESC, feature);",
];

/// How long an opener waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Switching a new file to WAL needs the file to itself, and SQLite answers "database is
/// locked" at once instead of waiting in the busy handler (seen when a build and a reader
/// opened a new catalog together): retry for as long as the busy timeout.
fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5))
            }
            done => return done,
        }
    }
}

pub struct SqliteCatalog {
    path: PathBuf,
    conn: Connection,
}

impl SqliteCatalog {
    /// Opens (creating and migrating if needed) the catalog database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e: rusqlite::Error| StoreError::catalog_file(path, format!("SQLite: {e}"));
        // Which step of opening failed: "database is locked" alone does not say.
        let during = |step: &'static str| {
            move |e: rusqlite::Error| {
                StoreError::catalog_file(path, format!("SQLite ({step}): {e}"))
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let mut conn = Connection::open(path).map_err(err)?;
        // A reader (`catalog show`, the server) and a build may open the file at once: wait for
        // the other's lock instead of failing with "database is locked" (which killed builds
        // polled by a reader, tests/catalog.rs's kill test under load).
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        use_wal(&conn).map_err(during("switching to WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(during("setting synchronous"))?;
        // Two processes may open a new file at once (a build and a reader polling it): each
        // read version 0 and the second's `CREATE TABLE meta` failed. Migrate under the write
        // lock, reading the version again once the lock is held.
        let read_version = |c: &Connection| -> rusqlite::Result<usize> {
            c.pragma_query_value(None, "user_version", |r| r.get(0))
        };
        let mut version = read_version(&conn).map_err(during("reading the schema version"))?;
        if version < MIGRATIONS.len() {
            let migrating = during("migrating the schema");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(migrating)?;
            version = read_version(&tx).map_err(migrating)?;
            if version < MIGRATIONS.len() {
                for sql in &MIGRATIONS[version..] {
                    tx.execute_batch(sql).map_err(migrating)?;
                }
                version = MIGRATIONS.len();
                tx.pragma_update(None, "user_version", version)
                    .map_err(migrating)?;
            }
            tx.commit().map_err(migrating)?;
        }
        if version > MIGRATIONS.len() {
            return Err(StoreError::catalog_file(
                path,
                format!("catalog schema version {version} is newer than this glassbox ({}); upgrade glassbox", MIGRATIONS.len()),
            ));
        }
        Ok(Self {
            path: path.into(),
            conn,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::catalog_file(&self.path, format!("SQLite: {e}"))
    }

    fn parse(&self, json: &str) -> Result<Feature> {
        serde_json::from_str(json).map_err(|e| self.err(format!("corrupt feature record ({e})")))
    }
}

impl CatalogStore for SqliteCatalog {
    fn meta(&self) -> Result<Option<CatalogMeta>> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'catalog'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| self.err(format!("corrupt meta ({e})"))))
            .transpose()
    }

    fn features(&self) -> Result<Vec<Feature>> {
        let mut stmt = self
            .conn
            .prepare("SELECT data FROM features ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e)).and_then(|j| self.parse(&j)))
            .collect()
    }

    fn feature(&self, id: u32) -> Result<Option<Feature>> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT data FROM features WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| self.parse(&j)).transpose()
    }

    fn save(&mut self, meta: &CatalogMeta, features: &[Feature]) -> Result<u64> {
        let generation = self.meta()?.map_or(0, |m| m.generation) + 1;
        let meta = CatalogMeta {
            generation,
            ..meta.clone()
        };
        let path = self.path.clone();
        let err = |e: rusqlite::Error| StoreError::catalog_file(&path, format!("SQLite: {e}"));
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute_batch(
            "DELETE FROM features; DELETE FROM feature_tokens; DELETE FROM feature_flags;",
        )
        .map_err(err)?;
        {
            let mut f_stmt = tx
                .prepare("INSERT INTO features (id, count, contexts, max, mean, label, label_score, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .map_err(err)?;
            let mut t_stmt = tx
                .prepare("INSERT INTO feature_tokens (token, feature, count) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            let mut flag_stmt = tx
                .prepare("INSERT INTO feature_flags (concept, feature, score) VALUES (?1, ?2, ?3)")
                .map_err(err)?;
            for f in features {
                let json = serde_json::to_string(f)
                    .map_err(|e| StoreError::catalog_file(&path, e.to_string()))?;
                f_stmt
                    .execute(params![
                        f.id,
                        f.count as i64,
                        f.contexts as i64,
                        f.max,
                        f.mean(),
                        f.label,
                        f.label_score,
                        json
                    ])
                    .map_err(err)?;
                for (token, count) in &f.top_tokens {
                    t_stmt
                        .execute(params![normalise_token(token), f.id, count])
                        .map_err(err)?;
                }
                for flag in &f.flags {
                    flag_stmt
                        .execute(params![flag.concept, f.id, flag.score])
                        .map_err(err)?;
                }
            }
        }
        let json = serde_json::to_string(&meta)
            .map_err(|e| StoreError::catalog_file(&path, e.to_string()))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('catalog', ?1)",
            [json],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(generation)
    }

    fn flagged(&self, concept: &str, limit: usize) -> Result<Vec<(u32, f32)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT feature, score FROM feature_flags WHERE concept = ?1 ORDER BY score DESC, feature LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![concept, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    fn summaries(&self) -> Result<Vec<FeatureSummary>> {
        self.summary_rows()
    }

    fn features_on_token(&self, token: &str, limit: usize) -> Result<Vec<(u32, u32)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT feature, count FROM feature_tokens WHERE token = ?1 ORDER BY count DESC, feature LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![normalise_token(token), limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }
}

impl SqliteCatalog {
    fn summary_rows(&self) -> Result<Vec<FeatureSummary>> {
        let mut flags: std::collections::HashMap<u32, Vec<String>> = Default::default();
        let mut stmt = self
            .conn
            .prepare("SELECT feature, concept FROM feature_flags ORDER BY feature, score DESC")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (id, concept) = row.map_err(|e| self.err(e))?;
            flags.entry(id).or_default().push(concept);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT id, count, max, label, label_score FROM features ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(FeatureSummary {
                    id: r.get(0)?,
                    count: r.get::<_, i64>(1)?.max(0) as u64,
                    max: r.get(2)?,
                    label: r.get(3)?,
                    label_score: r.get(4)?,
                    flags: Vec::new(),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| {
            r.map_err(|e| self.err(e)).map(|mut s| {
                s.flags = flags.remove(&s.id).unwrap_or_default();
                s
            })
        })
        .collect()
    }
}

/// Tokens are matched without case, word-piece marks (`##`, `Ġ`, `▁`) or surrounding space.
pub fn normalise_token(t: &str) -> String {
    t.trim()
        .trim_start_matches("##")
        .trim_start_matches(['Ġ', '▁'])
        .to_lowercase()
}
