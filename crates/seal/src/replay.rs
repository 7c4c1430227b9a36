//! The replay window: which sequence numbers a key has already opened.

/// How many sequence numbers behind the highest one still count as "maybe not seen yet".
///
/// 1,024 datagrams is about 7 s of a 48 kHz stereo PCM stream and far more of FLAC or Opus,
/// more than any reordering or retransmission reaches; anything older is dropped as too old.
pub const REPLAY_WINDOW: u64 = 1024;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why a sequence number is refused before or after opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Already opened once under this key.
    Duplicate,
    /// Older than the window: it cannot be told apart from a replay.
    TooOld,
}

/// A sliding bitmap of the last [`REPLAY_WINDOW`] sequence numbers (RFC 4303 §3.4.3 style).
///
/// Check before opening, commit only after the tag verified, so forged datagrams never move
/// the window.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// Highest sequence number committed, plus one (0 = nothing yet).
    top: u64,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `seq` would be accepted now.
    pub fn check(&self, seq: u64) -> Result<(), Replay> {
        if self.top == 0 || seq >= self.top {
            return Ok(());
        }
        let highest = self.top - 1;
        if highest - seq >= REPLAY_WINDOW {
            return Err(Replay::TooOld);
        }
        if self.bit(seq) {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `seq` as opened; call only after [`check`](Self::check) passed and the tag verified.
    pub fn commit(&mut self, seq: u64) {
        if self.top == 0 || seq >= self.top {
            let advance = if self.top == 0 {
                REPLAY_WINDOW
            } else {
                seq + 1 - self.top
            };
            if advance >= REPLAY_WINDOW {
                self.bits = [0; WORDS];
            } else {
                for s in self.top..=seq {
                    self.clear(s);
                }
            }
            self.top = seq + 1;
        }
        let idx = (seq % REPLAY_WINDOW) as usize;
        self.bits[idx / 64] |= 1 << (idx % 64);
    }

    fn bit(&self, seq: u64) -> bool {
        let idx = (seq % REPLAY_WINDOW) as usize;
        self.bits[idx / 64] & (1 << (idx % 64)) != 0
    }

    fn clear(&mut self, seq: u64) {
        let idx = (seq % REPLAY_WINDOW) as usize;
        self.bits[idx / 64] &= !(1 << (idx % 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, seq: u64) -> Result<(), Replay> {
        w.check(seq)?;
        w.commit(seq);
        Ok(())
    }

    #[test]
    fn in_order_reordered_duplicate_and_too_old() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 5), Ok(()));
        assert_eq!(accept(&mut w, 5), Err(Replay::Duplicate));
        assert_eq!(accept(&mut w, 3), Ok(()), "reordered, first time");
        assert_eq!(accept(&mut w, 3), Err(Replay::Duplicate));
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(accept(&mut w, 2000), Ok(()));
        assert_eq!(accept(&mut w, 2000 - REPLAY_WINDOW), Err(Replay::TooOld));
        assert_eq!(
            accept(&mut w, 2001 - REPLAY_WINDOW),
            Ok(()),
            "oldest still in the window"
        );
        assert_eq!(accept(&mut w, 5), Err(Replay::TooOld));
        assert_eq!(accept(&mut w, 1999), Ok(()));
        assert_eq!(accept(&mut w, 1999), Err(Replay::Duplicate));
    }

    #[test]
    fn sliding_clears_old_bits() {
        let mut w = ReplayWindow::new();
        for s in 0..5000 {
            assert_eq!(accept(&mut w, s), Ok(()), "{s}");
        }
        // Every seq in the window is a duplicate, every older one too old.
        for s in 5000 - REPLAY_WINDOW..5000 {
            assert_eq!(w.check(s), Err(Replay::Duplicate), "{s}");
        }
        assert_eq!(w.check(5000 - REPLAY_WINDOW - 1), Err(Replay::TooOld));
        // Skipping ahead by less than the window keeps what is still inside.
        assert_eq!(accept(&mut w, 5500), Ok(()));
        assert_eq!(w.check(5499), Ok(()), "never seen");
        assert_eq!(w.check(4999), Err(Replay::Duplicate));
        assert_eq!(w.check(4000), Err(Replay::TooOld));
    }

    #[test]
    fn check_alone_does_not_move_the_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(10_000), Ok(()));
        assert_eq!(
            accept(&mut w, 1),
            Ok(()),
            "a checked but uncommitted seq left no trace"
        );
        assert_eq!(w.check(10_000), Ok(()));
    }
}
