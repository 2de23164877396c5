//! One-time nonces of signed requests: the replay protection of DID authentication.
//!
//! [`NonceStore`] is the boundary; [`MemoryNonceStore`] serves one process (`cas dev`) and
//! [`crate::PgStore`] serves every API instance sharing a database.

use std::{collections::HashMap, sync::Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::StoreError;

/// Nonces that have been used, each remembered until it expires.
///
/// Contract: `claim` is atomic across every user of the same store: of any number of
/// concurrent claims of one unexpired nonce, exactly one returns `Ok(true)`. A nonce whose
/// claim has expired may be claimed again (it is as good as purged). Expired nonces are
/// removed by `purge_expired`, so the store grows only with the nonces of one lifetime.
#[async_trait]
pub trait NonceStore: Send + Sync + 'static {
    /// Claim `nonce` until `expires_at`. `Ok(true)`: it was free, the request may proceed.
    /// `Ok(false)`: it is held, the request is a replay.
    async fn claim(&self, nonce: Uuid, expires_at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Forget the nonces that expired at or before `now`; returns how many were removed.
    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Nonces in this process's memory, for a single API instance (`cas dev`).
///
/// At most `max_entries` unexpired nonces are held: when it is full of them, claims fail
/// with [`StoreError::Unavailable`] (the API answers 503) rather than growing without bound.
#[derive(Debug)]
pub struct MemoryNonceStore {
    held: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    max_entries: usize,
}

impl MemoryNonceStore {
    /// A store holding at most `max_entries` nonces.
    pub fn new(max_entries: usize) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    /// How many nonces are held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.held.lock().map(|held| held.len()).unwrap_or(0)
    }

    /// Whether no nonce is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryNonceStore {
    /// One million nonces (about 40 MB).
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

#[async_trait]
impl NonceStore for MemoryNonceStore {
    async fn claim(&self, nonce: Uuid, expires_at: DateTime<Utc>) -> Result<bool, StoreError> {
        let now = Utc::now();
        let mut held = self
            .held
            .lock()
            .map_err(|_| StoreError::Internal("nonce store lock poisoned".to_owned()))?;
        if held.get(&nonce).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        if held.len() >= self.max_entries && !held.contains_key(&nonce) {
            held.retain(|_, until| *until > now);
            if held.len() >= self.max_entries {
                return Err(StoreError::Unavailable(format!(
                    "{} unexpired nonces held",
                    held.len()
                )));
            }
        }
        held.insert(nonce, expires_at);
        Ok(true)
    }

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut held = self
            .held
            .lock()
            .map_err(|_| StoreError::Internal("nonce store lock poisoned".to_owned()))?;
        let before = held.len();
        held.retain(|_, until| *until > now);
        Ok((before - held.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[tokio::test]
    async fn memory_store_is_bounded_and_purges_to_make_room() {
        let store = MemoryNonceStore::new(2);
        let past = Utc::now() - Duration::seconds(1);
        let future = Utc::now() + Duration::hours(1);
        assert!(store.claim(Uuid::new_v4(), past).await.unwrap());
        assert!(store.claim(Uuid::new_v4(), future).await.unwrap());
        // Full, but one is expired: it makes room.
        assert!(store.claim(Uuid::new_v4(), future).await.unwrap());
        assert_eq!(store.len(), 2);
        // Full of live nonces: shed (503), do not grow.
        let err = store.claim(Uuid::new_v4(), future).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(store.len(), 2);
    }
}
