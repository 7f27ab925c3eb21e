//! Progress on stderr while the benchmark runs: a live line on a terminal, one
//! plain line per second otherwise.

use std::io::Write;
use std::time::Duration;

use super::report::group;
use super::{Limit, ProgressStyle};

pub(super) fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// The state progress is drawn from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Snapshot {
    /// Since the benchmark started (warmup included).
    pub(super) warmup_elapsed: Duration,
    /// Since the warmup ended; `None` during the warmup.
    pub(super) measuring: Option<Duration>,
    pub(super) records: u64,
    pub(super) errors: u64,
}

/// Turns snapshots into what to write on stderr, in the chosen style.
pub(super) struct Progress {
    style: ProgressStyle,
    limit: Limit,
    warmup: Duration,
    /// Characters of the live line now on screen.
    shown: usize,
    /// Records and measuring time at the last plain line.
    last: (u64, Duration),
}

impl Progress {
    pub(super) fn new(style: ProgressStyle, limit: Limit, warmup: Duration) -> Progress {
        Progress {
            style,
            limit,
            warmup,
            shown: 0,
            last: (0, Duration::ZERO),
        }
    }

    pub(super) fn tick_every(&self) -> Duration {
        match self.style {
            ProgressStyle::Live => Duration::from_millis(200),
            ProgressStyle::Lines | ProgressStyle::Off => Duration::from_secs(1),
        }
    }

    pub(super) fn update(&mut self, s: &Snapshot) -> Option<String> {
        match self.style {
            ProgressStyle::Off => None,
            ProgressStyle::Lines => {
                let elapsed = s.measuring?;
                let (records, at) = self.last;
                let span = elapsed.saturating_sub(at).as_secs_f64();
                // A tick just after the warmup ended would report a rate over nothing.
                if span < 0.1 {
                    return None;
                }
                self.last = (s.records, elapsed);
                let rate = (s.records - records) as f64 / span;
                let target = match self.limit {
                    Limit::Records(n) => format!(", {}/{} records", s.records, n),
                    Limit::Duration(_) => String::new(),
                };
                Some(format!(
                    "[{:>6.1} s] {:>9.0} records/s, {} errors{target}\n",
                    elapsed.as_secs_f64(),
                    rate,
                    s.errors
                ))
            }
            ProgressStyle::Live => {
                let line = live_line(s, self.limit, self.warmup);
                let text = redraw(self.shown, &line);
                self.shown = line.chars().count();
                Some(text)
            }
        }
    }

    /// Clears the live line, if one is shown.
    pub(super) fn finish(&mut self) -> Option<String> {
        if self.shown == 0 {
            return None;
        }
        let text = redraw(self.shown, "");
        self.shown = 0;
        Some(text)
    }
}

/// The live line: the warmup, or the measured records so far, their mean rate,
/// elapsed time and errors.
fn live_line(s: &Snapshot, limit: Limit, warmup: Duration) -> String {
    let Some(elapsed) = s.measuring else {
        return format!(
            "warming up {:.1} of {} s",
            s.warmup_elapsed.as_secs_f64(),
            warmup.as_secs_f64()
        );
    };
    let seconds = elapsed.as_secs_f64();
    // A rate over the first few milliseconds says nothing yet.
    let rate = if seconds >= 0.1 {
        group((s.records as f64 / seconds).round() as u64)
    } else {
        "-".to_string()
    };
    let (records, of) = match limit {
        Limit::Records(n) => (format!("{}/{}", group(s.records), group(n)), String::new()),
        Limit::Duration(d) => (group(s.records), format!(" of {}", d.as_secs_f64())),
    };
    format!(
        "{seconds:.1}{of} s: {records} records, {rate} records/s, {} errors",
        s.errors
    )
}

/// Text that replaces a line of `shown` characters (cursor at its end) with `line`,
/// leaving the cursor at the end of `line`: with an empty `line`, clears it.
fn redraw(shown: usize, line: &str) -> String {
    let len = line.chars().count();
    let pad = shown.saturating_sub(len);
    let mut text = format!("\r{line}{}", " ".repeat(pad));
    if pad > 0 {
        // Back over the blanks so that the cursor ends where the line does.
        text.push('\r');
        text.push_str(line);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF: Duration = Duration::from_millis(500);

    fn snapshot(measuring_ms: Option<u64>, records: u64, errors: u64) -> Snapshot {
        Snapshot {
            warmup_elapsed: Duration::from_millis(400),
            measuring: measuring_ms.map(Duration::from_millis),
            records,
            errors,
        }
    }

    #[test]
    fn the_live_line_is_rewritten_in_place_and_cleared() {
        let ten = Limit::Duration(Duration::from_secs(10));
        let mut p = Progress::new(ProgressStyle::Live, ten, HALF);
        assert_eq!(p.finish(), None, "nothing to clear yet");
        let warming = "warming up 0.4 of 0.5 s";
        assert_eq!(
            p.update(&snapshot(None, 0, 0)).unwrap(),
            format!("\r{warming}")
        );
        let start = p.update(&snapshot(Some(40), 400, 0)).unwrap();
        assert!(start.starts_with("\r0.0 of 10 s: 400 records, - records/s, 0 errors"));
        let long = p.update(&snapshot(Some(2_000), 16_000, 1)).unwrap();
        assert_eq!(
            long,
            "\r2.0 of 10 s: 16,000 records, 8,000 records/s, 1 errors"
        );
        assert!(!long.contains('\n'));
        // A shorter line blanks what is left of the longer one.
        let mut counted = Progress::new(ProgressStyle::Live, Limit::Records(2000), HALF);
        let wide = counted.update(&snapshot(Some(1_500), 1_500, 0)).unwrap();
        assert_eq!(
            wide,
            "\r1.5 s: 1,500/2,000 records, 1,000 records/s, 0 errors"
        );
        let narrow = counted.update(&snapshot(None, 0, 0)).unwrap();
        let blanks = " ".repeat(wide.len() - 1 - warming.len());
        assert_eq!(narrow, format!("\r{warming}{blanks}\r{warming}"));
        let cleared = format!("\r{}\r", " ".repeat(warming.len()));
        assert_eq!(counted.finish().unwrap(), cleared);
        assert_eq!(counted.finish(), None);
    }

    #[test]
    fn plain_lines_give_the_rate_of_the_last_interval_while_measuring() {
        let mut p = Progress::new(ProgressStyle::Lines, Limit::Records(5000), HALF);
        assert_eq!(
            p.update(&snapshot(None, 0, 0)),
            None,
            "silent in the warmup"
        );
        let early = p.update(&snapshot(Some(5), 10, 0));
        assert_eq!(early, None, "too early for a rate");
        let first = p.update(&snapshot(Some(500), 1_000, 0)).unwrap();
        assert_eq!(
            first,
            "[   0.5 s]      2000 records/s, 0 errors, 1000/5000 records\n"
        );
        let second = p.update(&snapshot(Some(1_500), 4_000, 2)).unwrap();
        assert_eq!(
            second,
            "[   1.5 s]      3000 records/s, 2 errors, 4000/5000 records\n"
        );
        assert_eq!(p.finish(), None);
        let mut off = Progress::new(ProgressStyle::Off, Limit::Records(1), HALF);
        assert_eq!(off.update(&snapshot(Some(500), 1, 0)), None);
    }
}
