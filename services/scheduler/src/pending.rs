//! The scheduler's pending set: entries waiting for a batch, and the messages they came in.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use cas_core::pipeline::IngestEntry;
use cas_queue::Receipt;
use uuid::Uuid;

#[derive(Debug)]
struct PendingEntry {
    entry: IngestEntry,
    /// Arrival order; later wins a timestamp tie.
    seq: u64,
    /// Ids of the messages that carry this entry.
    messages: Vec<String>,
}

#[derive(Debug)]
struct PendingMessage {
    receipt: Receipt,
    unresolved: HashSet<Uuid>,
}

/// Entries waiting for a batch. A message is acknowledged once every entry it carries is
/// resolved (batched, replaced, or found to need nothing).
#[derive(Debug, Default)]
pub struct Pending {
    entries: HashMap<Uuid, PendingEntry>,
    messages: HashMap<String, PendingMessage>,
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

    /// Ids of all pending entries.
    pub fn ids(&self) -> Vec<Uuid> {
        self.entries.keys().copied().collect()
    }

    /// Receipts of every message still held.
    pub fn receipts(&self) -> Vec<Receipt> {
        self.messages.values().map(|m| m.receipt.clone()).collect()
    }

    /// Add a received message. A redelivered message (same id) only refreshes its receipt.
    pub fn add_message(&mut self, message_id: String, receipt: Receipt, entries: Vec<IngestEntry>) {
        if let Some(known) = self.messages.get_mut(&message_id) {
            known.receipt = receipt;
            return;
        }
        let mut unresolved = HashSet::with_capacity(entries.len());
        for entry in entries {
            unresolved.insert(entry.id);
            match self.entries.get_mut(&entry.id) {
                Some(existing) => existing.messages.push(message_id.clone()),
                None => {
                    self.next_seq += 1;
                    self.entries.insert(
                        entry.id,
                        PendingEntry {
                            entry,
                            seq: self.next_seq,
                            messages: vec![message_id.clone()],
                        },
                    );
                }
            }
        }
        self.messages.insert(
            message_id,
            PendingMessage {
                receipt,
                unresolved,
            },
        );
        if self.since.is_none() && !self.entries.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    /// Split `candidates` into winners and losers of REPLACED: per (stream id, origin) the
    /// newest client timestamp wins; on a tie, the entry that arrived later.
    pub fn pick_winners(&self, candidates: &[Uuid]) -> (Vec<Uuid>, Vec<Uuid>) {
        let mut best: HashMap<(&str, &str), (i64, u64, Uuid)> = HashMap::new();
        let mut losers = Vec::new();
        for id in candidates {
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            let key = (e.entry.sid.as_str(), e.entry.org.as_str());
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
            for message_id in entry.messages {
                let finished = match self.messages.get_mut(&message_id) {
                    Some(m) => {
                        m.unresolved.remove(id);
                        m.unresolved.is_empty()
                    }
                    None => false,
                };
                if finished && let Some(m) = self.messages.remove(&message_id) {
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
        p.add_message("m1".into(), Receipt("r1".into()), all.clone());
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
}
