//! One upload of one local file to one target: a single PUT for a small file, else a multipart
//! upload whose parts (>= 5 MiB) go up `concurrency` at a time. S3, GCS and Azure all make a
//! multipart object appear only when it is completed, so a reader never sees a truncated
//! object, and a second upload of one key replaces the first (never a duplicate).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::delivery::target::Connected;

pub use crate::model::upload::MIN_PART_BYTES;

/// How an upload is cut up.
#[derive(Debug, Clone, Copy)]
pub struct UploadShape {
    /// Bytes per part (>= MIN_PART_BYTES); files up to this size go up in one PUT.
    pub part_bytes: u64,
    /// Parts in flight at once.
    pub concurrency: usize,
}

/// Why one upload attempt failed; `permanent` when retrying the same target cannot help
/// (credentials refused, access denied).
#[derive(Debug, Clone)]
pub struct AttemptError {
    pub message: String,
    pub permanent: bool,
}

impl AttemptError {
    fn store(e: object_store::Error) -> AttemptError {
        let permanent = matches!(
            e,
            object_store::Error::Unauthenticated { .. }
                | object_store::Error::PermissionDenied { .. }
        ) || {
            // S3 answers a wrong key id with 403 InvalidAccessKeyId / SignatureDoesNotMatch,
            // which object_store reports as a generic error.
            let s = e.to_string();
            s.contains("InvalidAccessKeyId")
                || s.contains("SignatureDoesNotMatch")
                || s.contains("403 Forbidden")
                || s.contains("AccessDenied")
        };
        AttemptError {
            message: summary(&e.to_string()),
            permanent,
        }
    }
    fn local(message: String) -> AttemptError {
        AttemptError {
            message,
            permanent: true,
        }
    }
}

/// What a user reads of a store's error: the HTTP status and the store's error code
/// (`<Code>AccessDenied</Code>`, a JSON `"reason"`), never its response body, which a store a
/// request named could fill with anything; an error without a response (no connection, a
/// timeout) as the client said it, on one line and short.
pub fn summary(s: &str) -> String {
    const STATUS: &str = "status code: ";
    let Some(at) = s.find(STATUS) else {
        let before_body = s
            .split("Server returned error response")
            .next()
            .unwrap_or(s);
        return short(before_body);
    };
    let after = &s[at + STATUS.len()..];
    let status: String = after
        .chars()
        .take_while(|c| *c != ':')
        .collect::<String>()
        .trim()
        .to_string();
    let body = after.split_once(':').map(|(_, b)| b).unwrap_or("");
    let code = between(body, "<Code>", "</Code>")
        .or_else(|| between(body, "\"reason\": \"", "\""))
        .or_else(|| between(body, "\"reason\":\"", "\""))
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let op = s[..at]
        .split(" - ")
        .next()
        .unwrap_or("")
        .split("Server returned")
        .next()
        .unwrap_or("");
    let op = short(op.trim().trim_end_matches(':'));
    let what = match code {
        Some(c) => format!("the store answered HTTP {status} ({c})"),
        None => format!("the store answered HTTP {status}"),
    };
    if op.is_empty() {
        what
    } else {
        format!("{op}: {what}")
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

/// On one line, at most 400 bytes.
fn short(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() <= 400 {
        return one_line;
    }
    let mut end = 400;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one_line[..end])
}

/// Uploads `local` to `key`. `on_open` is called with the multipart upload id as soon as one is
/// created (it writes the journal, alongside the first parts), so a crash mid-upload leaves the
/// id for the next start to abort. Returns the bytes uploaded.
pub async fn upload_file<F, Fut>(
    store: &Connected,
    local: &Path,
    key: &str,
    shape: UploadShape,
    on_open: F,
) -> Result<u64, AttemptError>
where
    F: Fn(Option<String>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let size = std::fs::metadata(local)
        .map_err(|e| AttemptError::local(format!("{}: {e}", local.display())))?
        .len();
    let path = ObjectPath::from(key);
    if size <= shape.part_bytes {
        let data = read_range(local.to_path_buf(), 0, size).await?;
        store
            .object
            .put(&path, PutPayload::from(data))
            .await
            .map_err(AttemptError::store)?;
    } else {
        let id = store
            .multipart
            .create_multipart(&path)
            .await
            .map_err(AttemptError::store)?;
        let parts = size.div_ceil(shape.part_bytes) as usize;
        // The journal write (an fsync) runs while the first parts go up, not before them.
        let recorded = on_open(Some(id.clone()));
        let uploads = futures_util::stream::iter(0..parts)
            .map(|i| {
                let mp = store.multipart.clone();
                let (path, id) = (path.clone(), id.clone());
                let local = local.to_path_buf();
                let start = i as u64 * shape.part_bytes;
                let len = shape.part_bytes.min(size - start);
                async move {
                    let data = read_range(local, start, len).await?;
                    mp.put_part(&path, &id, i, PutPayload::from(data))
                        .await
                        .map_err(AttemptError::store)
                }
            })
            .buffered(shape.concurrency.max(1))
            .collect::<Vec<Result<object_store::multipart::PartId, AttemptError>>>();
        let ((), results) = futures_util::future::join(recorded, uploads).await;
        let done: Result<Vec<_>, AttemptError> = results.into_iter().collect();
        let outcome = match done {
            Ok(ids) => store
                .multipart
                .complete_multipart(&path, &id, ids)
                .await
                .map(|_| ())
                .map_err(AttemptError::store),
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            // Best effort: the store may be the thing that is down. The journal keeps the id
            // until the next attempt opens a new one (or the entry is removed): aborting an id
            // that is gone already after a crash is harmless.
            let _ = store.multipart.abort_multipart(&path, &id).await;
        }
        outcome?;
    }
    // The store confirmed the write; check it holds the whole file before the local copy may go.
    let meta = store
        .object
        .head(&path)
        .await
        .map_err(AttemptError::store)?;
    if meta.size != size {
        return Err(AttemptError {
            message: format!("the store holds {} bytes of {size}", meta.size),
            permanent: false,
        });
    }
    Ok(size)
}

/// Aborts a multipart upload a previous run left open (best effort, bounded in time).
pub async fn abort_stale(store: &Connected, key: &str, upload_id: &str) -> Result<(), String> {
    let path = ObjectPath::from(key);
    match tokio::time::timeout(
        Duration::from_secs(15),
        store
            .multipart
            .abort_multipart(&path, &upload_id.to_string()),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(short(&e.to_string())),
        Err(_) => Err("timed out".into()),
    }
}

async fn read_range(path: PathBuf, start: u64, len: u64) -> Result<Vec<u8>, AttemptError> {
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, start)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|e| AttemptError::local(format!("read task failed: {e}")))?
    .map_err(|e| AttemptError::local(format!("cannot read the local copy: {e}")))
}

/// The wait before retry number `n` (0-based): 0.5 s doubling, at most 10 s.
pub fn backoff(n: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << n.min(10));
    Duration::from_millis(ms.min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_s_body_is_summarised_never_echoed() {
        let e = "Generic S3 error: Error performing PUT http://127.0.0.1:9/b/k in 3ms, after 2 retries, max_retries: 2, retry_timeout: 10s  - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>seen AKIA123 token</Message></Error>";
        assert_eq!(
            summary(e),
            "Generic S3 error: Error performing PUT http://127.0.0.1:9/b/k in 3ms, after 2 retries, max_retries: 2, retry_timeout: 10s: the store answered HTTP 403 Forbidden (AccessDenied)"
        );
        let e = "Error performing PUT x - Server returned non-2xx status code: 500 Internal Server Error: <html>anything <Code>not a code!</Code>";
        assert_eq!(
            summary(e),
            "Error performing PUT x: the store answered HTTP 500 Internal Server Error"
        );
        let e = "Generic S3 error: Error performing PUT x - Server returned error response: secret body";
        assert!(!summary(e).contains("secret body"), "{}", summary(e));
        assert_eq!(
            summary("error sending request: connection refused"),
            "error sending request: connection refused"
        );
    }
    use std::sync::Arc;

    fn memory() -> Connected {
        let m = Arc::new(object_store::memory::InMemory::new());
        Connected {
            object: m.clone(),
            multipart: m,
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn multipart_uploads_are_whole_and_report_their_id() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        let body: Vec<u8> = (0..(12 * 1024 * 1024 + 7))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &body).unwrap();
        let store = memory();
        let seen = std::sync::Mutex::new(Vec::new());
        let shape = UploadShape {
            part_bytes: MIN_PART_BYTES,
            concurrency: 2,
        };
        let n = rt
            .block_on(upload_file(&store, &p, "k/a.bin", shape, |id| {
                seen.lock().unwrap().push(id);
                async {}
            }))
            .unwrap();
        assert_eq!(n, body.len() as u64);
        let got = rt.block_on(async {
            store
                .object
                .get(&ObjectPath::from("k/a.bin"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        assert_eq!(&got[..], &body[..]);
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].is_some());
        // A small file is one PUT: no multipart id.
        let small = dir.path().join("s.bin");
        std::fs::write(&small, b"hello").unwrap();
        rt.block_on(upload_file(&store, &small, "s.bin", shape, |_| async {
            panic!("no multipart for a small file")
        }))
        .unwrap();
    }
}
