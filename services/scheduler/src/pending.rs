//! The scheduler's pending set: entries waiting for a batch, and the messages they came in.
//!
//! Sized for 2^20 entries and more: a message is known by a small index rather than its id
//! string, and counts its unresolved entries rather than listing them, so an entry costs
//! its own fields plus a few bytes.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    time::{Duration, Instant},
};

use cas_core::pipeline::IngestEntry;
use cas_queue::Receipt;
use uuid::Uuid;

/// Hashes a UUID by its last eight bytes. The keys here are request ids (UUIDv7, whose
/// last bytes are random, made by the API) and stream tip keys (sha256 digests): uniformly
/// distributed, and not chosen by clients, so no hashing is needed to spread them or to
/// resist flooding. Closing a 2^20 batch looks the pending set up about five million times;
/// with the standard SipHash those lookups took about a second of the close on the
/// benchmark machine.
#[derive(Debug, Default)]
struct UuidHasher(u64);

impl Hasher for UuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A Uuid hashes as its 16 bytes (in one `write`); keep the last eight.
        let tail = &bytes[bytes.len().saturating_sub(8)..];
        let mut word = [0u8; 8];
        word[8 - tail.len()..].copy_from_slice(tail);
        self.0 = u64::from_le_bytes(word);
    }
}

type UuidMap<V> = HashMap<Uuid, V, BuildHasherDefault<UuidHasher>>;

#[derive(Debug)]
struct PendingEntry {
    entry: IngestEntry,
    /// The key of its (stream id, origin) pair, computed on arrival: REPLACED and the
    /// stream tips work on it, so a close does not hash 2^20 pairs of strings.
    tip: Uuid,
    /// Arrival order; later wins a timestamp tie.
    seq: u64,
    /// The messages that carry this entry (indexes into `Pending::messages`).
    messages: Vec<u32>,
}

#[derive(Debug)]
struct PendingMessage {
    id: String,
    receipt: Receipt,
    /// Entries of this message not resolved yet.
    unresolved: u32,
}

/// Entries waiting for a batch. A message is acknowledged once every entry it carries is
/// resolved (batched, replaced, or found to need nothing).
#[derive(Debug, Default)]
pub struct Pending {
    entries: UuidMap<PendingEntry>,
    /// Slots of held messages; `None` once a message is acknowledged (its slot is reused).
    messages: Vec<Option<PendingMessage>>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    /// Entries whose stream tip has not been claimed yet (see `Scheduler::claim_received`).
    unclaimed: Vec<Uuid>,
    next_seq: u64,
    since: Option<Instant>,
}

impl Pending {
    /// Number of pending entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How long the current pending set has been waiting.
    pub fn age(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }

    /// Whether a request is pending.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.entries.contains_key(id)
    }

    /// The entry of a request and its arrival sequence number.
    pub fn get(&self, id: &Uuid) -> Option<(&IngestEntry, u64)> {
        self.entries.get(id).map(|e| (&e.entry, e.seq))
    }

    /// Take the entries whose stream tip is not claimed yet (give back with
    /// [`Pending::unclaim`] if claiming fails).
    pub fn take_unclaimed(&mut self) -> Vec<Uuid> {
        std::mem::take(&mut self.unclaimed)
    }

    /// Entries whose claim failed: claim them later.
    pub fn unclaim(&mut self, ids: Vec<Uuid>) {
        self.unclaimed
            .extend(ids.into_iter().filter(|id| self.entries.contains_key(id)));
    }

    /// The claim of its stream's tip for a pending request.
    pub fn tip_claim(&self, id: &Uuid) -> Option<cas_store::TipClaim> {
        self.entries.get(id).map(|e| cas_store::TipClaim {
            key: e.tip,
            request_id: e.entry.id,
            timestamp: cas_core::ClientTimestamp::from_unix_nanos(e.entry.ts),
        })
    }

    /// Ids of all pending entries.
    pub fn ids(&self) -> Vec<Uuid> {
        self.entries.keys().copied().collect()
    }

    /// Receipts of every message still held.
    pub fn receipts(&self) -> Vec<Receipt> {
        self.messages
            .iter()
            .flatten()
            .map(|m| m.receipt.clone())
            .collect()
    }

    /// Add a received message. A redelivered message (same id) only refreshes its receipt. A
    /// message that carries no entry is not kept: its receipt is returned, to acknowledge.
    pub fn add_message(
        &mut self,
        message_id: String,
        receipt: Receipt,
        entries: Vec<IngestEntry>,
    ) -> Option<Receipt> {
        if let Some(&slot) = self.by_id.get(&message_id) {
            if let Some(known) = &mut self.messages[slot as usize] {
                known.receipt = receipt;
            }
            return None;
        }
        if entries.is_empty() {
            return Some(receipt);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.messages.push(None);
                (self.messages.len() - 1) as u32
            }
        };
        let mut unresolved = 0;
        for entry in entries {
            match self.entries.get_mut(&entry.id) {
                // Listed twice in this message: counted once.
                Some(existing) if existing.messages.contains(&slot) => {}
                Some(existing) => {
                    existing.messages.push(slot);
                    unresolved += 1;
                }
                None => {
                    self.next_seq += 1;
                    let tip = cas_store::tip_key(&entry.sid, &entry.org);
                    self.unclaimed.push(entry.id);
                    self.entries.insert(
                        entry.id,
                        PendingEntry {
                            entry,
                            tip,
                            seq: self.next_seq,
                            messages: vec![slot],
                        },
                    );
                    unresolved += 1;
                }
            }
        }
        self.by_id.insert(message_id.clone(), slot);
        self.messages[slot as usize] = Some(PendingMessage {
            id: message_id,
            receipt,
            unresolved,
        });
        if self.since.is_none() && !self.entries.is_empty() {
            self.since = Some(Instant::now());
        }
        None
    }

    /// Split `candidates` into winners and losers of REPLACED: per (stream id, origin) the
    /// newest client timestamp wins; on a tie, the entry that arrived later.
    pub fn pick_winners(&self, candidates: &[Uuid]) -> (Vec<Uuid>, Vec<Uuid>) {
        let mut best: UuidMap<(i64, u64, Uuid)> =
            UuidMap::with_capacity_and_hasher(candidates.len(), Default::default());
        let mut losers = Vec::new();
        for id in candidates {
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            let key = e.tip;
            let candidate = (e.entry.ts, e.seq, *id);
            match best.get_mut(&key) {
                None => {
                    best.insert(key, candidate);
                }
                Some(current) => {
                    if (candidate.0, candidate.1) > (current.0, current.1) {
                        losers.push(current.2);
                        *current = candidate;
                    } else {
                        losers.push(*id);
                    }
                }
            }
        }
        (best.into_values().map(|(_, _, id)| id).collect(), losers)
    }

    /// Mark entries resolved; returns the receipts of messages that are now fully resolved
    /// (to acknowledge) and forgets them.
    pub fn resolve(&mut self, ids: &[Uuid]) -> Vec<Receipt> {
        let mut done = Vec::new();
        for id in ids {
            let Some(entry) = self.entries.remove(id) else {
                continue;
            };
            for slot in entry.messages {
                let finished = match &mut self.messages[slot as usize] {
                    Some(m) => {
                        m.unresolved = m.unresolved.saturating_sub(1);
                        m.unresolved == 0
                    }
                    None => false,
                };
                if finished && let Some(m) = self.messages[slot as usize].take() {
                    self.by_id.remove(&m.id);
                    self.free.push(slot);
                    done.push(m.receipt);
                }
            }
        }
        self.since = if self.entries.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sid: &str, org: &str, ts: i64) -> IngestEntry {
        IngestEntry {
            id: Uuid::now_v7(),
            cid: format!("bafy-{}", Uuid::new_v4()),
            sid: sid.to_owned(),
            org: org.to_owned(),
            ts,
        }
    }

    #[test]
    fn newest_timestamp_wins_per_stream_and_origin() {
        let mut p = Pending::default();
        let old = entry("s1", "a", 10);
        let new = entry("s1", "a", 20);
        let other_origin = entry("s1", "b", 5);
        let other_stream = entry("s2", "a", 1);
        let tie_first = entry("s3", "a", 7);
        let tie_later = entry("s3", "a", 7);
        let all = vec![
            new.clone(),
            old.clone(),
            other_origin.clone(),
            other_stream.clone(),
            tie_first.clone(),
            tie_later.clone(),
        ];
        assert_eq!(
            p.add_message("m1".into(), Receipt("r1".into()), all.clone()),
            None
        );
        let ids: Vec<Uuid> = all.iter().map(|e| e.id).collect();
        let (mut winners, mut losers) = p.pick_winners(&ids);
        winners.sort();
        losers.sort();
        let mut expect_w = vec![new.id, other_origin.id, other_stream.id, tie_later.id];
        expect_w.sort();
        let mut expect_l = vec![old.id, tie_first.id];
        expect_l.sort();
        assert_eq!(winners, expect_w, "a late-arriving older request loses");
        assert_eq!(losers, expect_l);
    }

    #[test]
    fn messages_are_acked_only_when_every_entry_is_resolved() {
        let mut p = Pending::default();
        let (a, b, c) = (entry("s", "o", 1), entry("t", "o", 1), entry("u", "o", 1));
        p.add_message(
            "m1".into(),
            Receipt("r1".into()),
            vec![a.clone(), b.clone()],
        );
        // The sweeper re-published b in a second message.
        p.add_message(
            "m2".into(),
            Receipt("r2".into()),
            vec![b.clone(), c.clone()],
        );
        assert_eq!(p.len(), 3);
        assert!(p.age().is_some());
        assert!(p.resolve(&[a.id]).is_empty(), "m1 still carries b");
        let mut acked = p.resolve(&[b.id]);
        assert_eq!(acked, vec![Receipt("r1".into())]);
        acked = p.resolve(&[c.id]);
        assert_eq!(acked, vec![Receipt("r2".into())]);
        assert!(p.is_empty());
        assert_eq!(p.age(), None);
        assert!(p.receipts().is_empty());
    }

    #[test]
    fn redelivery_refreshes_the_receipt_only() {
        let mut p = Pending::default();
        let a = entry("s", "o", 1);
        p.add_message("m1".into(), Receipt("r1".into()), vec![a.clone()]);
        p.add_message("m1".into(), Receipt("r1-again".into()), vec![a.clone()]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.receipts(), vec![Receipt("r1-again".into())]);
        assert_eq!(p.resolve(&[a.id]), vec![Receipt("r1-again".into())]);
    }

    #[test]
    fn an_entry_listed_twice_in_a_message_is_counted_once_and_slots_are_reused() {
        let mut p = Pending::default();
        let a = entry("s", "o", 1);
        p.add_message(
            "m1".into(),
            Receipt("r1".into()),
            vec![a.clone(), a.clone()],
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p.resolve(&[a.id]), vec![Receipt("r1".into())]);
        let b = entry("t", "o", 1);
        p.add_message("m2".into(), Receipt("r2".into()), vec![b.clone()]);
        assert_eq!(p.messages.len(), 1, "the freed slot is reused");
        assert_eq!(p.resolve(&[b.id]), vec![Receipt("r2".into())]);
    }

    #[test]
    fn a_message_without_entries_is_not_held() {
        let mut p = Pending::default();
        let receipt = Receipt("empty".into());
        assert_eq!(
            p.add_message("m0".into(), receipt.clone(), Vec::new()),
            Some(receipt)
        );
        assert!(p.receipts().is_empty() && p.is_empty());
    }

    #[test]
    fn a_message_with_nothing_new_is_acked_with_the_entries_it_shares() {
        let mut p = Pending::default();
        let a = entry("s", "o", 1);
        p.add_message("m1".into(), Receipt("r1".into()), vec![a.clone()]);
        // The same request published again (the sweeper): already held through m1.
        p.add_message("m2".into(), Receipt("r2".into()), vec![a.clone()]);
        let mut acked = p.resolve(&[a.id]);
        acked.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(acked, vec![Receipt("r1".into()), Receipt("r2".into())]);
        assert!(p.receipts().is_empty());
    }
}
