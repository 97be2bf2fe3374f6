//! The file destination (`errors.file.*`): one NDJSON line per failed record, with the original key,
//! value and header bytes base64-encoded and the failure context, so `bqsink replay --from-file` can
//! reload them. The file is rotated by size to `<path>.1`, `<path>.2`, ... (rotated files are never
//! deleted). A delivery resolves once its lines are written and synced to disk.
//!
//! Rotation only renames: a rotated file keeps its bytes, and the writer never appends to it again.
//! The active file becomes `<path>.N` with N one above the highest present, so `.N` names only ever
//! grow and [`rotation_base`] maps every file of the family back to `<path>`. Replay relies on both:
//! it keeps its progress per file *identity* (the file's first line) in one file beside `<path>`,
//! so the progress follows a file through its rename (see `replay::files`).
//!
//! Past ~500 lines only with its unit tests (the code is under 400).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bqsink_actors::config::Config;
use bqsink_actors::destinations::{parse_stage, DeliveryError, ErrorDestination, FailureRecord};
use bqsink_actors::messages::{RawRecord, Stage, Tp};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// Original key bytes, base64 (standard alphabet, padded); absent for no key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Original value bytes, base64; absent for a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// Original headers in order, values base64.
    #[serde(default)]
    pub headers: Vec<FileHeader>,
    /// `convert`, `transform` or `bigquery`.
    pub stage: String,
    /// Error class, e.g. `invalid_json`.
    pub class: String,
    pub error: String,
    /// The consumer group that failed it.
    pub connector: String,
    /// When it failed, ms since the epoch.
    pub failed_at_ms: i64,
}

/// One header of a [`FileRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileHeader {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// A line that cannot be turned back into a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a failed-record line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("field {field} is not valid base64: {source}")]
    Base64 {
        field: &'static str,
        source: base64::DecodeError,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FileRecord {
    pub fn from_failure(r: &FailureRecord, connector: &str) -> Self {
        Self {
            topic: r.tp.topic.to_string(),
            partition: r.tp.partition,
            offset: r.source.offset,
            timestamp_ms: r.source.timestamp_ms,
            key_base64: r.source.key.as_ref().map(|k| B64.encode(k)),
            value_base64: r.source.payload.as_ref().map(|v| B64.encode(v)),
            headers: r
                .source
                .headers
                .iter()
                .map(|(key, value)| FileHeader {
                    key: key.clone(),
                    value_base64: value.as_ref().map(|v| B64.encode(v)),
                })
                .collect(),
            stage: r.stage.as_str().into(),
            class: r.class.into(),
            error: r.error.clone(),
            connector: connector.into(),
            failed_at_ms: now_ms(),
        }
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Result<Self, DecodeError> {
        Ok(serde_json::from_str(line)?)
    }

    /// The stage, if it is one bqsink knows.
    pub fn stage(&self) -> Option<Stage> {
        parse_stage(&self.stage)
    }

    /// The original partition and record, bytes decoded.
    pub fn to_raw(&self) -> Result<(Tp, RawRecord), DecodeError> {
        let decode = |field: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(|s| B64.decode(s))
                .transpose()
                .map_err(|source| DecodeError::Base64 { field, source })
        };
        let headers = self
            .headers
            .iter()
            .map(|h| Ok((h.key.clone(), decode("headers", &h.value_base64)?)))
            .collect::<Result<_, DecodeError>>()?;
        Ok((
            Tp::new(self.topic.as_str(), self.partition),
            RawRecord {
                offset: self.offset,
                timestamp_ms: self.timestamp_ms,
                key: decode("key_base64", &self.key_base64)?,
                payload: decode("value_base64", &self.value_base64)?,
                headers,
            },
        ))
    }
}

/// Errors writing the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot rotate {path} to {to}: {source}")]
    Rotate {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

impl FileError {
    /// Whether retrying cannot help until someone changes something (permissions, a read-only
    /// mount, a path that is a directory or runs through a file — `AlreadyExists` from creating
    /// its directories): the file is then failing at once. A full disk or an interrupted write may
    /// pass by itself.
    pub fn is_permanent(&self) -> bool {
        let (FileError::Open { source, .. }
        | FileError::Write { source, .. }
        | FileError::Rotate { source, .. }) = self;
        use std::io::ErrorKind as K;
        matches!(
            source.kind(),
            K::PermissionDenied
                | K::ReadOnlyFilesystem
                | K::AlreadyExists
                | K::NotADirectory
                | K::IsADirectory
                | K::InvalidFilename
                | K::InvalidInput
                | K::Unsupported
        )
    }
}

/// The appending, rotating writer (blocking I/O).
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<(File, u64)>,
}

/// The rotated files of `path` (`<path>.N`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The path `path` is a rotated file of: `<base>.N` (N all digits) → `<base>`; any other path is
/// its own base.
pub fn rotation_base(path: &Path) -> PathBuf {
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('.'))
        .filter(|(base, n)| {
            !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
        .map(|(base, _)| base);
    match base {
        Some(base) => path.with_file_name(base),
        None => path.to_path_buf(),
    }
}

impl RotatingFile {
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            path,
            max_bytes,
            file: None,
        }
    }

    fn open(&mut self) -> Result<&mut (File, u64), FileError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| FileError::Open {
                    path: self.path.clone(),
                    source,
                })?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|source| FileError::Open {
                    path: self.path.clone(),
                    source,
                })?;
            let size = f
                .metadata()
                .map_err(|source| FileError::Open {
                    path: self.path.clone(),
                    source,
                })?
                .len();
            self.file = Some((f, size));
        }
        // Set just above.
        Ok(self.file.as_mut().expect("file opened"))
    }

    fn rotate(&mut self) -> Result<(), FileError> {
        self.file = None;
        let n = rotated_files(&self.path).last().map_or(1, |(n, _)| n + 1);
        let mut to = self.path.clone().into_os_string();
        to.push(format!(".{n}"));
        let to = PathBuf::from(to);
        std::fs::rename(&self.path, &to).map_err(|source| FileError::Rotate {
            path: self.path.clone(),
            to,
            source,
        })
    }

    /// Appends lines (each ending in `\n`), rotating first whenever the next line would take the file
    /// past `max_bytes`, then syncs.
    pub fn append(&mut self, lines: &[Vec<u8>]) -> Result<(), FileError> {
        let mut i = 0;
        while i < lines.len() {
            let max = self.max_bytes;
            let path = self.path.clone();
            let (file, size) = self.open()?;
            // Take as many lines as fit (at least one into an empty file).
            let mut buf = Vec::new();
            let mut new_size = *size;
            while let Some(line) = lines.get(i) {
                let len = line.len() as u64;
                if new_size > 0 && new_size + len > max {
                    break;
                }
                buf.extend_from_slice(line);
                new_size += len;
                i += 1;
            }
            let write = |f: &mut File| {
                f.write_all(&buf)?;
                f.sync_data()
            };
            write(file).map_err(|source| FileError::Write { path, source })?;
            *size = new_size;
            if i < lines.len() {
                self.rotate()?;
            }
        }
        Ok(())
    }
}

/// The file destination.
pub struct ErrorFile {
    file: Arc<Mutex<RotatingFile>>,
    connector: Arc<str>,
    /// `error file <path>`, its name in the sink health.
    sink: String,
}

impl ErrorFile {
    /// For `errors.file.path` (which must be set).
    pub fn new(path: PathBuf, config: &Config) -> Self {
        Self {
            sink: format!("error file {}", path.display()),
            file: Arc::new(Mutex::new(RotatingFile::new(
                path,
                config.errors.file.max_bytes,
            ))),
            connector: config.kafka.group_id.as_str().into(),
        }
    }
}

/// Encodes records as NDJSON lines.
pub fn encode_lines(records: &[FailureRecord], connector: &str) -> Vec<Vec<u8>> {
    records
        .iter()
        .map(|r| {
            // Serializing plain strings and integers cannot fail.
            let mut line =
                serde_json::to_vec(&FileRecord::from_failure(r, connector)).unwrap_or_default();
            line.push(b'\n');
            line
        })
        .collect()
}

impl ErrorDestination for ErrorFile {
    fn name(&self) -> &'static str {
        "error file"
    }

    fn sink_name(&self) -> String {
        self.sink.clone()
    }

    fn deliver(
        &self,
        records: Arc<[FailureRecord]>,
    ) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let (file, connector) = (Arc::clone(&self.file), Arc::clone(&self.connector));
        let n = records.len();
        Box::pin(async move {
            let write = tokio::task::spawn_blocking(move || {
                let lines = encode_lines(&records, &connector);
                let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
                f.append(&lines)
            });
            match write.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    Err(DeliveryError::all(n, e.to_string()).permanent_if(e.is_permanent()))
                }
                Err(e) => Err(DeliveryError::all(
                    n,
                    format!("file writer task failed: {e}"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(offset: i64, payload: &[u8]) -> FailureRecord {
        FailureRecord {
            tp: Tp::new("events", 1),
            source: RawRecord {
                offset,
                timestamp_ms: Some(1_700_000_000_000),
                key: Some(vec![0, 159, 146, 150]),
                payload: Some(payload.to_vec()),
                headers: vec![("h".into(), Some(vec![255, 0])), ("n".into(), None)],
            },
            stage: Stage::Convert,
            class: "invalid_json",
            error: "value is not valid JSON".into(),
        }
    }

    #[test]
    fn lines_decode_to_the_original_bytes() {
        let f = failure(7, b"\xff{not json");
        let lines = encode_lines(std::slice::from_ref(&f), "g");
        let text = std::str::from_utf8(&lines[0]).unwrap();
        assert!(text.ends_with('\n') && !text.trim_end().contains('\n'));
        let back = FileRecord::parse(text.trim_end()).unwrap();
        assert_eq!(back.stage(), Some(Stage::Convert));
        assert_eq!(back.class, "invalid_json");
        assert_eq!(back.connector, "g");
        let (tp, raw) = back.to_raw().unwrap();
        assert_eq!(tp, f.tp);
        assert_eq!(raw, f.source);
    }

    #[tokio::test]
    async fn a_path_that_cannot_be_written_is_a_permanent_delivery_error() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let a_dir = dir.path().join("a-dir");
        std::fs::create_dir(&a_dir).unwrap();
        // Through a file; a directory (the tests run as root: permissions would not stop them).
        for path in [plain.join("failed.ndjson"), a_dir] {
            let file = ErrorFile::new(path.clone(), &Config::default());
            assert_eq!(file.sink_name(), format!("error file {}", path.display()));
            let err = file
                .deliver(vec![failure(1, b"x"), failure(2, b"y")].into())
                .await
                .unwrap_err();
            assert_eq!(err.undelivered, vec![0, 1]);
            assert!(err.permanent, "{err:?}");
            assert!(err.error.contains(&path.display().to_string()), "{err:?}");
        }
        let path = dir.path().join("failed.ndjson");
        // Errors that may pass by themselves are not permanent.
        let transient = |kind| FileError::Write {
            path: path.clone(),
            source: std::io::Error::from(kind),
        };
        assert!(!transient(std::io::ErrorKind::StorageFull).is_permanent());
        assert!(!transient(std::io::ErrorKind::Interrupted).is_permanent());
        assert!(transient(std::io::ErrorKind::PermissionDenied).is_permanent());
        assert!(transient(std::io::ErrorKind::ReadOnlyFilesystem).is_permanent());
    }

    #[test]
    fn files_rotate_by_size_and_keep_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("failed.ndjson");
        let mut file = RotatingFile::new(path.clone(), 1_000);
        let records: Vec<_> = (0..30).map(|i| failure(i, b"{}")).collect();
        let lines = encode_lines(&records, "g");
        assert!(lines[0].len() > 100 && lines[0].len() < 500);
        file.append(&lines[..10]).unwrap();
        file.append(&lines[10..]).unwrap();
        let rotated = rotated_files(&path);
        assert!(rotated.len() >= 5, "{rotated:?}");
        assert_eq!(rotated[0].0, 1);
        let mut offsets = Vec::new();
        for p in rotated.iter().map(|(_, p)| p.clone()).chain([path.clone()]) {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.len() <= 1_000,
                "{} has {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                offsets.push(FileRecord::parse(line).unwrap().offset);
            }
        }
        assert_eq!(
            offsets,
            (0..30).collect::<Vec<_>>(),
            "every line once, in order"
        );
    }

    #[test]
    fn rotated_files_map_back_to_their_base() {
        let path = Path::new("/x/failed.ndjson");
        assert_eq!(rotation_base(path), path);
        assert_eq!(rotation_base(Path::new("/x/failed.ndjson.1")), path);
        assert_eq!(rotation_base(Path::new("/x/failed.ndjson.42")), path);
        assert_eq!(
            rotation_base(Path::new("failed.ndjson.3")),
            Path::new("failed.ndjson")
        );
        for own in ["/x/failed.ndjson.1a", "/x/failed.", "/x/.7", "/x/plain"] {
            assert_eq!(rotation_base(Path::new(own)), Path::new(own), "{own}");
        }
    }
}
