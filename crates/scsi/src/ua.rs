//! Unit attention conditions, queued per I_T nexus.

use crate::lu::NexusId;
use crate::sense::{codes, Sense};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const MAX_PENDING: usize = 16;

#[derive(Default)]
struct Slot {
    any: AtomicBool,
    pending: Mutex<VecDeque<Sense>>,
}

impl Slot {
    fn push(&self, s: Sense) {
        let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if s.asc == 0x29 {
            // A reset supersedes whatever was pending.
            q.clear();
        }
        if !q.contains(&s) {
            if q.len() >= MAX_PENDING {
                q.pop_front();
            }
            q.push_back(s);
        }
        self.any.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<Sense> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let s = q.pop_front();
        if q.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        s
    }
}

/// Every nexus the LU has seen, with its pending unit attentions.
#[derive(Default)]
pub(crate) struct UaTable {
    nexuses: RwLock<HashMap<NexusId, Arc<Slot>>>,
}

impl UaTable {
    fn slot(&self, nexus: &NexusId) -> Arc<Slot> {
        if let Some(s) = self.read().get(nexus) {
            return s.clone();
        }
        let mut w = self.nexuses.write().unwrap_or_else(|e| e.into_inner());
        w.entry(nexus.clone())
            .or_insert_with(|| {
                let s = Slot::default();
                s.push(codes::UA_POWER_ON);
                Arc::new(s)
            })
            .clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NexusId, Arc<Slot>>> {
        self.nexuses.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the nexus (a new one gets POWER ON OCCURRED).
    pub fn touch(&self, nexus: &NexusId) {
        let _ = self.slot(nexus);
    }

    /// Registers the nexus and, when `take`, takes its oldest pending unit attention.
    pub fn touch_take(&self, nexus: &NexusId, take: bool) -> Option<Sense> {
        let slot = self.slot(nexus);
        if take {
            slot.take()
        } else {
            None
        }
    }

    /// Takes the oldest pending unit attention of the nexus.
    pub fn take(&self, nexus: &NexusId) -> Option<Sense> {
        self.slot(nexus).take()
    }

    /// Queues a unit attention for one known nexus.
    pub fn push(&self, nexus: &NexusId, s: Sense) {
        if let Some(slot) = self.read().get(nexus) {
            slot.push(s);
        }
    }

    /// Queues a unit attention for every known nexus.
    pub fn push_all(&self, s: Sense) {
        for slot in self.read().values() {
            slot.push(s);
        }
    }

    /// Queues a unit attention for every known nexus except `except`.
    pub fn push_others(&self, except: &NexusId, s: Sense) {
        for (n, slot) in self.read().iter() {
            if n != except {
                slot.push(s);
            }
        }
    }

    /// Queues a unit attention for every known nexus matching `f`.
    pub fn push_matching(&self, s: Sense, f: impl Fn(&NexusId) -> bool) {
        for (n, slot) in self.read().iter() {
            if f(n) {
                slot.push(s);
            }
        }
    }

    /// Forgets the nexus; if it comes back it is new again.
    pub fn forget(&self, nexus: &NexusId) {
        self.nexuses
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(nexus);
    }

    /// The relative target ports of every known nexus.
    pub fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.read().keys().map(|n| n.relative_target_port).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u64) -> NexusId {
        NexusId {
            initiator_name: "iqn.x".into(),
            isid: i,
            relative_target_port: 1,
        }
    }

    #[test]
    fn new_nexus_gets_power_on_once() {
        let t = UaTable::default();
        assert_eq!(t.take(&n(1)), Some(codes::UA_POWER_ON));
        assert_eq!(t.take(&n(1)), None);
        t.push_others(&n(1), codes::UA_MODE_PARAMETERS_CHANGED);
        assert_eq!(t.take(&n(1)), None);
        t.touch(&n(2));
        t.take(&n(2));
        t.push_all(codes::UA_CAPACITY_CHANGED);
        t.push_all(codes::UA_CAPACITY_CHANGED);
        assert_eq!(t.take(&n(2)), Some(codes::UA_CAPACITY_CHANGED));
        assert_eq!(t.take(&n(2)), None);
        t.push_all(codes::UA_MODE_PARAMETERS_CHANGED);
        t.push_all(codes::UA_LUN_RESET);
        assert_eq!(t.take(&n(1)), Some(codes::UA_LUN_RESET));
        assert_eq!(t.take(&n(1)), None);
        t.forget(&n(1));
        assert_eq!(t.take(&n(1)), Some(codes::UA_POWER_ON));
    }
}
