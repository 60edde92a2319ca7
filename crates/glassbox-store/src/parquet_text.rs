//! Documents from the `text` column of a Parquet file, read row group by row group through
//! the `parquet` crate's row API (no Arrow), projected onto that one column. The crate panics
//! on some corrupt files (found by fuzzing); those calls run under `guard` and fail as errors.

use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::Field;
use parquet::schema::types::Type;

use glassbox_model::guard::guard;

use crate::error::{Result, StoreError};

pub(crate) struct ParquetTexts {
    path: PathBuf,
    rows: RowIter<'static>,
    row: usize,
    /// Set after the reader panicked: its state is unknown, so nothing more is read.
    broken: bool,
    /// Rows without text since the last row with text.
    empty_run: usize,
}

/// More rows without text in a row than a text corpus has: a few bytes of run-length-encoded
/// nulls can claim billions of rows (found by fuzzing: 231 bytes spun for minutes).
const MAX_EMPTY_RUN: usize = 1 << 20;

impl ParquetTexts {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let bad = |msg: String| StoreError::Corpus {
            path: path.into(),
            msg,
        };
        let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
        let reader = guard(|| SerializedFileReader::new(file))
            .map_err(|p| {
                bad(format!(
                    "not a readable Parquet file (the reader failed: {p})"
                ))
            })?
            .map_err(|e| bad(format!("not a readable Parquet file ({e})")))?;
        let schema = reader.metadata().file_metadata().schema();
        let text = schema
            .get_fields()
            .iter()
            .find(|f| f.name() == "text")
            .ok_or_else(|| {
                let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
                bad(format!(
                    "no column \"text\" (columns: {}); a corpus needs its documents in a string column named text",
                    names.join(", ")
                ))
            })?
            .clone();
        let projection = Type::group_type_builder(schema.name())
            .with_fields(vec![text])
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let rows = guard(|| RowIter::from_file_into(Box::new(reader)).project(Some(projection)))
            .map_err(|p| bad(format!("the reader failed: {p}")))?
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            path: path.into(),
            rows,
            row: 0,
            broken: false,
            empty_run: 0,
        })
    }
}

impl Iterator for ParquetTexts {
    /// A document, or `None` for a null or empty `text`.
    type Item = Result<Option<String>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.broken {
            return None;
        }
        let row = guard(|| self.rows.next());
        self.row += 1;
        let bad = |msg: String| StoreError::Corpus {
            path: self.path.clone(),
            msg: format!("row {}: {msg}", self.row),
        };
        let row = match row {
            Ok(None) => return None,
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(e))) => return Some(Err(bad(format!("unreadable ({e})")))),
            Err(p) => {
                self.broken = true;
                return Some(Err(bad(format!("unreadable (the reader failed: {p})"))));
            }
        };
        let doc = match row.get_column_iter().next().map(|(_, f)| f) {
            Some(Field::Str(s)) => Ok(Some(s.clone())),
            Some(Field::Bytes(b)) => std::str::from_utf8(b.data())
                .map(|s| Some(s.to_string()))
                .map_err(|e| bad(format!("invalid UTF-8 at byte {}", e.valid_up_to()))),
            Some(Field::Null) | None => Ok(None),
            Some(other) => Err(bad(format!("\"text\" is not a string but {other:?}"))),
        };
        match &doc {
            Ok(Some(t)) if !t.trim().is_empty() => self.empty_run = 0,
            _ => self.empty_run += 1,
        }
        if self.empty_run > MAX_EMPTY_RUN {
            self.broken = true;
            return Some(Err(bad(format!(
                "{MAX_EMPTY_RUN} rows in a row have no text: not a text corpus, or a damaged file"
            ))));
        }
        Some(doc)
    }
}
