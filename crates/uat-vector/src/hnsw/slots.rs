//! Append-only node storage: buckets of doubling size, each a boxed slice of
//! `OnceLock<Node>`. A bucket is allocated once and never moves, so a `&Node`
//! stays valid for the life of the graph and readers take no lock.

use super::Node;
use std::sync::OnceLock;

const FIRST_BITS: u32 = 10;
pub(super) const BUCKETS: usize = 23;

/// One bucket: a fixed run of slots, each filled once.
type Bucket = Box<[OnceLock<Node>]>;

#[derive(Debug)]
pub(super) struct Slots {
    buckets: Box<[OnceLock<Bucket>]>,
}

#[inline]
pub(super) fn locate(i: u32) -> (usize, usize) {
    let x = u64::from(i) + (1u64 << FIRST_BITS);
    let b = (63 - x.leading_zeros() - FIRST_BITS) as usize;
    let off = (x - (1u64 << (b as u32 + FIRST_BITS))) as usize;
    (b, off)
}

impl Slots {
    pub(super) fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| OnceLock::new()).collect(),
        }
    }

    #[inline]
    pub(super) fn get(&self, i: u32) -> Option<&Node> {
        let (b, off) = locate(i);
        self.buckets.get(b)?.get()?.get(off)?.get()
    }

    /// Stores a node in slot `i` (handed out once by the graph's counter).
    pub(super) fn set(&self, i: u32, node: Node) {
        let (b, off) = locate(i);
        let Some(bucket) = self.buckets.get(b) else {
            return;
        };
        let bucket = bucket.get_or_init(|| {
            (0..(1usize << (b as u32 + FIRST_BITS)))
                .map(|_| OnceLock::new())
                .collect()
        });
        if let Some(slot) = bucket.get(off) {
            let _ = slot.set(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn buckets_tile_the_id_space() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1023), (0, 1023));
        assert_eq!(locate(1024), (1, 0));
        assert_eq!(locate(3071), (1, 2047));
        assert_eq!(locate(3072), (2, 0));
        assert_eq!(locate(u32::MAX).0, 22);
    }
}
