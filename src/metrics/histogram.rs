//! Histograms that one thread records into and the scrape reads.
//!
//! The exporter's histograms keep every sample in a lock-free bucket until the
//! next upkeep folds it into counts: two per answered append, which profiles put
//! at 5 % of a busy leader's CPU (docs/performance.md, sixth look). These keep the
//! bucket counts themselves. A [`LocalHistogram`] belongs to the thread that
//! registered it (it is not `Send`), so each recording is a load and a store per
//! cell, without a locked instruction; the scrape sums every thread's cells of a
//! series. Memory is fixed at registration, however long nobody scrapes.

use std::fmt::Write;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counts of one series as one thread recorded them.
pub struct Cells {
    /// Upper bounds of the buckets, ascending; a last bucket (+Inf) follows.
    bounds: &'static [f64],
    /// Samples per bucket, not cumulative. Invariant: `bounds.len() + 1` cells.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Cells {
    fn new(bounds: &'static [f64]) -> Cells {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds must ascend: {bounds:?}"
        );
        Cells {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// The recording side of one series on one thread.
#[derive(Clone)]
pub struct LocalHistogram {
    cells: Arc<Cells>,
    /// Not `Send`: only the registering thread writes these cells, which is what
    /// makes a plain load and store a correct increment.
    _one_writer: PhantomData<Rc<()>>,
}

impl LocalHistogram {
    pub fn record(&self, value: f64) {
        let cells = &*self.cells;
        let bucket = cells.bounds.partition_point(|bound| *bound < value);
        let count = &cells.counts[bucket];
        count.store(count.load(Relaxed) + 1, Relaxed);
        let sum = f64::from_bits(cells.sum_bits.load(Relaxed)) + value;
        cells.sum_bits.store(sum.to_bits(), Relaxed);
    }
}

/// Every registered series, for the scrape.
#[derive(Default)]
pub struct HistogramRegistry {
    series: std::sync::Mutex<Vec<Series>>,
}

struct Series {
    name: &'static str,
    /// The series' labels as rendered between braces, without `le`.
    labels: String,
    cells: Arc<Cells>,
}

impl HistogramRegistry {
    /// A new recording handle of series `name{labels}`: several threads may each
    /// register the same series, and the scrape shows their sum.
    pub fn register(
        &self,
        name: &'static str,
        labels: String,
        bounds: &'static [f64],
    ) -> LocalHistogram {
        let cells = Arc::new(Cells::new(bounds));
        let series = Series {
            name,
            labels,
            cells: cells.clone(),
        };
        self.series.lock().expect("not poisoned").push(series);
        LocalHistogram {
            cells,
            _one_writer: PhantomData,
        }
    }

    /// Appends family `name` in the text format (`_bucket` with cumulative counts,
    /// `_sum`, `_count`), one series per label set in the order first registered;
    /// nothing when none is registered.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let series = self.series.lock().expect("not poisoned");
        let mut merged: Vec<(&str, Vec<u64>, f64, &'static [f64])> = Vec::new();
        for s in series.iter().filter(|s| s.name == name) {
            let at = match merged.iter().position(|m| m.0 == s.labels) {
                Some(at) => at,
                None => {
                    let zeros = vec![0; s.cells.counts.len()];
                    merged.push((&s.labels, zeros, 0.0, s.cells.bounds));
                    merged.len() - 1
                }
            };
            let (_, counts, sum, bounds) = &mut merged[at];
            assert_eq!(*bounds, s.cells.bounds, "{name} has one set of buckets");
            for (total, count) in counts.iter_mut().zip(s.cells.counts.iter()) {
                *total += count.load(Relaxed);
            }
            *sum += f64::from_bits(s.cells.sum_bits.load(Relaxed));
        }
        if merged.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (labels, counts, sum, bounds) in merged {
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0;
            for (i, count) in counts.iter().enumerate() {
                cumulative += count;
                let le = bounds.get(i).map_or("+Inf".to_string(), f64::to_string);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                );
            }
            // The count is the buckets' total, so the two always agree even when
            // a scrape reads the cells while they are being written.
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[1.0, 10.0];

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them() {
        let registry = HistogramRegistry::default();
        let h = registry.register("t", "node=\"1\"".into(), BOUNDS);
        for v in [0.5, 1.0, 1.5, 10.0, 11.0] {
            h.record(v);
        }
        let mut text = String::new();
        registry.render("t", "help", &mut text);
        let want = "# HELP t help\n# TYPE t histogram\n\
            t_bucket{node=\"1\",le=\"1\"} 2\n\
            t_bucket{node=\"1\",le=\"10\"} 4\n\
            t_bucket{node=\"1\",le=\"+Inf\"} 5\n\
            t_sum{node=\"1\"} 24\n\
            t_count{node=\"1\"} 5\n";
        assert_eq!(text, want);
    }

    #[test]
    fn threads_recording_one_series_are_summed_and_others_kept_apart() {
        let registry = Arc::new(HistogramRegistry::default());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let registry = registry.clone();
                std::thread::spawn(move || {
                    let h = registry.register("t", "p=\"0\"".into(), BOUNDS);
                    for _ in 0..1000 {
                        h.record(2.0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recording thread");
        }
        registry.register("t", "p=\"1\"".into(), BOUNDS).record(0.1);
        registry
            .register("other", String::new(), BOUNDS)
            .record(5.0);
        let mut text = String::new();
        registry.render("t", "help", &mut text);
        assert!(
            text.contains("t_bucket{p=\"0\",le=\"10\"} 2000\n"),
            "{text}"
        );
        assert!(text.contains("t_count{p=\"0\"} 2000\n"), "{text}");
        assert!(text.contains("t_bucket{p=\"1\",le=\"1\"} 1\n"), "{text}");
        assert!(!text.contains("other"), "{text}");
        let mut text = String::new();
        registry.render("other", "help", &mut text);
        assert!(text.contains("other_bucket{le=\"10\"} 1\n"), "{text}");
        let mut text = String::new();
        registry.render("none", "help", &mut text);
        assert_eq!(text, "");
    }
}
