//! The room's synchronisation as the server sees it: what the synchronising listeners' latest
//! Reports say about their clocks and their playout, folded into one summary line.
//!
//! Each synchronising listener reports the p99 of its own |playout error| (how far from the
//! server's timeline its output ran since its previous Report). Two listeners each within e₁ and
//! e₂ of the timeline are within e₁ + e₂ of each other, so the two largest errors summed bound
//! the spread of the whole room; that bound is what the log calls the room's spread.

use std::fmt;

use proto::{FEATURE_SYNC, Report};

/// The room's synchronisation, from the latest Report of every synchronising listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomSync {
    /// Listeners that joined with `FEATURE_SYNC` and have sent a Report.
    pub listeners: usize,
    /// The largest p99 |playout error| among them, µs.
    pub worst_error_us: u32,
    /// Upper bound on the playout spread between any two of them: the two largest errors
    /// summed (the largest alone when there is one listener), µs.
    pub spread_us: u32,
    /// Smallest and largest clock offset (listener − server), µs.
    pub offset_us: (i64, i64),
    /// Smallest and largest clock rate relative to the server, parts per billion.
    pub drift_ppb: (i32, i32),
    /// Hard resynchronisations, summed over them.
    pub resyncs: u64,
}

impl RoomSync {
    /// Folds `(features, latest report)` of every listener; `None` when no synchronising
    /// listener has reported yet.
    pub fn of<I>(listeners: I) -> Option<RoomSync>
    where
        I: IntoIterator<Item = (u32, Option<Report>)>,
    {
        let mut room = RoomSync {
            offset_us: (i64::MAX, i64::MIN),
            drift_ppb: (i32::MAX, i32::MIN),
            ..RoomSync::default()
        };
        let (mut first, mut second) = (0u32, 0u32);
        for (features, report) in listeners {
            let Some(r) = report.filter(|_| features & FEATURE_SYNC != 0) else {
                continue;
            };
            room.listeners += 1;
            let e = r.playout_error_us.unsigned_abs();
            if e >= first {
                second = first;
                first = e;
            } else if e > second {
                second = e;
            }
            room.offset_us = (
                room.offset_us.0.min(r.clock_offset_us),
                room.offset_us.1.max(r.clock_offset_us),
            );
            room.drift_ppb = (
                room.drift_ppb.0.min(r.drift_ppb),
                room.drift_ppb.1.max(r.drift_ppb),
            );
            room.resyncs += u64::from(r.resyncs);
        }
        if room.listeners == 0 {
            return None;
        }
        room.worst_error_us = first;
        room.spread_us = first.saturating_add(second);
        Some(room)
    }
}

impl fmt::Display for RoomSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} synchronised listener(s), spread ≤ {:.3} ms (worst playout error p99 {:.3} ms), \
             clock offsets {:.3}..{:.3} ms, drift {:+.1}..{:+.1} ppm, {} resync(s)",
            self.listeners,
            f64::from(self.spread_us) / 1e3,
            f64::from(self.worst_error_us) / 1e3,
            self.offset_us.0 as f64 / 1e3,
            self.offset_us.1 as f64 / 1e3,
            f64::from(self.drift_ppb.0) / 1e3,
            f64::from(self.drift_ppb.1) / 1e3,
            self.resyncs,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report(error_us: i32, offset_us: i64, drift_ppb: i32, resyncs: u32) -> Option<Report> {
        Some(Report {
            playout_error_us: error_us,
            clock_offset_us: offset_us,
            drift_ppb,
            resyncs,
            ..Report::default()
        })
    }

    #[test]
    fn the_two_largest_errors_bound_the_spread() {
        let room = RoomSync::of([
            (FEATURE_SYNC, report(40, 400_000, -120_000, 0)),
            (FEATURE_SYNC, report(-90, -300_000, 150_000, 1)),
            (FEATURE_SYNC, report(70, 0, 80_000, 0)),
        ])
        .unwrap();
        assert_eq!(room.listeners, 3);
        assert_eq!(room.worst_error_us, 90);
        assert_eq!(room.spread_us, 160);
        assert_eq!(room.offset_us, (-300_000, 400_000));
        assert_eq!(room.drift_ppb, (-120_000, 150_000));
        assert_eq!(room.resyncs, 1);
        let line = room.to_string();
        assert!(line.contains("spread ≤ 0.160 ms"), "{line}");
        assert!(line.contains("drift -120.0..+150.0 ppm"), "{line}");
    }

    #[test]
    fn listeners_that_do_not_synchronise_or_have_not_reported_are_left_out() {
        assert_eq!(RoomSync::of([(0, report(5_000, 0, 0, 0))]), None);
        assert_eq!(RoomSync::of([(FEATURE_SYNC, None)]), None);
        let one = RoomSync::of([
            (FEATURE_SYNC, report(120, 0, 0, 0)),
            (0, report(9_000, 0, 0, 0)),
        ])
        .unwrap();
        assert_eq!((one.listeners, one.spread_us), (1, 120));
    }
}
