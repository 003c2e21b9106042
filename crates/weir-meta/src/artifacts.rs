//! The artifact store: files by content.
//!
//! Bytes live once, under `blobs/<sha256>` of an `object_store` — a local
//! directory by default, or an `s3://`, `gs://` or `az://` URL. Which path
//! (`<experiment>/<run>/artifacts/model.onnx`) holds which blob is metadata:
//! an `artifact_stored` event on `weir.meta`. A client's path therefore
//! never becomes a filesystem path: it is only a key of that index, checked
//! by [`check_path`], and the store opens nothing but `blobs/<hex digest>`
//! and its own staging files — `..`, absolute paths, encoded separators
//! and symlinks in the directory cannot reach outside it.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart};
use sha2::{Digest as _, Sha256};

use crate::MetaError;

/// Checks an artifact path: relative, `/`-separated, no empty, `.` or `..`
/// part, no backslash, NUL or percent-encoded separator or dot.
pub fn check_path(path: &str) -> Result<(), MetaError> {
    let bad = |why: &str| MetaError::invalid(format!("Invalid artifact path: '{path}'. {why}"));
    if path.is_empty() {
        return Err(bad("The path is empty."));
    }
    // `/x`, and `c:/x` or `s3:/x` (a drive or a scheme).
    if path.starts_with('/') || path.split('/').next().is_some_and(|p| p.ends_with(':')) {
        return Err(bad("Absolute paths are not allowed."));
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(bad("Backslashes and NUL characters are not allowed."));
    }
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%2e", "%00"]
        .iter()
        .any(|code| lower.contains(code))
    {
        return Err(bad("Encoded separators and dots are not allowed."));
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad("Empty, '.' and '..' parts are not allowed."));
    }
    Ok(())
}

/// A content-addressed blob store.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// Where, for messages.
    location: String,
}

fn failed(what: &str, error: impl std::fmt::Display) -> MetaError {
    MetaError::internal(format!("artifact store: {what}: {error}"))
}

impl ArtifactStore {
    /// The store of a state directory (`<state>/artifacts`), where `weir`'s
    /// commands keep artifacts unless a server is given another.
    pub fn under(state_dir: &std::path::Path) -> Result<Self, MetaError> {
        let dir = state_dir.join("artifacts");
        let location = dir.to_str().ok_or_else(|| {
            MetaError::invalid(format!(
                "{}: the state directory is not UTF-8",
                dir.display()
            ))
        })?;
        Self::open(location)
    }

    /// Opens a store: a local directory (created if missing), or an
    /// `s3://`, `gs://`, `az://`, `file://` or `memory://` URL (credentials
    /// from the environment, as `object_store` reads them).
    pub fn open(location: &str) -> Result<Self, MetaError> {
        let store: Arc<dyn ObjectStore> = match url::Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => {
                let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars())
                    .map_err(|e| failed(location, e))?;
                Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
            }
            // Not a URL, or a Windows drive letter: a directory.
            _ => {
                std::fs::create_dir_all(location).map_err(|e| failed(location, e))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(location)
                        .map_err(|e| failed(location, e))?,
                )
            }
        };
        Ok(Self {
            store,
            location: location.to_string(),
        })
    }

    fn blob(sha256: &str) -> StorePath {
        StorePath::from(format!("blobs/{}/{sha256}", &sha256[..2]))
    }

    /// Stores a stream of bytes; returns their SHA-256 (hex) and size. The
    /// bytes go to a staging object while they are hashed, then move to
    /// their blob: a failed upload leaves no blob behind.
    pub async fn put<S, E>(&self, mut body: S) -> Result<(String, u64), MetaError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let staging = StorePath::from(format!("staging/{}", uuid::Uuid::new_v4().simple()));
        let upload = self
            .store
            .put_multipart(&staging)
            .await
            .map_err(|e| failed("starting an upload", e))?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    let _ = writer.abort().await;
                    return Err(MetaError::new(
                        crate::ErrorCode::BadRequest,
                        format!("reading the upload: {error}"),
                    ));
                }
            };
            hasher.update(&chunk);
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        writer
            .finish()
            .await
            .map_err(|e| failed("finishing an upload", e))?;
        let sha256 = format!("{:x}", hasher.finalize());
        // The same bytes under the same name: overwriting is harmless.
        self.store
            .rename(&staging, &Self::blob(&sha256))
            .await
            .map_err(|e| failed("storing a blob", e))?;
        Ok((sha256, size))
    }

    /// The bytes of a blob, as a stream.
    pub async fn get(
        &self,
        sha256: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, MetaError>> + use<>, MetaError> {
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(MetaError::internal(format!("`{sha256}` is not a SHA-256")));
        }
        let result = self
            .store
            .get(&Self::blob(sha256))
            .await
            .map_err(|e| failed(&format!("reading blob {sha256} in {}", self.location), e))?;
        Ok(result
            .into_stream()
            .map_err(|e| failed("reading a blob", e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape() {
        for good in ["1/abc/artifacts/model.onnx", "0/r/artifacts/a b/c.txt", "x"] {
            check_path(good).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "1/run/../../x",
            "1/./x",
            "1//x",
            "1/x/",
            "..%2fsecret",
            "1/%2E%2E/x",
            "a\\..\\b",
            "c:/windows",
            "a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} is refused");
        }
    }
}
