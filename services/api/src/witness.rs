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

    pub(crate) fn get(&self, key: &K) -> Option<V> {
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

type RangeKey = (String, u64, u64);

/// Ranged reads kept per cached batch index: about 35 KB each, so 16 chunks per batch.
const RANGES_PER_INDEX: usize = 32;

/// One artifact object, read with ranged GETs. Reads go through a cache: the witnesses of
/// all leaves of one chunk (1024 leaves by default) read the same two ranges, and nodes
/// poll for them at about the same time, right after their batch is anchored.
struct BlobRange<'a> {
    blobs: &'a dyn BlobStore,
    key: String,
    cache: &'a Mutex<BoundedCache<RangeKey, Bytes>>,
}

impl RangeRead for BlobRange<'_> {
    type Bytes = Bytes;

    async fn read_range(&self, range: Range<u64>) -> Result<Bytes, ArtifactError> {
        let cache_key = (self.key.clone(), range.start, range.end);
        if let Ok(cache) = self.cache.lock()
            && let Some(hit) = cache.get(&cache_key)
        {
            return Ok(hit);
        }
        match self.blobs.get_range(&self.key, range).await {
            Ok(Some(bytes)) => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(cache_key, bytes.clone());
                }
                Ok(bytes)
            }
            Ok(None) => Err(ArtifactError::Read(format!(
                "tree artifact {} is missing",
                self.key
            ))),
            Err(e) => Err(ArtifactError::Read(e.to_string())),
        }
    }
}

/// Builds witnesses from the tree artifacts the workers write. Completed answers never
/// change, so built witnesses and artifact indexes are cached.
pub struct ArtifactWitnesses {
    blobs: Arc<dyn BlobStore>,
    indexes: Mutex<BoundedCache<Uuid, Arc<ArtifactIndex>>>,
    ranges: Mutex<BoundedCache<RangeKey, Bytes>>,
    witnesses: Mutex<BoundedCache<String, BuiltWitness>>,
}

impl std::fmt::Debug for ArtifactWitnesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactWitnesses").finish_non_exhaustive()
    }
}

impl ArtifactWitnesses {
    /// A source reading artifacts from `blobs`, caching up to `index_capacity` batch indexes
    /// (about 75 KB each for 2^20-leaf batches) with 32 chunk reads each (about 35 KB each),
    /// and `witness_capacity` witnesses (about 3 KB each).
    pub fn new(blobs: Arc<dyn BlobStore>, index_capacity: usize, witness_capacity: usize) -> Self {
        Self {
            blobs,
            indexes: Mutex::new(BoundedCache::new(index_capacity)),
            ranges: Mutex::new(BoundedCache::new(index_capacity * RANGES_PER_INDEX)),
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
        let source = BlobRange {
            blobs: self.blobs.as_ref(),
            key: tree_artifact_key(batch_id),
            cache: &self.ranges,
        };
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
        let source = BlobRange {
            blobs: self.blobs.as_ref(),
            key: tree_artifact_key(anchor.batch_id),
            cache: &self.ranges,
        };
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
    use super::BoundedCache;

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
