//! The shared-deployment catalog: the same tables in PostgreSQL (features as JSONB), schema
//! versioned in `glassbox_schema`. A save is one transaction, written with array parameters
//! (`UNNEST`) so a 16k-feature catalog is a handful of statements, not 200k round trips.

use std::cell::RefCell;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};

use super::{sqlite::normalise_token, CatalogMeta, CatalogStore, Feature};
use crate::error::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE glassbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE glassbox_features (
         id INTEGER PRIMARY KEY, count BIGINT NOT NULL, contexts BIGINT NOT NULL,
         max REAL NOT NULL, mean DOUBLE PRECISION NOT NULL, label TEXT NOT NULL,
         label_score REAL NOT NULL, data JSONB NOT NULL);
     CREATE TABLE glassbox_feature_tokens (token TEXT NOT NULL, feature INTEGER NOT NULL, count INTEGER NOT NULL);
     CREATE INDEX glassbox_feature_tokens_by_token ON glassbox_feature_tokens (token, count DESC, feature);
     CREATE TABLE glassbox_feature_flags (concept TEXT NOT NULL, feature INTEGER NOT NULL, score REAL NOT NULL);
     CREATE INDEX glassbox_feature_flags_by_concept ON glassbox_feature_flags (concept, score DESC, feature);",
];

pub struct PgCatalog {
    /// For messages, password redacted.
    url: String,
    /// Reads take `&self` in the trait; the client needs `&mut` for every query.
    client: RefCell<Client>,
}

impl PgCatalog {
    /// Connects to `url` (`postgres://user@host/db`, or `host=/socket/dir user=...`) and
    /// migrates the schema.
    pub fn open(url: &str) -> Result<Self> {
        let where_ = redact(url);
        let mut client = Client::connect(url, NoTls).map_err(|e| {
            StoreError::catalog(
                &where_,
                format!("cannot connect to PostgreSQL: {}", describe(&e)),
            )
        })?;
        let err = |e: postgres::Error| {
            StoreError::catalog(&where_, format!("PostgreSQL: {}", describe(&e)))
        };
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS glassbox_schema (version INTEGER NOT NULL)")
            .map_err(err)?;
        let mut tx = client.transaction().map_err(err)?;
        // One migrator at a time across processes.
        tx.batch_execute("LOCK TABLE glassbox_schema IN EXCLUSIVE MODE")
            .map_err(err)?;
        let version: i32 = tx
            .query_opt("SELECT version FROM glassbox_schema", &[])
            .map_err(err)?
            .map_or(0, |r| r.get(0));
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::catalog(
                &where_,
                format!("catalog schema version {version} is newer than this glassbox; upgrade glassbox"),
            ));
        }
        for sql in &MIGRATIONS[version as usize..] {
            tx.batch_execute(sql).map_err(err)?;
        }
        tx.execute("DELETE FROM glassbox_schema", &[])
            .map_err(err)?;
        tx.execute(
            "INSERT INTO glassbox_schema (version) VALUES ($1)",
            &[&(MIGRATIONS.len() as i32)],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self {
            url: where_,
            client: RefCell::new(client),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::catalog(&self.url, format!("PostgreSQL: {e}"))
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        self.client
            .borrow_mut()
            .query(sql, params)
            .map_err(|e| self.err(describe(&e)))
    }

    fn parse(&self, v: serde_json::Value) -> Result<Feature> {
        serde_json::from_value(v).map_err(|e| self.err(format!("corrupt feature record ({e})")))
    }
}

/// The server's own words where it gave any ("db error" alone says nothing).
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// The URL without its password, for messages.
/// `url` with its password replaced by `***` (for messages and pages).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl CatalogStore for PgCatalog {
    fn meta(&self) -> Result<Option<CatalogMeta>> {
        let rows = self.query("SELECT value FROM glassbox_meta WHERE key = 'catalog'", &[])?;
        rows.into_iter()
            .next()
            .map(|r| {
                serde_json::from_str(&r.get::<_, String>(0))
                    .map_err(|e| self.err(format!("corrupt meta ({e})")))
            })
            .transpose()
    }

    fn features(&self) -> Result<Vec<Feature>> {
        let rows = self.query("SELECT data FROM glassbox_features ORDER BY id", &[])?;
        rows.into_iter().map(|r| self.parse(r.get(0))).collect()
    }

    fn feature(&self, id: u32) -> Result<Option<Feature>> {
        let rows = self.query(
            "SELECT data FROM glassbox_features WHERE id = $1",
            &[&(id as i32)],
        )?;
        rows.into_iter()
            .next()
            .map(|r| self.parse(r.get(0)))
            .transpose()
    }

    fn save(&mut self, meta: &CatalogMeta, features: &[Feature]) -> Result<u64> {
        let generation = self.meta()?.map_or(0, |m| m.generation) + 1;
        let meta = CatalogMeta {
            generation,
            ..meta.clone()
        };
        let url = self.url.clone();
        let err =
            |e: postgres::Error| StoreError::catalog(&url, format!("PostgreSQL: {}", describe(&e)));
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction().map_err(err)?;
        tx.batch_execute(
            "DELETE FROM glassbox_features; DELETE FROM glassbox_feature_tokens; DELETE FROM glassbox_feature_flags;",
        )
        .map_err(err)?;
        let ids: Vec<i32> = features.iter().map(|f| f.id as i32).collect();
        let counts: Vec<i64> = features.iter().map(|f| f.count as i64).collect();
        let contexts: Vec<i64> = features.iter().map(|f| f.contexts as i64).collect();
        let maxes: Vec<f32> = features.iter().map(|f| f.max).collect();
        let means: Vec<f64> = features.iter().map(|f| f.mean()).collect();
        let labels: Vec<&str> = features.iter().map(|f| f.label.as_str()).collect();
        let scores: Vec<f32> = features.iter().map(|f| f.label_score).collect();
        let data: Vec<serde_json::Value> = features
            .iter()
            .map(serde_json::to_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StoreError::catalog(&url, e.to_string()))?;
        tx.execute(
            "INSERT INTO glassbox_features (id, count, contexts, max, mean, label, label_score, data)
             SELECT * FROM UNNEST($1::int[], $2::bigint[], $3::bigint[], $4::real[], $5::float8[], $6::text[], $7::real[], $8::jsonb[])",
            &[&ids, &counts, &contexts, &maxes, &means, &labels, &scores, &data],
        )
        .map_err(err)?;
        let (mut tokens, mut t_ids, mut t_counts) = (Vec::new(), Vec::new(), Vec::new());
        let (mut concepts, mut f_ids, mut f_scores) = (Vec::new(), Vec::new(), Vec::new());
        for f in features {
            for (t, c) in &f.top_tokens {
                tokens.push(normalise_token(t));
                t_ids.push(f.id as i32);
                t_counts.push(*c as i32);
            }
            for flag in &f.flags {
                concepts.push(flag.concept.clone());
                f_ids.push(f.id as i32);
                f_scores.push(flag.score);
            }
        }
        tx.execute(
            "INSERT INTO glassbox_feature_tokens (token, feature, count) SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[])",
            &[&tokens, &t_ids, &t_counts],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO glassbox_feature_flags (concept, feature, score) SELECT * FROM UNNEST($1::text[], $2::int[], $3::real[])",
            &[&concepts, &f_ids, &f_scores],
        )
        .map_err(err)?;
        let meta_json =
            serde_json::to_string(&meta).map_err(|e| StoreError::catalog(&url, e.to_string()))?;
        tx.execute(
            "INSERT INTO glassbox_meta (key, value) VALUES ('catalog', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&meta_json],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(generation)
    }

    fn flagged(&self, concept: &str, limit: usize) -> Result<Vec<(u32, f32)>> {
        let rows = self.query(
            "SELECT feature, score FROM glassbox_feature_flags WHERE concept = $1 ORDER BY score DESC, feature LIMIT $2",
            &[&concept, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
            .collect())
    }

    fn features_on_token(&self, token: &str, limit: usize) -> Result<Vec<(u32, u32)>> {
        let rows = self.query(
            "SELECT feature, count FROM glassbox_feature_tokens WHERE token = $1 ORDER BY count DESC, feature LIMIT $2",
            &[&normalise_token(token), &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i32>(1) as u32))
            .collect())
    }
}
