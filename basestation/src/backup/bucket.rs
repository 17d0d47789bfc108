//! Backups in S3-compatible object storage that the user runs (MinIO, Garage, SeaweedFS, Ceph,
//! or AWS itself), through `object_store`: one prefix per backup, holding the manifest and
//! the parts. Parts are streamed up as multipart uploads, so no part is ever whole in memory
//! or on a local disk.
//!
//! Object storage has no rename, so a backup is written in place and its manifest is uploaded
//! last: a prefix with a manifest is complete, and one without is what a run that died left,
//! which the next run removes. An upload that dies half-way leaves an incomplete multipart
//! upload, which only the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`) cleans;
//! `docs/BACKUP.md` says so.
//!
//! The writer and reader of a part are synchronous (`Write`, `Read`) because the part codec
//! runs on a blocking thread; they drive the async client with the runtime's handle.

use super::BackupError;
use super::folder::PREFIX;
use super::manifest::{MANIFEST_FILE, MANIFEST_MAX_BYTES, Manifest};
use super::part::Output;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt as _, WriteMultipart};
use std::io::{self, Read, Write};
use std::sync::Arc;
use tokio::runtime::Handle;

/// Bytes sent per multipart request: above S3's 5 MiB floor for every part but the last.
const UPLOAD_CHUNK: usize = 8 * 1024 * 1024;
/// Multipart requests in flight at once; with [`UPLOAD_CHUNK`], bounds an upload's memory.
const UPLOADS_IN_FLIGHT: usize = 4;

/// How to reach the object store: what `--s3-*` flags and `AWS_*` variables say. Anything
/// left `None` is taken from the standard `AWS_*` variables, as the AWS tools read them.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// The server's URL (`https://s3.example.org:9000`); path-style requests are used.
    pub endpoint: Option<String>,
    /// The region to sign for (most self-hosted servers accept any). [default: us-east-1]
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// PEM certificates to trust besides the system's roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

/// A prefix in a bucket: where backups are kept, or one backup.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, for messages.
    bucket_url: String,
    prefix: Key,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.as_ref().is_empty() {
            write!(f, "{}", self.bucket_url)
        } else {
            write!(f, "{}/{}", self.bucket_url, self.prefix)
        }
    }
}

impl Bucket {
    /// Opens `s3://bucket/prefix` with `settings`. Nothing is sent until it is used.
    pub fn open(url: &str, settings: &S3Settings) -> Result<Bucket, BackupError> {
        let bad = |reason: String| BackupError::Remote {
            at: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("is not an s3:// URL (s3://bucket/prefix)".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("names no bucket: write s3://bucket/prefix".into()));
        }
        let prefix = Key::parse(prefix.trim_end_matches('/'))
            .map_err(|e| bad(format!("has a prefix that is not a valid object key ({e})")))?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(pem) = &settings.ca_pem {
            let certificates = object_store::Certificate::from_pem_bundle(pem)
                .map_err(|e| bad(format!("the S3 CA file is not PEM certificates ({e})")))?;
            if certificates.is_empty() {
                return Err(bad(
                    "the S3 CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
            let options = certificates
                .into_iter()
                .fold(ClientOptions::new(), ClientOptions::with_root_certificate);
            builder = builder.with_client_options(options);
        }
        if let Some(endpoint) = &settings.endpoint {
            // The user named a plain-HTTP server themselves (a test, or a loopback proxy).
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(region);
        if let Some(id) = &settings.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(Bucket {
            store: Arc::new(store),
            bucket_url: format!("s3://{bucket}"),
            prefix,
        })
    }

    /// The prefix `name` below this one.
    pub fn child(&self, name: &str) -> Bucket {
        Bucket {
            store: self.store.clone(),
            bucket_url: self.bucket_url.clone(),
            prefix: self.prefix.clone().join(name),
        }
    }

    /// The last segment of the prefix: a backup's name.
    pub fn name(&self) -> &str {
        self.prefix.filename().unwrap_or("")
    }

    fn key(&self, file: &str) -> Key {
        self.prefix.clone().join(file)
    }

    fn at(&self, file: &str) -> String {
        format!("{}/{}", self.bucket_url, self.key(file))
    }

    /// Reads this backup's manifest.
    pub async fn manifest(&self) -> Result<Manifest, BackupError> {
        let at = self.at(MANIFEST_FILE);
        let got = self
            .store
            .get(&self.key(MANIFEST_FILE))
            .await
            .map_err(|e| remote(&at, e))?;
        if got.meta.size > MANIFEST_MAX_BYTES {
            return Err(BackupError::Manifest {
                file: at,
                reason: format!("is larger than {MANIFEST_MAX_BYTES} bytes"),
            });
        }
        let bytes = got.bytes().await.map_err(|e| remote(&at, e))?;
        Manifest::parse(&bytes, &at)
    }

    /// Whether this backup's manifest is there (so the backup is complete).
    async fn has_manifest(&self) -> Result<bool, BackupError> {
        match self.store.head(&self.key(MANIFEST_FILE)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(remote(&self.at(MANIFEST_FILE), e)),
        }
    }

    /// The backups below this prefix, oldest first (names sort by time).
    pub async fn list(&self) -> Result<Vec<Bucket>, BackupError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| remote(&self.to_string(), e))?;
        let mut found: Vec<Bucket> = listed
            .common_prefixes
            .into_iter()
            .filter(|p| p.filename().is_some_and(|n| n.starts_with(PREFIX)))
            .map(|prefix| Bucket {
                store: self.store.clone(),
                bucket_url: self.bucket_url.clone(),
                prefix,
            })
            .collect();
        found.sort_by(|a, b| a.prefix.as_ref().cmp(b.prefix.as_ref()));
        Ok(found)
    }

    /// Deletes every object of this backup.
    pub async fn remove(&self) -> Result<(), BackupError> {
        // object_store lists by whole segments: `zbase-1` never matches `zbase-10`'s objects.
        let keys = self
            .store
            .list(Some(&self.prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let at = self.to_string();
        self.store
            .delete_stream(keys)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| remote(&at, e))?;
        Ok(())
    }

    /// Starts a backup named `name` below this prefix, first removing backups that have no
    /// manifest (runs that died).
    pub async fn begin(&self, name: &str) -> Result<Bucket, BackupError> {
        for backup in self.list().await? {
            if !backup.has_manifest().await? {
                backup.remove().await?;
            }
        }
        let backup = self.child(name);
        if backup
            .store
            .list(Some(&backup.prefix))
            .next()
            .await
            .is_some()
        {
            return Err(BackupError::Remote {
                at: backup.to_string(),
                reason: "holds objects already: a backup of this name exists".into(),
            });
        }
        Ok(backup)
    }

    /// Starts uploading part `file` of this backup. Call from a blocking thread.
    pub fn part(&self, file: &str) -> Result<(Box<dyn Output>, String), BackupError> {
        let handle = Handle::current();
        let at = self.at(file);
        let upload = handle
            .block_on(self.store.put_multipart(&self.key(file)))
            .map_err(|e| remote(&at, e))?;
        let writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_CHUNK);
        Ok((
            Box::new(Upload {
                handle,
                writer: Some(writer),
            }),
            at,
        ))
    }

    /// Uploads the manifest, which makes the backup complete.
    pub async fn commit(&self, manifest: &Manifest) -> Result<(), BackupError> {
        let at = self.at(MANIFEST_FILE);
        self.store
            .put(&self.key(MANIFEST_FILE), manifest.to_bytes().into())
            .await
            .map_err(|e| remote(&at, e))?;
        Ok(())
    }

    /// Opens part `file` of this backup for reading. Call from a blocking thread.
    pub fn open_part(&self, file: &str) -> Result<(Box<dyn Read + Send>, String), BackupError> {
        let handle = Handle::current();
        let at = self.at(file);
        let got = handle
            .block_on(self.store.get(&self.key(file)))
            .map_err(|e| remote(&at, e))?;
        Ok((
            Box::new(Download {
                handle,
                stream: got.into_stream(),
                chunk: Bytes::new(),
            }),
            at,
        ))
    }
}

/// An object store error, with what to do for the usual ones.
fn remote(at: &str, error: object_store::Error) -> BackupError {
    let text = error.to_string();
    // object_store reports most refusals as a generic error carrying the HTTP status and the
    // server's code, so those are what tell a credentials problem.
    let refused = matches!(
        error,
        object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. }
    ) || [
        "401 Unauthorized",
        "403 Forbidden",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    ]
    .iter()
    .any(|sign| text.contains(sign));
    let reason = if refused {
        format!(
            "the object store refused the credentials ({text}); check AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (or the --s3-*-file flags) and the bucket's policy"
        )
    } else if matches!(error, object_store::Error::NotFound { .. }) || text.contains("NoSuchBucket")
    {
        format!("does not exist ({text})")
    } else {
        text
    };
    BackupError::Remote {
        at: at.to_owned(),
        reason,
    }
}

/// A part's bytes on their way up, a chunk per multipart request.
struct Upload {
    handle: Handle,
    /// `None` once finished.
    writer: Option<WriteMultipart>,
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("the upload was finished already"))?;
        self.handle
            .block_on(async {
                writer.wait_for_capacity(UPLOADS_IN_FLIGHT).await?;
                // Inside the runtime: `write` spawns the request when a chunk is full.
                writer.write(buf);
                Ok::<_, object_store::Error>(())
            })
            .map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Output for Upload {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("the upload was finished already"))?;
        self.handle
            .block_on(writer.finish())
            .map(|_| ())
            .map_err(io::Error::other)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // An upload given up on: ask the server to drop its parts (best effort; the bucket's
        // lifecycle rule is the backstop).
        if let Some(writer) = self.writer.take() {
            self.handle.spawn(async move {
                let _ = writer.abort().await;
            });
        }
    }
}

/// A part's bytes on their way down.
struct Download {
    handle: Handle,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> Result<Bucket, BackupError> {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:9".into()),
            ..S3Settings::default()
        };
        Bucket::open(url, &settings)
    }

    #[test]
    fn a_bucket_url_names_the_bucket_and_the_prefix() {
        let bucket = open("s3://backups/site-a/nightly/").unwrap();
        assert_eq!(bucket.to_string(), "s3://backups/site-a/nightly");
        let backup = bucket.child("zbase-20261202T150000123Z-3f2a");
        assert_eq!(backup.name(), "zbase-20261202T150000123Z-3f2a");
        assert_eq!(
            backup.at("part-00000.jsonl.zst.age"),
            "s3://backups/site-a/nightly/zbase-20261202T150000123Z-3f2a/part-00000.jsonl.zst.age"
        );
        assert_eq!(open("s3://backups").unwrap().to_string(), "s3://backups");
    }

    #[test]
    fn a_malformed_bucket_url_is_refused_with_what_to_write() {
        for (url, says) in [
            ("s3://", "names no bucket"),
            ("s3:///prefix", "names no bucket"),
            ("s3://backups/a//b", "not a valid object key"),
            ("https://backups/a", "not an s3:// URL"),
        ] {
            let error = open(url).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused() {
        let settings = S3Settings {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..S3Settings::default()
        };
        let error = Bucket::open("s3://backups", &settings)
            .unwrap_err()
            .to_string();
        assert!(error.contains("CA file"), "{error}");
    }

    #[test]
    fn refusals_name_the_credentials() {
        let refused = remote(
            "s3://b/k",
            object_store::Error::Generic {
                store: "S3",
                source: "Server returned non-2xx status code: 403 Forbidden: \
                         <Code>SignatureDoesNotMatch</Code>"
                    .into(),
            },
        );
        assert!(
            refused.to_string().contains("AWS_SECRET_ACCESS_KEY"),
            "{refused}"
        );
        let other = remote(
            "s3://b/k",
            object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            },
        );
        assert!(!other.to_string().contains("credentials"), "{other}");
    }
}
