//! The live status line on a terminal's stderr: position, buffer, loss and jitter, redrawn every
//! [`STATUS_INTERVAL`] from a [`Session`]'s state. The tokio shell owns the timer; this module
//! only renders and tracks whether a line is on screen (so it can be cleared before the table).

use std::time::Duration;

use crate::jitter::duration_of;
use crate::session::Session;

/// How often the live status line is redrawn: smooth to a human, negligible CPU.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(250);

/// `m:ss` of a stream position.
pub fn fmt_position(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// The status text for `session` (no terminal control codes), or `None` before the `Welcome`.
pub fn render(session: &Session) -> Option<String> {
    let info = session.info()?;
    let jb = session.jitter_buffer()?;
    let rate = info.sample_rate;
    let pos = fmt_position(duration_of(jb.position(), rate));
    let total = info
        .total_frames
        .map_or("live".to_owned(), |t| fmt_position(duration_of(t, rate)));
    let t = session.tracker();
    let loss = if t.expected() > 0 {
        t.lost() as f64 * 100.0 / t.expected() as f64
    } else {
        0.0
    };
    Some(format!(
        "{pos} / {total}  buffer {} ms  loss {loss:.1}%  jitter {:.1} ms",
        jb.buffered().as_millis(),
        t.jitter_ms()
    ))
}

/// The line on stderr: drawn in place, cleared at the end.
#[derive(Debug)]
pub struct StatusLine {
    /// Drawing at all (not `--quiet`, and stderr is a terminal).
    on: bool,
    /// A line is on screen.
    shown: bool,
}

impl StatusLine {
    /// A status line that draws only when `on`.
    pub fn new(on: bool) -> Self {
        Self { on, shown: false }
    }

    /// Whether it draws at all (the shell runs its timer only then).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Redraws the line from `session`'s state.
    pub fn draw(&mut self, session: &Session) {
        if !self.on {
            return;
        }
        if let Some(text) = render(session) {
            eprint!("\r\x1b[K{text}");
            self.shown = true;
        }
    }

    /// Removes the line, if one is on screen.
    pub fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}
