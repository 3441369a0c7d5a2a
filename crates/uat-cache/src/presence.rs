//! A presence set: the xxh3 hashes of the keys L2 knows are stored, so
//! that a miss (the common case of a cache answering from L1) costs a hash
//! lookup instead of a round trip to Redis. (L3 on SQLite keeps a map from
//! its keys to their rows instead: `row_map.rs`.)
//!
//! "Absent" is certain only while the set is *trusted*: after a full load of
//! the stored keys finished, and (L2) while the pub/sub subscription that
//! announces other replicas' writes is live. A hash in the set may be a key
//! since deleted or expired: then the level asks its store, which answers.
//! Writes record their hashes before they are sent (a hash the store lacks
//! only costs a lookup; the reverse would hide an entry), and keys written
//! while a reload reads the store are kept when it finishes.

use parking_lot::RwLock;

/// Hashes of stored keys (already hashes: [`crate::key::KeyHasher`] passes them through).
pub(crate) type KeySet = std::collections::HashSet<u64, crate::key::BuildKeyHasher>;

#[derive(Default)]
pub(crate) struct Presence {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// `None` while untrusted (before the first load, after a lost subscription).
    set: Option<KeySet>,
    /// Keys written while a reload reads the store, added when it ends.
    during_reload: Option<Vec<u64>>,
}

impl Presence {
    /// True only when the set is trusted and lacks `hash`.
    pub(crate) fn surely_absent(&self, hash: u64) -> bool {
        self.state
            .read()
            .set
            .as_ref()
            .is_some_and(|s| !s.contains(&hash))
    }

    /// Records stored keys.
    pub(crate) fn add(&self, hashes: &[u64]) {
        let mut st = self.state.write();
        let st = &mut *st;
        if let Some(set) = &mut st.set {
            set.extend(hashes);
        }
        if let Some(pending) = &mut st.during_reload {
            pending.extend(hashes);
        }
    }

    /// A reload starts reading the store: writes from now on are kept for it.
    pub(crate) fn begin_reload(&self) {
        self.state.write().during_reload = Some(Vec::new());
    }

    /// The reload read `set`: it becomes the trusted set, plus the writes made meanwhile.
    pub(crate) fn finish_reload(&self, mut set: KeySet) {
        let mut st = self.state.write();
        set.extend(st.during_reload.take().unwrap_or_default());
        st.set = Some(set);
    }

    /// Distrusts the set (a failed reload, a lost subscription): every
    /// lookup asks the store until the next reload finishes.
    pub(crate) fn distrust(&self) {
        let mut st = self.state.write();
        st.during_reload = None;
        st.set = None;
    }

    /// Whether the set is trusted.
    pub(crate) fn trusted(&self) -> bool {
        self.state.read().set.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_until_loaded_and_keeps_writes_made_during_a_reload() {
        let p = Presence::default();
        assert!(!p.surely_absent(1), "untrusted: nothing is surely absent");
        p.add(&[1]);
        p.begin_reload();
        p.add(&[2]);
        let mut loaded = KeySet::default();
        loaded.insert(3);
        p.finish_reload(loaded);
        assert!(!p.surely_absent(2), "written during the reload");
        assert!(!p.surely_absent(3), "read by the reload");
        assert!(
            p.surely_absent(1),
            "written before the reload began and not in the store"
        );
        assert!(p.surely_absent(4));
        p.add(&[4]);
        assert!(!p.surely_absent(4));
        p.distrust();
        assert!(!p.surely_absent(5) && !p.trusted());
    }
}
