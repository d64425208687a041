//! A progress line on stderr for commands that take seconds (`demo backlog`, `status
//! --bootstrap`): one line redrawn in place, only when stderr is a terminal, and erased
//! when the command ends, so piped output and `--json` stay clean.

use std::io::{IsTerminal, Write};

pub(crate) struct Progress {
    on: bool,
    drawn: bool,
}

impl Progress {
    /// A progress line, drawn only if stderr is a terminal.
    pub(crate) fn new() -> Progress {
        Progress::with(std::io::stderr().is_terminal())
    }

    fn with(on: bool) -> Progress {
        Progress { on, drawn: false }
    }

    /// Replaces the line with `msg` (cut to the terminal's width, so it never wraps).
    pub(crate) fn show(&mut self, msg: &str) {
        if !self.on {
            return;
        }
        let width = super::watch::terminal_size(libc::STDERR_FILENO).map_or(80, |s| s.1);
        let line: String = msg.chars().take(width.saturating_sub(1)).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the line (also done on drop).
    pub(crate) fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_off_a_terminal_draws_nothing() {
        let mut p = Progress::with(false);
        p.show("adding stories 1/24");
        assert!(!p.drawn);
    }
}
