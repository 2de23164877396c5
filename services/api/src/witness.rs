//! Witnesses built on demand from tree artifacts in blob storage, with bounded caches.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    ops::Range,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use bytes::Bytes;
use cas_blob::BlobStore;
use cas_core::{StreamId, pipeline::tree_artifact_key};
use cas_merkle::{ArtifactError, ArtifactIndex, Cid, RangeRead};
use cas_store::RequestRecord;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{BuiltWitness, WitnessSource};

/// A map that forgets its oldest entries beyond a capacity.
#[derive(Debug)]
pub(crate) struct BoundedCache<K, V> {
    capacity: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).cloned()
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// Artifact data is read and cached in aligned pages of this size. Nodes poll for their
/// witnesses right after their batch is anchored, so all of a 2^20-leaf batch's artifact
/// (70 MB) is read within minutes: about 70 reads of a page, each shared by the ~15,000
/// witnesses in it, instead of two small reads per chunk of 1024 leaves.
const PAGE_BYTES: u64 = 1 << 20;

/// A page: the batch (whose id names the artifact) and the page number.
type PageKey = (Uuid, u64);

/// Cached pages. Each is filled once: concurrent readers of a page that is still being
/// fetched wait for that one fetch.
type Pages = Mutex<BoundedCache<PageKey, Arc<OnceCell<Bytes>>>>;

/// One artifact object, read through the page cache.
struct BlobRange<'a> {
    blobs: &'a dyn BlobStore,
    batch_id: Uuid,
    key: String,
    pages: &'a Pages,
}

impl BlobRange<'_> {
    fn new<'a>(blobs: &'a dyn BlobStore, batch_id: Uuid, pages: &'a Pages) -> BlobRange<'a> {
        BlobRange {
            blobs,
            batch_id,
            key: tree_artifact_key(batch_id),
            pages,
        }
    }

    async fn page(&self, number: u64) -> Result<Bytes, ArtifactError> {
        let cell = {
            let mut pages = self
                .pages
                .lock()
                .map_err(|_| ArtifactError::Read("page cache poisoned".to_owned()))?;
            let key = (self.batch_id, number);
            match pages.get(&key) {
                Some(cell) => cell,
                None => {
                    let cell = Arc::new(OnceCell::new());
                    pages.insert(key, Arc::clone(&cell));
                    cell
                }
            }
        };
        let page = cell
            .get_or_try_init(|| async {
                metrics::counter!("cas_artifact_page_reads_total").increment(1);
                let start = number * PAGE_BYTES;
                match self
                    .blobs
                    .get_range(&self.key, start..start + PAGE_BYTES)
                    .await
                {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err(ArtifactError::Read(format!(
                        "tree artifact {} is missing",
                        self.key
                    ))),
                    Err(e) => Err(ArtifactError::Read(e.to_string())),
                }
            })
            .await?;
        Ok(page.clone())
    }
}

impl RangeRead for BlobRange<'_> {
    type Bytes = Bytes;

    async fn read_range(&self, range: Range<u64>) -> Result<Bytes, ArtifactError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let first = range.start / PAGE_BYTES;
        let last = (range.end - 1) / PAGE_BYTES;
        // Most reads fall inside one page: a view of it, no copy.
        if first == last {
            let page = self.page(first).await?;
            let base = first * PAGE_BYTES;
            let lo = ((range.start - base) as usize).min(page.len());
            let hi = ((range.end - base) as usize).min(page.len());
            return Ok(page.slice(lo..hi));
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for number in first..=last {
            let page = self.page(number).await?;
            let base = number * PAGE_BYTES;
            let lo = (range.start.max(base) - base) as usize;
            let hi = ((range.end - base) as usize).min(page.len());
            if lo < hi {
                out.extend_from_slice(&page[lo..hi]);
            }
            if (page.len() as u64) < PAGE_BYTES {
                break; // the end of the artifact
            }
        }
        Ok(Bytes::from(out))
    }
}

/// Builds witnesses from the tree artifacts the workers write. Completed answers never
/// change, so built witnesses and artifact indexes are cached.
pub struct ArtifactWitnesses {
    blobs: Arc<dyn BlobStore>,
    indexes: Mutex<BoundedCache<Uuid, Arc<ArtifactIndex>>>,
    pages: Pages,
    witnesses: Mutex<BoundedCache<String, BuiltWitness>>,
}

impl std::fmt::Debug for ArtifactWitnesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactWitnesses").finish_non_exhaustive()
    }
}

impl ArtifactWitnesses {
    /// A source reading artifacts from `blobs`, caching up to `index_capacity` batch indexes
    /// (about 75 KB each for 2^20-leaf batches) and twice as many 1 MiB pages of artifact
    /// data, and `witness_capacity` witnesses (about 3 KB each). Leaves are in CID order, so
    /// nodes polling for one batch touch all its pages at random: the default 128 pages
    /// hold a whole 2^20-leaf artifact (70 pages) with room for others.
    pub fn new(blobs: Arc<dyn BlobStore>, index_capacity: usize, witness_capacity: usize) -> Self {
        Self {
            blobs,
            indexes: Mutex::new(BoundedCache::new(index_capacity)),
            pages: Mutex::new(BoundedCache::new(2 * index_capacity.max(2))),
            witnesses: Mutex::new(BoundedCache::new(witness_capacity)),
        }
    }

    async fn index(&self, batch_id: Uuid) -> Result<Arc<ArtifactIndex>, String> {
        if let Some(index) = self
            .indexes
            .lock()
            .map_err(|_| "cache poisoned")?
            .get(&batch_id)
        {
            return Ok(index);
        }
        let source = BlobRange::new(self.blobs.as_ref(), batch_id, &self.pages);
        let index = Arc::new(
            ArtifactIndex::load(&source)
                .await
                .map_err(|e| e.to_string())?,
        );
        self.indexes
            .lock()
            .map_err(|_| "cache poisoned")?
            .insert(batch_id, Arc::clone(&index));
        Ok(index)
    }
}

#[async_trait]
impl WitnessSource for ArtifactWitnesses {
    async fn witness(&self, record: &RequestRecord) -> Result<Option<BuiltWitness>, String> {
        let Some(anchor) = &record.anchor else {
            return Ok(None);
        };
        if let Some(hit) = self
            .witnesses
            .lock()
            .map_err(|_| "cache poisoned")?
            .get(&record.cid)
        {
            metrics::counter!("cas_witness_cache_hits_total").increment(1);
            return Ok(Some(hit));
        }
        metrics::counter!("cas_witness_cache_misses_total").increment(1);
        let index = self.index(anchor.batch_id).await?;
        let stream: StreamId = record
            .stream_id
            .parse()
            .map_err(|e| format!("stored stream id {} is invalid: {e}", record.stream_id))?;
        let leaf = Cid::try_from(record.cid.as_str())
            .map_err(|e| format!("stored cid {} is invalid: {e}", record.cid))?;
        let source = BlobRange::new(self.blobs.as_ref(), anchor.batch_id, &self.pages);
        let witness = index
            .witness(
                &source,
                anchor.leaf_index as u64,
                *stream.init_cid(),
                Some(&leaf),
            )
            .await
            .map_err(|e| e.to_string())?;
        let built = BuiltWitness {
            anchor_commit_cid: witness.anchor_commit_cid.to_string(),
            car: witness.car,
        };
        self.witnesses
            .lock()
            .map_err(|_| "cache poisoned")?
            .insert(record.cid.clone(), built.clone());
        Ok(Some(built))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Objects in memory, counting ranged reads.
    #[derive(Default)]
    struct CountingBlobs {
        objects: Mutex<HashMap<String, Bytes>>,
        range_reads: AtomicUsize,
    }

    #[async_trait]
    impl BlobStore for CountingBlobs {
        async fn put(&self, key: &str, bytes: Bytes) -> Result<(), cas_blob::BlobError> {
            self.objects.lock().unwrap().insert(key.to_owned(), bytes);
            Ok(())
        }

        async fn get(&self, key: &str) -> Result<Option<Bytes>, cas_blob::BlobError> {
            Ok(self.objects.lock().unwrap().get(key).cloned())
        }

        async fn get_range(
            &self,
            key: &str,
            range: Range<u64>,
        ) -> Result<Option<Bytes>, cas_blob::BlobError> {
            self.range_reads.fetch_add(1, Ordering::SeqCst);
            // Let concurrent readers pile up behind the first fetch.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(self.objects.lock().unwrap().get(key).map(|b| {
                let len = b.len() as u64;
                b.slice(range.start.min(len) as usize..range.end.min(len) as usize)
            }))
        }
    }

    #[tokio::test]
    async fn page_reads_give_exact_ranges_and_fetch_each_page_once() {
        let batch = Uuid::now_v7();
        let len = 3 * PAGE_BYTES + 12_345;
        let object: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let blobs = CountingBlobs::default();
        blobs
            .put(&tree_artifact_key(batch), Bytes::from(object.clone()))
            .await
            .unwrap();
        let pages: Pages = Mutex::new(BoundedCache::new(16));
        let source = BlobRange::new(&blobs, batch, &pages);
        let p = PAGE_BYTES;
        let cases = [
            0..4096,
            p - 10..p + 10,       // across one boundary
            p / 2..2 * p + p / 2, // across two
            3 * p..len,           // the short last page
            len - 5..len + 1000,  // clipped at the end
            len + 10..len + 20,   // past the end
            7..7,                 // empty
        ];
        for range in cases {
            let got = source.read_range(range.clone()).await.unwrap();
            let lo = (range.start.min(len)) as usize;
            let hi = (range.end.min(len)).max(range.start.min(len)) as usize;
            assert_eq!(&got[..], &object[lo..hi], "{range:?}");
        }
        // Four pages in all, each read once.
        assert_eq!(blobs.range_reads.load(Ordering::SeqCst), 4);

        // Concurrent readers of a page not yet cached share one fetch.
        let other = Uuid::now_v7();
        blobs
            .put(&tree_artifact_key(other), Bytes::from(object.clone()))
            .await
            .unwrap();
        let before = blobs.range_reads.load(Ordering::SeqCst);
        let source = BlobRange::new(&blobs, other, &pages);
        let reads = (0..50u64).map(|i| source.read_range(i * 100..i * 100 + 64));
        for (i, got) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let at = i * 100;
            assert_eq!(&got.unwrap()[..], &object[at..at + 64]);
        }
        assert_eq!(blobs.range_reads.load(Ordering::SeqCst), before + 1);
    }

    #[tokio::test]
    async fn a_missing_artifact_is_an_error_and_is_retried() {
        let blobs = CountingBlobs::default();
        let pages: Pages = Mutex::new(BoundedCache::new(16));
        let batch = Uuid::now_v7();
        let source = BlobRange::new(&blobs, batch, &pages);
        let err = source.read_range(0..10).await.unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        // Written later (say, an API that saw the anchor row first): the next read finds it.
        blobs
            .put(
                &tree_artifact_key(batch),
                Bytes::from_static(b"0123456789abc"),
            )
            .await
            .unwrap();
        assert_eq!(&source.read_range(2..5).await.unwrap()[..], b"234");
    }

    #[test]
    fn bounded_cache_forgets_the_oldest() {
        let mut cache = BoundedCache::new(2);
        cache.insert(1, "a");
        cache.insert(2, "b");
        cache.insert(1, "a2");
        cache.insert(3, "c");
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&2), Some("b"));
        assert_eq!(cache.get(&3), Some("c"));
        let mut off = BoundedCache::new(0);
        off.insert(1, 1);
        assert_eq!(off.get(&1), None);
    }
}
