//! Reading error files for `bqsink replay --from-file`, and remembering how far each was replayed.
//!
//! Invariant: a line of an error file is sent by at most one replay that saved its progress,
//! whatever the file is called by then, and a later replay resumes right after the last line sent.
//!
//! The error-file writer rotates by renaming (`<path>` → `<path>.N`, see [`crate::destinations::error_file`]),
//! so a name says nothing about which bytes are behind it: the file replayed as `failed.ndjson`
//! yesterday is `failed.ndjson.7` today, and `failed.ndjson` is a new file. Progress is therefore
//! kept per file *identity*, the hash of the file's first complete line (a failed record with its
//! topic, partition, offset and failure time, which no other file of the family starts with):
//!
//! - One progress file per family, `<base>.replay-progress` beside the base path (`<path>` for
//!   `<path>` and every `<path>.N`, [`rotation_base`]), maps identity → bytes already replayed (and
//!   the name the file had then, for people reading it). It is rewritten atomically (temporary
//!   file, sync, rename) after every batch has been sent.
//! - A file renamed after it was fully replayed is found under its identity with its whole length
//!   done: nothing is sent again. One renamed while partly replayed (the writer appended after the
//!   replay) resumes at the first line not yet sent.
//! - A new file at the old name has another first line, hence no progress: it is read from its
//!   beginning. A file without a complete first line yet has no identity: it is left for a later
//!   replay, and nothing is recorded for it.
//! - Progress saved by earlier versions in a sidecar `<file>.replay-offset` (same first-line hash)
//!   is taken over when the progress file has no entry for the identity: the sidecar beside the
//!   file itself, or the one beside the base path (the active file's, which has since been
//!   rotated). Sidecars are left in place and no longer written.
//! - Entries are never removed (rotated files are never deleted either): one short entry per file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{Item, ReplayReport, StillFailing, MAX_LISTED};
use crate::destinations::error_file::{rotation_base, FileRecord};

/// A file's identity: the xxh3 hash of its first line, newline included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64);

impl FileId {
    /// The key in the progress file.
    fn key(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The identity of the file `reader` reads (positioned at its start); `None` while the first line
/// is incomplete.
fn file_id(reader: &mut impl BufRead) -> std::io::Result<Option<FileId>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    Ok((line.last() == Some(&b'\n')).then(|| FileId(xxhash_rust::xxh3::xxh3_64(&line))))
}

/// The progress file of `path`'s family: `<base>.replay-progress`.
pub fn progress_path(path: &Path) -> PathBuf {
    let mut s = rotation_base(path).into_os_string();
    s.push(".replay-progress");
    PathBuf::from(s)
}

/// What the progress file holds about one file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// Bytes from the start of the file already replayed (always at a line end).
    offset: u64,
    /// The file's name when this was saved (informational: names change on rotation).
    #[serde(default)]
    file: String,
}

/// The progress file: identity key → entry.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    files: BTreeMap<String, Entry>,
}

impl Progress {
    fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading replay progress from {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => {
                Err(e).with_context(|| format!("reading replay progress from {}", path.display()))
            }
        }
    }

    /// Writes a temporary file, syncs it, renames it over `path`.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            f.sync_data()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("saving replay progress to {}", path.display()))
    }
}

/// Progress through one file as earlier versions kept it, beside the file's name at the time.
#[derive(Debug, Deserialize)]
struct Sidecar {
    offset: u64,
    first_line: u64,
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".replay-offset");
    PathBuf::from(s)
}

/// The offset an old sidecar beside `path` or beside its base path saved for `id`.
fn legacy_offset(path: &Path, id: FileId) -> Option<u64> {
    [sidecar_path(path), sidecar_path(&rotation_base(path))]
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).ok()?;
            match serde_json::from_slice::<Sidecar>(&bytes) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(sidecar = %p.display(), error = %e, "ignoring an unreadable replay-offset sidecar");
                    None
                }
            }
        })
        .find(|s| s.first_line == id.0)
        .map(|s| s.offset)
}

/// Reads one error file from where the last replay of it stopped.
pub(super) struct FileReader {
    path: PathBuf,
    progress_path: PathBuf,
    reader: BufReader<File>,
    /// `None`: no complete first line; nothing is read or saved.
    id: Option<FileId>,
    /// Bytes of the file already read (after a commit: replayed).
    offset: u64,
}

impl FileReader {
    pub(super) fn open(path: &Path) -> anyhow::Result<Self> {
        let progress_path = progress_path(path);
        // One handle for the identity and the lines, so both are of the same file even if it is
        // rotated meanwhile.
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        let mut reader = BufReader::new(file);
        let id = file_id(&mut reader).with_context(|| format!("reading {}", path.display()))?;
        let mut offset = 0;
        if let Some(id) = id {
            let progress = Progress::load(&progress_path)?;
            offset = match progress.files.get(&id.key()) {
                Some(entry) => entry.offset,
                None => legacy_offset(path, id).unwrap_or(0),
            };
            if offset > len {
                tracing::warn!(file = %path.display(), replayed = offset, len, "the file is shorter than what was replayed of it; it was rewritten, replaying nothing more from it");
            }
        }
        reader
            .seek(SeekFrom::Start(offset))
            .with_context(|| format!("seeking in {}", path.display()))?;
        tracing::info!(file = %path.display(), offset, "replaying from an error file");
        Ok(Self {
            path: path.into(),
            progress_path,
            reader,
            id,
            offset,
        })
    }

    /// Lines not yet replayed (counted by reading ahead, for the progress bar).
    pub(super) fn remaining_lines(&self) -> anyhow::Result<u64> {
        if self.id.is_none() {
            return Ok(0);
        }
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut n = 0;
        let mut buf = BufReader::new(f);
        loop {
            let chunk = buf.fill_buf()?;
            if chunk.is_empty() {
                return Ok(n);
            }
            n += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            let len = chunk.len();
            buf.consume(len);
        }
    }

    /// Up to `max` complete lines; unreadable ones are reported as still failing.
    pub(super) fn next_batch(
        &mut self,
        max: usize,
        report: &mut ReplayReport,
    ) -> anyhow::Result<Vec<Item>> {
        let mut items = Vec::new();
        if self.id.is_none() {
            return Ok(items); // Its first line is still being written: next time.
        }
        let mut line = Vec::new();
        while items.len() < max {
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break; // End, or a line still being written.
            }
            let at = self.offset;
            self.offset += n as u64;
            let parsed = std::str::from_utf8(&line)
                .map_err(anyhow::Error::from)
                .and_then(|s| Ok(FileRecord::parse(s.trim_end())?))
                .and_then(|r| Ok((r.stage(), r.to_raw()?)));
            match parsed {
                Ok((stage, (tp, raw))) => items.push(Item {
                    origin: Some(tp),
                    raw,
                    stage,
                }),
                Err(e) => {
                    report.read += 1;
                    report.still_failing += 1;
                    tracing::error!(file = %self.path.display(), byte = at, error = %e, "unreadable line in the error file");
                    if report.failures.len() < MAX_LISTED {
                        report.failures.push(StillFailing {
                            topic: self.path.display().to_string(),
                            partition: -1,
                            offset: at as i64,
                            reason: format!("unreadable line: {e}"),
                        });
                    }
                }
            }
        }
        Ok(items)
    }

    /// Saves the progress: everything read so far has been sent.
    pub(super) fn commit(&self) -> anyhow::Result<()> {
        let Some(id) = self.id else { return Ok(()) };
        // Read again: the files of one family are replayed one after another, each saving.
        let mut progress = Progress::load(&self.progress_path)?;
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        progress.files.insert(
            id.key(),
            Entry {
                offset: self.offset,
                file,
            },
        );
        progress.save(&self.progress_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destinations::error_file::encode_lines;
    use bqsink_actors::destinations::FailureRecord;
    use bqsink_actors::messages::{RawRecord, Stage, Tp};

    fn lines(offsets: std::ops::Range<i64>) -> Vec<u8> {
        let records: Vec<_> = offsets
            .map(|offset| FailureRecord {
                tp: Tp::new("events", 0),
                source: RawRecord {
                    offset,
                    timestamp_ms: None,
                    key: None,
                    payload: Some(b"{}".to_vec()),
                    headers: Vec::new(),
                },
                stage: Stage::BigQuery,
                class: "invalid",
                error: "x".into(),
            })
            .collect();
        encode_lines(&records, "g").concat()
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// Reads `path` to its end as one replay would (committing), returning the offsets read.
    fn replay(path: &Path) -> Vec<i64> {
        let mut reader = FileReader::open(path).unwrap();
        let mut report = ReplayReport::default();
        let mut read = Vec::new();
        loop {
            let batch = reader.next_batch(2, &mut report).unwrap();
            if batch.is_empty() {
                break;
            }
            read.extend(batch.iter().map(|i| i.raw.offset));
            reader.commit().unwrap();
        }
        assert_eq!(report, ReplayReport::default());
        read
    }

    #[test]
    fn progress_sits_beside_the_base_path() {
        let want = PathBuf::from("/x/failed.ndjson.replay-progress");
        assert_eq!(progress_path(Path::new("/x/failed.ndjson")), want);
        assert_eq!(progress_path(Path::new("/x/failed.ndjson.3")), want);
    }

    #[test]
    fn progress_follows_a_file_through_its_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failed.ndjson");
        let rotated = dir.path().join("failed.ndjson.1");
        append(&path, &lines(0..3));
        assert_eq!(replay(&path), vec![0, 1, 2]);
        // Fully replayed, then rotated: nothing again; the new active file from its start.
        std::fs::rename(&path, &rotated).unwrap();
        append(&path, &lines(3..5));
        assert_eq!(replay(&rotated), Vec::<i64>::new());
        assert_eq!(replay(&path), vec![3, 4]);
        // Appended to after the replay, then rotated: resumes after the last line sent.
        append(&path, &lines(5..6));
        std::fs::rename(&path, dir.path().join("failed.ndjson.2")).unwrap();
        assert_eq!(replay(&dir.path().join("failed.ndjson.2")), vec![5]);
        assert_eq!(replay(&rotated), Vec::<i64>::new());

        let saved = Progress::load(&progress_path(&path)).unwrap();
        assert_eq!(saved.files.len(), 2, "{saved:?}");
        let names: Vec<_> = saved.files.values().map(|e| e.file.as_str()).collect();
        // The names they had when progress was last saved (nothing is saved when nothing is read).
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"failed.ndjson") && names.contains(&"failed.ndjson.2"));
        assert!(!dir.path().join("failed.ndjson.replay-offset").exists());
    }

    #[test]
    fn a_file_without_a_complete_first_line_is_left_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failed.ndjson");
        let full = lines(0..2);
        let cut = full.iter().position(|&b| b == b'\n').unwrap() / 2;
        append(&path, &full[..cut]);
        assert_eq!(replay(&path), Vec::<i64>::new());
        assert!(!progress_path(&path).exists(), "nothing saved");
        append(&path, &full[cut..]);
        assert_eq!(replay(&path), vec![0, 1]);
    }

    #[test]
    fn progress_in_an_old_sidecar_is_taken_over_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failed.ndjson");
        let text = lines(0..3);
        append(&path, &text);
        let first = text.iter().position(|&b| b == b'\n').unwrap() + 1;
        let second = first + text[first..].iter().position(|&b| b == b'\n').unwrap() + 1;
        // An earlier version replayed two lines of the active file, which has since rotated.
        let sidecar = format!(
            r#"{{"offset":{second},"first_line":{}}}"#,
            xxhash_rust::xxh3::xxh3_64(&text[..first])
        );
        std::fs::write(sidecar_path(&path), sidecar).unwrap();
        let rotated = dir.path().join("failed.ndjson.1");
        std::fs::rename(&path, &rotated).unwrap();
        append(&path, &lines(3..4));
        assert_eq!(replay(&rotated), vec![2]);
        assert_eq!(replay(&path), vec![3], "the sidecar is not the new file's");
        assert_eq!(replay(&rotated), Vec::<i64>::new());
    }
}
