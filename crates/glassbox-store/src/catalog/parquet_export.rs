//! A catalog as Parquet tables for pandas, polars, DuckDB or Spark: `features.parquet` (one
//! row per feature), `examples.parquet` (its contexts), `vocab.parquet` (promoted and
//! suppressed tokens), `flags.parquet` (sensitivity flags with evidence) and `meta.json`. Flat
//! tables joined on `feature`; no nested types, so every reader takes them as they are.

use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, FloatType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde::Serialize;

use super::{CatalogMeta, Feature};
use crate::error::{Result, StoreError};

/// One column of a table being written.
enum Values {
    Int(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    Text(Vec<String>),
}

struct Table {
    name: &'static str,
    columns: Vec<(&'static str, Values)>,
}

impl Table {
    fn rows(&self) -> usize {
        self.columns.first().map_or(0, |(_, v)| match v {
            Values::Int(x) => x.len(),
            Values::Float(x) => x.len(),
            Values::Double(x) => x.len(),
            Values::Text(x) => x.len(),
        })
    }

    fn schema(&self) -> String {
        let fields: Vec<String> = self
            .columns
            .iter()
            .map(|(name, v)| match v {
                Values::Int(_) => format!("REQUIRED INT64 {name};"),
                Values::Float(_) => format!("REQUIRED FLOAT {name};"),
                Values::Double(_) => format!("REQUIRED DOUBLE {name};"),
                Values::Text(_) => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
            })
            .collect();
        format!("message {} {{ {} }}", self.name, fields.join(" "))
    }

    fn write(&self, path: &Path) -> parquet::errors::Result<()> {
        let schema = Arc::new(parse_message_type(&self.schema())?);
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path)?;
        let mut writer = SerializedFileWriter::new(file, schema, props)?;
        let mut group = writer.next_row_group()?;
        for (_, values) in &self.columns {
            let Some(mut col) = group.next_column()? else {
                break;
            };
            match values {
                Values::Int(x) => col.typed::<Int64Type>().write_batch(x, None, None)?,
                Values::Float(x) => col.typed::<FloatType>().write_batch(x, None, None)?,
                Values::Double(x) => col.typed::<DoubleType>().write_batch(x, None, None)?,
                Values::Text(x) => {
                    let bytes: Vec<ByteArray> = x
                        .iter()
                        .map(|s| ByteArray::from(s.as_bytes().to_vec()))
                        .collect();
                    col.typed::<ByteArrayType>()
                        .write_batch(&bytes, None, None)?
                }
            };
            col.close()?;
        }
        group.close()?;
        writer.close()?;
        Ok(())
    }
}

/// What an export wrote: each table's file and row count.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub tables: Vec<(String, usize)>,
}

/// Writes the catalog's tables into `dir`, replacing it atomically.
pub fn export(dir: &Path, meta: &CatalogMeta, features: &[Feature]) -> Result<Exported> {
    let tables = tables(meta, features);
    let meta_json = serde_json::to_vec_pretty(meta)
        .map_err(|e| StoreError::catalog_file(dir, e.to_string()))?;
    glassbox_model::fsutil::replace_dir(dir, |tmp| {
        for t in &tables {
            t.write(&tmp.join(format!("{}.parquet", t.name)))
                .map_err(|e| std::io::Error::other(format!("{}.parquet: {e}", t.name)))?;
        }
        std::fs::write(tmp.join("meta.json"), &meta_json)
    })
    .map_err(|e| StoreError::io(dir, e))?;
    Ok(Exported {
        tables: tables
            .iter()
            .map(|t| (format!("{}.parquet", t.name), t.rows()))
            .collect(),
    })
}

fn tables(meta: &CatalogMeta, features: &[Feature]) -> Vec<Table> {
    let ids = |n: &dyn Fn(&Feature) -> usize| -> Vec<i64> {
        features
            .iter()
            .flat_map(|f| std::iter::repeat_n(i64::from(f.id), n(f)))
            .collect()
    };
    let feature_table = Table {
        name: "features",
        columns: vec![
            (
                "feature",
                Values::Int(features.iter().map(|f| i64::from(f.id)).collect()),
            ),
            (
                "count",
                Values::Int(features.iter().map(|f| f.count as i64).collect()),
            ),
            (
                "contexts",
                Values::Int(features.iter().map(|f| f.contexts as i64).collect()),
            ),
            (
                "density",
                Values::Double(features.iter().map(|f| f.density(meta.tokens)).collect()),
            ),
            (
                "mean",
                Values::Double(features.iter().map(Feature::mean).collect()),
            ),
            (
                "max",
                Values::Float(features.iter().map(|f| f.max).collect()),
            ),
            (
                "label",
                Values::Text(features.iter().map(|f| f.label.clone()).collect()),
            ),
            (
                "label_score",
                Values::Float(features.iter().map(|f| f.label_score).collect()),
            ),
            (
                "label_method",
                Values::Text(features.iter().map(|f| f.label_method.clone()).collect()),
            ),
            (
                "flags",
                Values::Text(
                    features
                        .iter()
                        .map(|f| {
                            f.flags
                                .iter()
                                .map(|g| g.concept.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .collect(),
                ),
            ),
        ],
    };
    let examples: Vec<_> = features.iter().flat_map(|f| &f.examples).collect();
    let example_table = Table {
        name: "examples",
        columns: vec![
            ("feature", Values::Int(ids(&|f| f.examples.len()))),
            (
                "kind",
                Values::Text(
                    examples
                        .iter()
                        .map(|e| format!("{:?}", e.kind).to_lowercase())
                        .collect(),
                ),
            ),
            (
                "activation",
                Values::Float(examples.iter().map(|e| e.activation).collect()),
            ),
            (
                "context",
                Values::Int(examples.iter().map(|e| e.context as i64).collect()),
            ),
            (
                "text",
                Values::Text(examples.iter().map(|e| e.plain_text()).collect()),
            ),
            (
                "focus_token",
                Values::Text(
                    examples
                        .iter()
                        .map(|e| e.focus_text().to_string())
                        .collect(),
                ),
            ),
        ],
    };
    let vocab: Vec<(u32, &str, usize, &(String, f32))> = features
        .iter()
        .flat_map(|f| {
            let promoted = f
                .promoted
                .iter()
                .enumerate()
                .map(move |(i, t)| (f.id, "promoted", i, t));
            let suppressed = f
                .suppressed
                .iter()
                .enumerate()
                .map(move |(i, t)| (f.id, "suppressed", i, t));
            promoted.chain(suppressed)
        })
        .collect();
    let vocab_table = Table {
        name: "vocab",
        columns: vec![
            (
                "feature",
                Values::Int(vocab.iter().map(|v| i64::from(v.0)).collect()),
            ),
            (
                "effect",
                Values::Text(vocab.iter().map(|v| v.1.to_string()).collect()),
            ),
            (
                "rank",
                Values::Int(vocab.iter().map(|v| v.2 as i64).collect()),
            ),
            (
                "token",
                Values::Text(vocab.iter().map(|v| v.3 .0.clone()).collect()),
            ),
            (
                "value",
                Values::Float(vocab.iter().map(|v| v.3 .1).collect()),
            ),
        ],
    };
    let flags: Vec<_> = features.iter().flat_map(|f| &f.flags).collect();
    let flag_table = Table {
        name: "flags",
        columns: vec![
            ("feature", Values::Int(ids(&|f| f.flags.len()))),
            (
                "concept",
                Values::Text(flags.iter().map(|g| g.concept.clone()).collect()),
            ),
            (
                "score",
                Values::Float(flags.iter().map(|g| g.score).collect()),
            ),
            (
                "evidence",
                Values::Text(flags.iter().map(|g| g.evidence.clone()).collect()),
            ),
        ],
    };
    vec![feature_table, example_table, vocab_table, flag_table]
}
