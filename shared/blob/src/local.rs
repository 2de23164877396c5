//! [`LocalDirBlobStore`]: objects as files under a root directory (for `cas dev`).

use std::{
    fs::{self, File},
    io::{self, Read, Seek, SeekFrom, Write},
    ops::Range,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BlobError, BlobStore, validate_key};

/// A [`BlobStore`] keeping each object in a file `<root>/<key>`.
///
/// - `put` writes a temporary file in the target's directory and renames it over the
///   target, so readers never see a partial object. Temporary names contain `~`, which
///   no valid key does, so they cannot collide with objects.
/// - `get_range` seeks and reads only the requested bytes.
/// - Parent directories are created as needed. Unlike S3, a key cannot be both an object
///   and a "directory" of other keys (`a/b` and `a/b/c`): the second `put` fails with
///   [`BlobError::Internal`].
///
/// File I/O runs on tokio's blocking thread pool.
#[derive(Debug, Clone)]
pub struct LocalDirBlobStore {
    root: PathBuf,
}

impl LocalDirBlobStore {
    /// A store rooted at `root` (created on the first `put` if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, BlobError> {
        validate_key(key)?;
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        Ok(path)
    }
}

fn internal(what: &str, path: &Path, err: io::Error) -> BlobError {
    BlobError::Internal(format!("{what} {}: {err}", path.display()))
}

/// Errors that mean "there is no object at this path".
fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

/// Open an existing regular file; `Ok(None)` if there is none.
fn open_object(path: &Path) -> Result<Option<File>, BlobError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(internal("open", path, err)),
    };
    let meta = file.metadata().map_err(|err| internal("stat", path, err))?;
    if meta.is_file() {
        Ok(Some(file))
    } else {
        Ok(None)
    }
}

fn to_usize(n: u64) -> Result<usize, BlobError> {
    usize::try_from(n).map_err(|_| BlobError::Internal(format!("size {n} does not fit in memory")))
}

fn put_blocking(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(BlobError::Internal(format!(
            "bad object path {}",
            path.display()
        )));
    };
    fs::create_dir_all(dir).map_err(|err| internal("create directory", dir, err))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!("~{}.tmp", uuid::Uuid::new_v4().simple()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut file = File::create_new(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    let result = written
        .map_err(|err| internal("write", &tmp, err))
        .and_then(|()| fs::rename(&tmp, path).map_err(|err| internal("rename to", path, err)));
    if result.is_err() {
        // Best effort: do not leave temporary files behind.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn get_blocking(path: &Path) -> Result<Option<Bytes>, BlobError> {
    let Some(mut file) = open_object(path)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    match file.read_to_end(&mut buf) {
        Ok(_) => Ok(Some(Bytes::from(buf))),
        Err(err) => Err(internal("read", path, err)),
    }
}

fn get_range_blocking(path: &Path, range: Range<u64>) -> Result<Option<Bytes>, BlobError> {
    let Some(mut file) = open_object(path)? else {
        return Ok(None);
    };
    let len = file
        .metadata()
        .map_err(|err| internal("stat", path, err))?
        .len();
    let start = range.start.min(len);
    let end = range.end.clamp(start, len);
    let mut buf = vec![0; to_usize(end - start)?];
    if !buf.is_empty() {
        file.seek(SeekFrom::Start(start))
            .map_err(|err| internal("seek", path, err))?;
        file.read_exact(&mut buf)
            .map_err(|err| internal("read", path, err))?;
    }
    Ok(Some(Bytes::from(buf)))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| BlobError::Internal(format!("blocking file task failed: {err}")))?
}

#[async_trait]
impl BlobStore for LocalDirBlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path_of(key)?;
        blocking(move || put_blocking(&path, &bytes)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let path = self.path_of(key)?;
        blocking(move || get_blocking(&path)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BlobError> {
        let path = self.path_of(key)?;
        blocking(move || get_range_blocking(&path, range)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_leaves_no_temporary_files() {
        let root = std::env::temp_dir().join(format!("cas-blob-unit-{}", uuid::Uuid::new_v4()));
        let store = LocalDirBlobStore::new(&root);
        store.put("x/y", Bytes::from_static(b"one")).await.unwrap();
        store.put("x/y", Bytes::from_static(b"two")).await.unwrap();
        let names: Vec<_> = fs::read_dir(root.join("x"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("y")]);
        assert_eq!(fs::read(root.join("x/y")).unwrap(), b"two");
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn directories_are_not_objects() {
        let root = std::env::temp_dir().join(format!("cas-blob-unit-{}", uuid::Uuid::new_v4()));
        let store = LocalDirBlobStore::new(&root);
        store.put("d/e", Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(store.get("d").await.unwrap(), None);
        assert_eq!(store.get_range("d", 0..1).await.unwrap(), None);
        assert_eq!(store.get("d/e/f").await.unwrap(), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
