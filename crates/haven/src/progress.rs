//! Progress of long work: a bar redrawn in place on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};

pub struct Progress {
    what: String,
    tty: bool,
    last_decile: Option<u64>,
}

impl Progress {
    pub fn new(what: &str) -> Self {
        Progress {
            what: what.to_string(),
            tty: std::io::stderr().is_terminal(),
            last_decile: None,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        let pct = done.saturating_mul(100).checked_div(total).unwrap_or(0);
        if self.tty {
            let width = 30usize;
            let filled = (pct as usize * width / 100).min(width);
            eprint!(
                "\r{} [{}{}] {pct:3}% ({done}/{total})",
                self.what,
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        } else if self.last_decile != Some(pct / 10) {
            self.last_decile = Some(pct / 10);
            eprintln!("{}: {pct}% ({done}/{total})", self.what);
        }
    }

    /// Shows a free-form status line (redrawn in place on a terminal, printed when it
    /// changes otherwise).
    pub fn status(&mut self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[K{}: {text}", self.what);
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{}: {text}", self.what);
        }
    }

    pub fn finish(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}
