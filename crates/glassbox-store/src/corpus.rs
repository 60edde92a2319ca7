//! Text corpora: streamed documents from plain text, JSONL, Parquet or gzip-compressed files,
//! and the packaged default corpus built from Debian packages.
//!
//! Formats, chosen by extension (a directory means every such file below it, sorted):
//! - `.txt`: documents separated by one or more blank lines;
//! - `.jsonl`: one JSON object per line with a string field `text`;
//! - either with `.gz` appended;
//! - `.parquet`: a string column `text` (snappy, gzip or uncompressed pages), read a row
//!   group at a time.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::parquet_text::ParquetTexts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Jsonl,
    Parquet,
}

const FORMATS: &str = ".txt, .jsonl (optionally .gz) or .parquet";

fn format_of(path: &Path) -> Option<(Format, bool)> {
    let name = path.file_name()?.to_str()?;
    let (name, gz) = match name.strip_suffix(".gz") {
        Some(n) => (n, true),
        None => (name, false),
    };
    if name.ends_with(".parquet") && !gz {
        Some((Format::Parquet, false))
    } else if name.ends_with(".jsonl") {
        Some((Format::Jsonl, gz))
    } else if name.ends_with(".txt") {
        Some((Format::Text, gz))
    } else {
        None
    }
}

/// The corpus files at `path`, in a stable order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| StoreError::io(path, e))?;
    if meta.is_file() {
        if format_of(path).is_none() {
            return Err(StoreError::Corpus {
                path: path.into(),
                msg: format!("unknown corpus format; use {FORMATS}"),
            });
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let p = entry.map_err(|e| StoreError::io(&dir, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if format_of(&p).is_some() {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(StoreError::Corpus {
            path: path.into(),
            msg: format!("no corpus files ({FORMATS}) in this directory"),
        });
    }
    Ok(out)
}

/// Streams documents from a corpus; holds one line (or one Parquet row group) of one file in
/// memory at a time.
pub struct Documents {
    files: VecDeque<PathBuf>,
    current: Option<Source>,
    hasher: Sha256,
}

/// The file being read.
enum Source {
    Lines(LineFile),
    Parquet(ParquetTexts),
}

struct LineFile {
    path: PathBuf,
    format: Format,
    reader: Box<dyn BufRead>,
    line_no: usize,
}

impl Documents {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            files: files(path)?.into(),
            current: None,
            hasher: Sha256::new(),
        })
    }

    /// SHA-256 over every document read so far (the whole corpus once exhausted).
    pub fn hash_so_far(&self) -> String {
        fsutil::hex(&self.hasher.clone().finalize())
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some(path) = self.files.pop_front() else {
            return Ok(false);
        };
        let (format, gz) = format_of(&path).unwrap_or((Format::Text, false));
        if format == Format::Parquet {
            self.current = Some(Source::Parquet(ParquetTexts::open(&path)?));
            return Ok(true);
        }
        let f = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let reader: Box<dyn Read> = if gz {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else {
            Box::new(f)
        };
        self.current = Some(Source::Lines(LineFile {
            path,
            format,
            reader: Box::new(BufReader::with_capacity(1 << 16, reader)),
            line_no: 0,
        }));
        Ok(true)
    }

    fn next_doc(&mut self) -> Result<Option<String>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let doc = match self.current.as_mut() {
                None => continue,
                Some(Source::Lines(file)) => file.next_doc()?,
                Some(Source::Parquet(rows)) => match rows.next() {
                    None => None,
                    Some(row) => Some(row?.unwrap_or_default()),
                },
            };
            let Some(doc) = doc else {
                self.current = None; // end of this file
                continue;
            };
            if doc.trim().is_empty() {
                continue;
            }
            self.hasher.update((doc.len() as u64).to_le_bytes());
            self.hasher.update(doc.as_bytes());
            return Ok(Some(doc));
        }
    }
}

impl LineFile {
    /// The next document of a text or JSONL file (possibly blank), `None` at its end.
    fn next_doc(&mut self) -> Result<Option<String>> {
        let mut doc = String::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|e| StoreError::io(&self.path, e))?;
            if n == 0 {
                return Ok((!doc.is_empty()).then_some(doc));
            }
            self.line_no += 1;
            let bad = |msg: String| StoreError::Corpus {
                path: self.path.clone(),
                msg: format!("line {}: {msg}", self.line_no),
            };
            let text = std::str::from_utf8(&line)
                .map_err(|e| bad(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
            match self.format {
                Format::Jsonl => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value =
                        serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
                    let t = v
                        .get("text")
                        .and_then(|t| t.as_str())
                        .ok_or_else(|| bad("no string field \"text\"".into()))?;
                    return Ok(Some(t.to_string()));
                }
                _ => {
                    if text.trim().is_empty() {
                        if doc.is_empty() {
                            continue;
                        }
                        return Ok(Some(doc));
                    }
                    doc.push_str(text);
                }
            }
        }
    }
}

impl Iterator for Documents {
    type Item = Result<String>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_doc().transpose()
    }
}

/// The default corpus: real English prose and technical text from three Debian packages,
/// installed by `glassbox setup` with `apt-get download` + `dpkg-deb -x` (no root needed).
pub struct PackagedCorpus {
    pub name: &'static str,
    pub packages: &'static [(&'static str, &'static str)],
}

pub const DEFAULT_CORPUS: PackagedCorpus = PackagedCorpus {
    name: "debian-docs",
    packages: &[
        (
            "python3.11-doc",
            "Python 3.11 documentation sources (reStructuredText), PSF-2.0",
        ),
        (
            "linux-doc-6.1",
            "Linux 6.1 kernel documentation (reStructuredText), GPL-2.0",
        ),
        (
            "fortunes",
            "fortune-mod cookies: quotations, literature, humour; BSD-4-Clause and others",
        ),
    ],
};

impl PackagedCorpus {
    pub fn dir(&self, home: &Path) -> PathBuf {
        home.join("corpora").join(self.name)
    }

    pub fn is_installed(&self, home: &Path) -> bool {
        self.dir(home).join("SOURCES.json").is_file()
    }

    /// Downloads the packages and writes their text as gzip-compressed JSONL, one file per
    /// package, into a temporary directory renamed into place at the end.
    pub fn install(&self, home: &Path) -> Result<bool> {
        if self.is_installed(home) {
            return Ok(false);
        }
        let err = |msg: String| StoreError::Setup {
            name: self.name.into(),
            msg,
        };
        let dest = self.dir(home);
        let parent = dest.parent().unwrap_or(home);
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        let tmp = parent.join(format!(".{}.partial-{}", self.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let debs = tmp.join("debs");
        std::fs::create_dir_all(&debs).map_err(|e| StoreError::io(&debs, e))?;
        let run = |cmd: &mut Command, what: &str| -> Result<()> {
            let out = cmd.output().map_err(|e| {
                err(format!(
                    "cannot run {what} ({e}); this needs a Debian-based system"
                ))
            })?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let hint = if what.starts_with("apt-get") {
                    "\n(if packages are not found, run `apt-get update` as root)"
                } else {
                    ""
                };
                return Err(err(format!(
                    "{what} failed: {}{hint}",
                    stderr.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
                )));
            }
            Ok(())
        };
        let names: Vec<&str> = self.packages.iter().map(|p| p.0).collect();
        run(
            Command::new("apt-get")
                .arg("download")
                .args(&names)
                .current_dir(&debs),
            "apt-get download",
        )?;
        let mut sources = Vec::new();
        for (pkg, description) in self.packages {
            let deb = std::fs::read_dir(&debs)
                .map_err(|e| StoreError::io(&debs, e))?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")))
                })
                .ok_or_else(|| err(format!("{pkg}: no .deb downloaded")))?;
            let root = tmp.join("x").join(pkg);
            std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
            run(
                Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
                "dpkg-deb -x",
            )?;
            let out = tmp.join(format!("{pkg}.jsonl.gz"));
            let docs = extract_documents(pkg, &root, &out)?;
            sources.push(serde_json::json!({
                "package": pkg, "deb": deb.file_name().and_then(|n| n.to_str()), "description": description,
                "documents": docs, "sha256": fsutil::sha256_file(&deb)?,
            }));
            std::fs::remove_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        }
        std::fs::remove_dir_all(tmp.join("x")).ok();
        std::fs::remove_dir_all(&debs).map_err(|e| StoreError::io(&debs, e))?;
        let manifest = serde_json::json!({"corpus": self.name, "sources": sources});
        fsutil::atomic_write(&tmp.join("SOURCES.json"), manifest.to_string().as_bytes())?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(&tmp, &dest).map_err(|e| StoreError::io(&dest, e))?;
        Ok(true)
    }
}

/// Writes one package's documents as gzip JSONL; returns how many.
fn extract_documents(pkg: &str, root: &Path, out: &Path) -> Result<usize> {
    use std::io::Write;
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(true);
            if p.is_dir() && !is_link {
                stack.push(p);
            } else if !is_link && p.is_file() {
                paths.push(p);
            }
        }
    }
    paths.sort();
    let file = std::fs::File::create(out).map_err(|e| StoreError::io(out, e))?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    let mut count = 0;
    for p in paths {
        let name = p.to_string_lossy().to_string();
        let docs: Vec<String> = if name.ends_with(".rst.txt") && name.contains("/_sources/") {
            vec![read_text(&p, false)?]
        } else if name.ends_with(".rst.gz") && name.contains("/Documentation/") {
            vec![read_text(&p, true)?]
        } else if name.contains("/games/fortunes/")
            && !name.ends_with(".dat")
            && !name.ends_with(".u8")
        {
            // Fortune files hold one cookie per block, separated by lines of `%`.
            read_text(&p, false)?
                .split("\n%\n")
                .map(str::to_string)
                .collect()
        } else {
            continue;
        };
        let source = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .to_string();
        for text in docs.into_iter().filter(|d| !d.trim().is_empty()) {
            let line = serde_json::json!({"text": text, "source": format!("{pkg}:{source}")});
            writeln!(gz, "{line}").map_err(|e| StoreError::io(out, e))?;
            count += 1;
        }
    }
    gz.finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| StoreError::io(out, e))?;
    Ok(count)
}

/// Reads a text file, lossily: a few packaged files are Latin-1.
fn read_text(path: &Path, gz: bool) -> Result<String> {
    let mut bytes = Vec::new();
    let f = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    r.read_to_end(&mut bytes)
        .map_err(|e| StoreError::io(path, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a Parquet file with an id column and an optional UTF-8 `text` column (`None` is
    /// null), `per_group` rows per row group, snappy-compressed.
    fn write_parquet(path: &Path, texts: &[Option<&str>], per_group: usize) {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(
                "message doc { REQUIRED INT64 id; OPTIONAL BYTE_ARRAY text (UTF8); }",
            )
            .unwrap(),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        for (g, group) in texts.chunks(per_group).enumerate() {
            let mut rg = w.next_row_group().unwrap();
            let ids: Vec<i64> = (0..group.len())
                .map(|i| (g * per_group + i) as i64)
                .collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<Int64Type>()
                .write_batch(&ids, None, None)
                .unwrap();
            col.close().unwrap();
            let values: Vec<ByteArray> = group.iter().flatten().map(|t| (*t).into()).collect();
            let defs: Vec<i16> = group.iter().map(|t| i16::from(t.is_some())).collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&values, Some(&defs), None)
                .unwrap();
            col.close().unwrap();
            rg.close().unwrap();
        }
        w.close().unwrap();
    }

    #[test]
    fn reads_the_text_column_of_parquet_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.parquet");
        let texts = [
            Some("Grüße aus Köln"),
            None,
            Some("second"),
            Some(""),
            Some("third, in the next row group"),
        ];
        write_parquet(&path, &texts, 2);
        let docs: Vec<String> = Documents::open(&path)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            docs,
            ["Grüße aus Köln", "second", "third, in the next row group"],
            "nulls and empty texts are skipped"
        );
        assert_eq!(files(dir.path()).unwrap(), vec![path.clone()]);

        // No `text` column: the error lists the columns there are.
        let other = dir.path().join("other.parquet");
        let schema = std::sync::Arc::new(
            parquet::schema::parser::parse_message_type("message m { REQUIRED INT32 body; }")
                .unwrap(),
        );
        let w = parquet::file::writer::SerializedFileWriter::new(
            std::fs::File::create(&other).unwrap(),
            schema,
            Default::default(),
        )
        .unwrap();
        w.close().unwrap();
        let err = first_error(&other);
        assert!(
            err.contains("no column \"text\"") && err.contains("body"),
            "{err}"
        );

        // A truncated file is named, not a panic.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = first_error(&path);
        assert!(
            err.contains("docs.parquet") && err.contains("Parquet"),
            "{err}"
        );
    }

    /// The error of the first document read from `path`.
    fn first_error(path: &Path) -> String {
        Documents::open(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err()
            .to_string()
    }

    /// The file at `path` with `field` added at the end of its footer's `FileMetaData` struct.
    fn with_footer_field(path: &Path, field: &[u8]) -> Vec<u8> {
        let bytes = std::fs::read(path).unwrap();
        let n = bytes.len();
        let len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        let (start, stop) = (n - 8 - len, n - 9); // `stop`: the struct's closing 0x00
        assert_eq!(bytes[stop], 0);
        let mut out = bytes[..stop].to_vec();
        out.extend_from_slice(field);
        out.extend_from_slice(&bytes[stop..n - 8]);
        out.extend_from_slice(&((len + field.len()) as u32).to_le_bytes());
        out.extend_from_slice(b"PAR1");
        assert_eq!(out.len(), start + len + field.len() + 8);
        out
    }

    /// Found by fuzzing: parquet 60.1 skipped an unknown list of booleans as if each element
    /// took no bytes, so a footer claiming 2^31 of them looped 2^31 times on no input
    /// (vendor/parquet.patch). Each element takes one byte, as the Thrift compact protocol says.
    #[test]
    fn unknown_footer_lists_of_booleans_are_skipped_byte_by_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.parquet");
        write_parquet(&path, &[Some("kept")], 1);
        // Field 100 (a full field id: type 9 = list, zigzag varint 200), a list of 3 booleans.
        let three = [0x09, 0xC8, 0x01, 0x31, 0x01, 0x01, 0x01];
        std::fs::write(&path, with_footer_field(&path, &three)).unwrap();
        let docs: Vec<String> = Documents::open(&path)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(docs, ["kept"], "the unknown field is skipped whole");
        // The same list claiming 2^31 - 1 booleans, twice, with none there: an error at once.
        let claim = [0x09, 0xC8, 0x01, 0xF1, 0xFF, 0xFF, 0xFF, 0xFF, 0x07];
        write_parquet(&path, &[Some("kept")], 1);
        std::fs::write(&path, with_footer_field(&path, &[claim, claim].concat())).unwrap();
        let err = first_error(&path);
        assert!(err.contains("docs.parquet"), "{err}");
    }

    #[test]
    fn reads_text_and_jsonl_and_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.txt"),
            "first doc\nstill first\n\n\nsecond doc\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.jsonl"),
            "{\"text\": \"third\"}\n\n{\"text\": \"fourth\"}\n",
        )
        .unwrap();
        let docs: Vec<String> = Documents::open(dir.path())
            .unwrap()
            .map(|d| d.unwrap())
            .collect();
        assert_eq!(
            docs,
            [
                "first doc\nstill first\n",
                "second doc\n",
                "third",
                "fourth"
            ]
        );

        std::fs::write(dir.path().join("c.jsonl"), "{\"text\": 5}\n").unwrap();
        let err = Documents::open(dir.path())
            .unwrap()
            .find_map(|d| d.err())
            .unwrap()
            .to_string();
        assert!(
            err.contains("c.jsonl") && err.contains("line 1") && err.contains("\"text\""),
            "{err}"
        );

        std::fs::write(
            dir.path().join("c.jsonl"),
            b"{\"text\": \"ok\"}\n\xff\xfe\n",
        )
        .unwrap();
        let err = Documents::open(dir.path())
            .unwrap()
            .find_map(|d| d.err())
            .unwrap()
            .to_string();
        assert!(err.contains("line 2") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn empty_directories_and_unknown_formats_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Documents::open(dir.path())
            .err()
            .unwrap()
            .to_string()
            .contains("no corpus files"));
        std::fs::write(dir.path().join("x.csv"), "a,b").unwrap();
        assert!(Documents::open(&dir.path().join("x.csv"))
            .err()
            .unwrap()
            .to_string()
            .contains("unknown corpus format"));
    }
}
