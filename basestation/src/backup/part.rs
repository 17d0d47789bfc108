//! One part of a backup: resources as JSON lines, compressed with zstd, encrypted with age.
//! Synchronous over `Read`/`Write`, run on a blocking thread; nothing holds more than one
//! record in memory.
//!
//! A line: `{"seq":12,"id":"…","jwk":"{…}","snapshot":"<base64>"}` (`snapshot` is `null` for
//! a resource that never had one). `jwk` is the stored text, byte for byte; `snapshot` is
//! standard base64 with padding. So `age -d -i key part | zstd -d` gives readable lines.

use super::BackupError;
use crate::store::Change;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use zbase_proto::wire::ResourceId;

/// zstd level 3, its default: snapshots are ciphertext, so more effort buys nothing.
const ZSTD_LEVEL: i32 = 3;
/// A line longer than this is not one we wrote: the largest snapshot base64-encoded, plus room.
const LINE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Reads from a part's file or download in pieces this large.
const READ_BUFFER: usize = 256 * 1024;

/// One resource as a line of a part.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    id: String,
    jwk: String,
    snapshot: Option<String>,
}

/// What a finished part measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Resources written.
    pub records: u64,
    /// Bytes of the file.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// Counts bytes and hashes them on their way through.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn digest(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Where a part's encrypted bytes go: a file, or an upload.
pub trait Output: Write + Send {
    /// Makes everything written durable: syncs the file, or completes the upload.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

impl Output for BufWriter<File> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.flush()?;
        self.get_ref().sync_all()
    }
}

type Sink =
    zstd::stream::write::Encoder<'static, age::stream::StreamWriter<Hashing<Box<dyn Output>>>>;

/// A part being written.
pub struct PartWriter {
    sink: Sink,
    /// Where it goes, for errors.
    at: String,
    records: u64,
    plain_bytes: u64,
    line: Vec<u8>,
}

impl PartWriter {
    /// Starts a part into `output` (named `at` in errors), encrypted to `recipients`.
    pub fn create(
        output: Box<dyn Output>,
        at: String,
        recipients: &[age::x25519::Recipient],
    ) -> Result<PartWriter, BackupError> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| BackupError::Recipients(e.to_string()))?;
        let io = |source| BackupError::io(&at, source);
        let encrypted = encryptor.wrap_output(Hashing::new(output)).map_err(io)?;
        let sink = zstd::stream::write::Encoder::new(encrypted, ZSTD_LEVEL).map_err(io)?;
        Ok(PartWriter {
            sink,
            at,
            records: 0,
            plain_bytes: 0,
            line: Vec::new(),
        })
    }

    /// Appends one resource.
    pub fn write(&mut self, change: &Change) -> Result<(), BackupError> {
        self.line.clear();
        let line = Line {
            seq: change.seq,
            id: change.id.as_str().to_owned(),
            jwk: change.jwk.clone(),
            snapshot: change.snapshot.as_ref().map(|s| STANDARD.encode(s)),
        };
        serde_json::to_writer(&mut self.line, &line)
            .unwrap_or_else(|e| unreachable!("a line of strings and numbers serializes: {e}"));
        self.line.push(b'\n');
        self.sink
            .write_all(&self.line)
            .map_err(|e| BackupError::io(&self.at, e))?;
        self.records += 1;
        self.plain_bytes += self.line.len() as u64;
        Ok(())
    }

    /// Bytes of lines written so far (before compression), to decide when to start a new part.
    pub fn plain_bytes(&self) -> u64 {
        self.plain_bytes
    }

    /// Ends the zstd frame and the age stream, and makes the output durable.
    pub fn finish(self) -> Result<Written, BackupError> {
        let io = |source| BackupError::io(&self.at, source);
        let encrypted = self.sink.finish().map_err(io)?;
        let hashing = encrypted.finish().map_err(io)?;
        let (size, sha256) = (hashing.bytes, hashing.digest());
        hashing.inner.finish().map_err(io)?;
        Ok(Written {
            records: self.records,
            size,
            sha256,
        })
    }
}

/// Reads a part from `source` (named `at` in errors), handing each resource to `each` in
/// order; checks its size and checksum against `expected` once it has been read whole.
/// Everything wrong is an error naming the part (and the line, for a bad record).
pub fn read(
    source: Box<dyn Read + Send>,
    at: &str,
    expected: &super::manifest::Part,
    identities: &[Box<dyn age::Identity + Send + Sync>],
    each: &mut dyn FnMut(Change) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let part = expected.file.as_str();
    let mut hashing = Hashing::new(BufReader::with_capacity(READ_BUFFER, source));
    let records = {
        let decryptor =
            age::Decryptor::new(&mut hashing).map_err(|e| BackupError::decrypt(part, e))?;
        let plain = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| BackupError::decrypt(part, e))?;
        let decoded =
            zstd::stream::read::Decoder::new(plain).map_err(|e| BackupError::Damaged {
                part: part.to_owned(),
                reason: format!("cannot start decompressing ({e})"),
            })?;
        read_lines(BufReader::new(decoded), part, each)?
    };
    // Whatever follows the age stream's last chunk is still part of the file, and of its sum.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| BackupError::io(at, e))?;
    if hashing.bytes != expected.size || hashing.digest() != expected.sha256 {
        return Err(BackupError::Checksum {
            part: part.to_owned(),
            expected: format!("{} bytes, sha256 {}", expected.size, expected.sha256),
            found: format!("{} bytes, sha256 {}", hashing.bytes, hashing.digest()),
        });
    }
    if records != expected.records {
        return Err(BackupError::Count {
            what: format!("resources in part {part}"),
            expected: expected.records,
            found: records,
        });
    }
    Ok(records)
}

fn read_lines(
    mut reader: impl BufRead,
    part: &str,
    each: &mut dyn FnMut(Change) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(LINE_MAX_BYTES)
            .read_until(b'\n', &mut buf)
            .map_err(|e| damaged(part, number + 1, &e))?;
        if read == 0 {
            return Ok(number);
        }
        number += 1;
        if buf.last() != Some(&b'\n') {
            return Err(BackupError::Record {
                part: part.to_owned(),
                line: number,
                reason: if read as u64 >= LINE_MAX_BYTES {
                    format!("is longer than {LINE_MAX_BYTES} bytes")
                } else {
                    "is cut short (the part ends inside it)".into()
                },
            });
        }
        each(record(&buf, part, number)?)?;
    }
}

fn record(bytes: &[u8], part: &str, number: u64) -> Result<Change, BackupError> {
    let bad = |reason: String| BackupError::Record {
        part: part.to_owned(),
        line: number,
        reason,
    };
    let line: Line =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("is not a record ({e})")))?;
    let id = ResourceId::parse(&line.id).map_err(|e| bad(format!("has a bad identifier ({e})")))?;
    let snapshot = line
        .snapshot
        .map(|text| STANDARD.decode(text).map(Bytes::from))
        .transpose()
        .map_err(|e| bad(format!("has a snapshot that is not base64 ({e})")))?;
    if line.jwk.is_empty() {
        return Err(bad("has an empty key".into()));
    }
    Ok(Change {
        seq: line.seq,
        id,
        jwk: line.jwk,
        snapshot,
    })
}

/// A read error inside the decrypted stream: age reports a tampered or cut chunk here.
fn damaged(part: &str, line: u64, error: &io::Error) -> BackupError {
    BackupError::Damaged {
        part: part.to_owned(),
        reason: format!("cannot be read at line {line}: {error}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
