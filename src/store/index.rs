//! The index of every stored record: what listing, paging and pruning need of a record (its
//! id, creation time, status, type, end) without the record itself, so a node with 200,000
//! ended egresses holds a few tens of MB, starts by reading one file, and reads a record from
//! disk only when it is asked for.
//!
//! On disk it is `state_dir/egresses/index`, one JSON line per change of an entry (appended by
//! the store's writer thread after the record itself is on disk) or per removal; the last line
//! of an id wins. A start compacts it when it holds many more lines than entries.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{EgressInfo, EgressStatus, EgressType};

/// What the index keeps of a record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "c")]
    pub created_at: u64,
    #[serde(rename = "s")]
    pub status: EgressStatus,
    #[serde(rename = "t")]
    pub egress_type: EgressType,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Retention deleted its local outputs.
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl Entry {
    pub fn of(info: &EgressInfo) -> Entry {
        Entry {
            created_at: info.created_at,
            status: info.status,
            egress_type: info.egress_type,
            ended_at: info.ended_at,
            deleted: info.deleted_at.is_some(),
        }
    }
}

/// One line of the file: an entry, or its removal (`entry` absent).
#[derive(Debug, Serialize, Deserialize)]
pub struct Line {
    pub id: String,
    #[serde(flatten, default)]
    pub entry: Option<Entry>,
}

/// Where a page starts: after this record (newest first).
pub type Cursor = (u64, String);

#[derive(Debug, Default)]
pub struct RecordIndex {
    by_id: HashMap<String, Entry>,
    /// Newest first (then by id).
    order: BTreeSet<(Reverse<u64>, String)>,
}

impl RecordIndex {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.by_id.get(id)
    }

    /// Sets `id`'s entry; true when it changed (a line is then due).
    pub fn upsert(&mut self, id: &str, e: Entry) -> bool {
        match self.by_id.get(id) {
            Some(old) if *old == e => return false,
            Some(old) => {
                self.order
                    .remove(&(Reverse(old.created_at), id.to_string()));
            }
            None => {}
        }
        self.order.insert((Reverse(e.created_at), id.to_string()));
        self.by_id.insert(id.to_string(), e);
        true
    }

    pub fn remove(&mut self, id: &str) -> bool {
        match self.by_id.remove(id) {
            Some(old) => {
                self.order
                    .remove(&(Reverse(old.created_at), id.to_string()));
                true
            }
            None => false,
        }
    }

    /// Applies one line of the file.
    pub fn apply(&mut self, line: Line) {
        match line.entry {
            Some(e) => {
                self.upsert(&line.id, e);
            }
            None => {
                self.remove(&line.id);
            }
        }
    }

    /// Up to `limit` ids newest first, of the given statuses, after `after`; and the cursor of
    /// the next page when there is more.
    pub fn page(
        &self,
        statuses: Option<&[EgressStatus]>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> (Vec<String>, Option<Cursor>) {
        use std::ops::Bound;
        let start = match after {
            Some((c, id)) => Bound::Excluded((Reverse(*c), id.clone())),
            None => Bound::Unbounded,
        };
        let mut ids = Vec::new();
        let mut more = false;
        for (Reverse(c), id) in self.order.range((start, Bound::Unbounded)) {
            let Some(e) = self.by_id.get(id) else {
                continue;
            };
            if statuses.is_some_and(|s| !s.contains(&e.status)) {
                continue;
            }
            if ids.len() == limit {
                more = true;
                break;
            }
            ids.push((*c, id.clone()));
        }
        let next = if more { ids.last().cloned() } else { None };
        (ids.into_iter().map(|(_, id)| id).collect(), next)
    }

    /// Ended records whose end is before `cutoff_ms`, oldest first; `undeleted` keeps only
    /// those whose outputs are still there.
    pub fn ended_before(&self, cutoff_ms: u64, undeleted: bool) -> Vec<String> {
        self.order
            .iter()
            .rev()
            .filter_map(|(_, id)| {
                let e = self.by_id.get(id)?;
                let ended = e.status.is_final() && e.ended_at.is_some_and(|t| t < cutoff_ms);
                (ended && !(undeleted && e.deleted)).then(|| id.clone())
            })
            .collect()
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> + '_ {
        self.by_id.iter()
    }

    /// Every entry, for compaction.
    pub fn lines(&self) -> impl Iterator<Item = Line> + '_ {
        self.by_id.iter().map(|(id, e)| Line {
            id: id.clone(),
            entry: Some(*e),
        })
    }

    /// Ids not final (their records are loaded whole at start).
    pub fn unfinished(&self) -> Vec<String> {
        self.by_id
            .iter()
            .filter(|(_, e)| !e.status.is_final())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// An opaque page token for a cursor (and back).
pub fn token(c: &Cursor) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}.{}", c.0, c.1))
}

pub fn cursor(token: &str) -> Option<Cursor> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (c, id) = s.split_once('.')?;
    crate::model::is_valid_egress_id(id).then_some(())?;
    Some((c.parse().ok()?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(c: u64, s: EgressStatus) -> Entry {
        Entry {
            created_at: c,
            status: s,
            egress_type: EgressType::Track,
            ended_at: s.is_final().then_some(c + 10),
            deleted: false,
        }
    }

    #[test]
    fn pages_run_newest_first_with_filters_and_cursors() {
        let mut ix = RecordIndex::default();
        for n in 0..10u64 {
            let st = if n % 2 == 0 {
                EgressStatus::Complete
            } else {
                EgressStatus::Active
            };
            ix.upsert(&format!("EG_{n:012}"), e(n, st));
        }
        let (p1, next) = ix.page(None, None, 4);
        assert_eq!(
            p1,
            [
                "EG_000000000009",
                "EG_000000000008",
                "EG_000000000007",
                "EG_000000000006"
            ]
        );
        let (p2, next) = ix.page(None, next.as_ref(), 4);
        assert_eq!(p2[0], "EG_000000000005");
        let (p3, next) = ix.page(None, next.as_ref(), 4);
        assert_eq!((p3.len(), next), (2, None));
        let done = [EgressStatus::Complete];
        let (c, next) = ix.page(Some(&done), None, 3);
        assert_eq!(c, ["EG_000000000008", "EG_000000000006", "EG_000000000004"]);
        let (c, next) = ix.page(Some(&done), next.as_ref(), 3);
        assert_eq!(
            (c, next),
            (
                vec!["EG_000000000002".to_string(), "EG_000000000000".into()],
                None
            )
        );
        // A status change moves nothing; a removal drops it.
        assert!(ix.upsert("EG_000000000009", e(9, EgressStatus::Complete)));
        assert!(!ix.upsert("EG_000000000009", e(9, EgressStatus::Complete)));
        ix.remove("EG_000000000009");
        assert_eq!(ix.page(None, None, 1).0, ["EG_000000000008"]);
        assert_eq!(
            ix.ended_before(15, false),
            ["EG_000000000000", "EG_000000000002", "EG_000000000004"]
        );
        assert_eq!(ix.unfinished().len(), 4);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let c = (1_764_000_000_000, "EG_abcdefghijkl".to_string());
        assert_eq!(cursor(&token(&c)), Some(c));
        for bad in ["", "x", "MTIzLkVHX3g", "!!!"] {
            assert_eq!(cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_round_trip_with_removals() {
        let l = Line {
            id: "EG_abcdefghijkl".into(),
            entry: Some(e(5, EgressStatus::Complete)),
        };
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(
            text,
            r#"{"id":"EG_abcdefghijkl","c":5,"s":"complete","t":"track","e":15}"#
        );
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(back.entry, l.entry);
        let gone: Line = serde_json::from_str(r#"{"id":"EG_abcdefghijkl"}"#).unwrap();
        assert!(gone.entry.is_none());
    }
}
