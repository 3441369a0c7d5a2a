//! [`Gather`]: a body that arrives in pieces, made whole.

use bytes::{Bytes, BytesMut};

/// Gathers the pieces of a body (an HTTP body read chunk by chunk). A
/// body of one piece, the usual small request or answer, is kept as it
/// came, not copied.
#[derive(Debug, Default)]
pub struct Gather {
    first: Option<Bytes>,
    rest: BytesMut,
}

impl Gather {
    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.len()
    }

    /// True before any byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the next piece.
    pub fn push(&mut self, piece: Bytes) {
        match self.first.take() {
            None if self.rest.is_empty() => self.first = Some(piece),
            held => {
                if let Some(h) = held {
                    self.rest.extend_from_slice(&h);
                }
                self.rest.extend_from_slice(&piece);
            }
        }
    }

    /// The whole body.
    pub fn finish(self) -> Bytes {
        self.first.unwrap_or_else(|| self.rest.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_piece_is_not_copied_and_several_are_joined() {
        let one = Bytes::from_static(b"whole");
        let mut g = Gather::default();
        assert!(g.is_empty());
        g.push(one.clone());
        assert_eq!(g.len(), 5);
        let out = g.finish();
        assert_eq!(out.as_ptr(), one.as_ptr(), "the piece itself");
        let mut g = Gather::default();
        for p in ["ab", "", "cd", "e"] {
            g.push(Bytes::copy_from_slice(p.as_bytes()));
        }
        assert_eq!(g.len(), 5);
        assert_eq!(g.finish(), Bytes::from_static(b"abcde"));
        assert_eq!(Gather::default().finish(), Bytes::new());
    }
}
