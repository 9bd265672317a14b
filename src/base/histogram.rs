//! Latency histograms that fill as quotes flow, in Prometheus' cumulative buckets (seconds).
//!
//! What the hot path may pay decides the shape. A client's writer records into its own
//! [`Local`] (plain numbers on its stack: no atomic, no lock, no shared cache line) and adds it
//! to a [`Histogram`] about once a second ([`FOLD_EVERY`]); the histogram keeps [`SHARDS`]
//! copies of its counts on cache lines of their own, a writer adding to the shard of its id,
//! so fifteen thousand writers each folding once a second meet rarely. A scrape sums the
//! shards: a few hundred loads, whatever the number of clients. A thread that records on its
//! own (the upstream reader, once per quote) adds straight to a shard with [`Histogram::observe`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: 100 µs to 10 s, about 1-2.5-5 per decade. The
/// last bucket (`+Inf`) takes the rest.
pub const BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The bounds as `/metrics` writes them (`le="0.0001"` …).
pub const BOUNDS_LABELS: [&str; 16] = [
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "10",
];

const BUCKETS: usize = BOUNDS_NANOS.len() + 1;

/// Copies of the counts a histogram keeps: writers folding at the same moment land on
/// different cache lines unless their ids agree modulo this.
pub const SHARDS: usize = 16;

/// How often a writer adds what it recorded to the shared histogram. A scrape sees a writer's
/// observations this much later at most, or at its next keep-alive tick if it fell silent.
pub const FOLD_EVERY: Duration = Duration::from_secs(1);

fn bucket(nanos: u64) -> usize {
    BOUNDS_NANOS.partition_point(|bound| *bound < nanos)
}

/// One shard's counts, alone on its cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Per bucket, not cumulative: the bucket an observation falls in.
    counts: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

/// A histogram several threads add to; see the module's comment.
pub struct Histogram {
    shards: Box<[Shard]>,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl Histogram {
    /// One observation from a thread that records rarely or on its own: atomic adds on one
    /// shard, not for a path that runs per client per quote (use a [`Local`] there).
    pub fn observe(&self, value: Duration) {
        let shard = &self.shards[0];
        let nanos = nanos_of(value);
        shard.counts[bucket(nanos)].fetch_add(1, Relaxed);
        shard.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Adds what `local` recorded to the shard of `writer` (any number that tells writers
    /// apart: an id) and empties it.
    pub fn fold(&self, writer: u64, local: &mut Local) {
        if local.count == 0 {
            return;
        }
        let shard = &self.shards[(writer % SHARDS as u64) as usize];
        for (total, n) in shard.counts.iter().zip(&local.counts) {
            if *n > 0 {
                total.fetch_add(u64::from(*n), Relaxed);
            }
        }
        shard.sum_nanos.fetch_add(local.sum_nanos, Relaxed);
        *local = Local::default();
    }

    /// The counts summed over the shards, as `/metrics` writes them.
    pub fn snapshot(&self) -> Snapshot {
        let mut counts = [0u64; BUCKETS];
        let mut sum_nanos = 0u64;
        for shard in self.shards.iter() {
            for (total, n) in counts.iter_mut().zip(&shard.counts) {
                *total += n.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Relaxed));
        }
        let mut cumulative = [0u64; BUCKETS];
        let mut running = 0;
        for (c, n) in cumulative.iter_mut().zip(counts) {
            running += n;
            *c = running;
        }
        Snapshot {
            cumulative,
            sum_seconds: sum_nanos as f64 / 1e9,
        }
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One thread's observations not yet added to a [`Histogram`]: plain numbers, kept by the
/// thread that records them.
#[derive(Default, Clone, Copy)]
pub struct Local {
    /// Per bucket. A writer folds once a second, far below what a u32 can count.
    counts: [u32; BUCKETS],
    count: u32,
    sum_nanos: u64,
}

impl Local {
    pub fn observe(&mut self, value: Duration) {
        let nanos = nanos_of(value);
        let b = &mut self.counts[bucket(nanos)];
        *b = b.saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A histogram summed up: cumulative counts per bound (the last is `+Inf`, the total count)
/// and the sum of every observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub cumulative: [u64; BUCKETS],
    pub sum_seconds: f64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.cumulative[BUCKETS - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_observation_counts_in_its_bucket_and_every_one_above() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(ms(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.cumulative[0], 1, "100 µs is within le=0.0001");
        assert_eq!(s.cumulative[4], 1, "3 ms is above le=0.0025");
        assert_eq!(s.cumulative[5], 2, "and within le=0.005");
        assert_eq!(s.cumulative[15], 2, "a minute is above le=10");
        assert_eq!(s.count(), 3);
        assert!((s.sum_seconds - 60.0031).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn writers_fold_into_shards_and_a_scrape_sums_them() {
        let h = Histogram::default();
        let mut a = Local::default();
        let mut b = Local::default();
        assert!(a.is_empty());
        for _ in 0..5 {
            a.observe(ms(2));
        }
        b.observe(ms(20));
        h.fold(1, &mut a);
        h.fold(2, &mut b);
        assert!(a.is_empty(), "folding empties the writer's own counts");
        h.fold(1, &mut a);
        let s = h.snapshot();
        assert_eq!(s.count(), 6);
        assert_eq!(s.cumulative[4], 5, "le=0.0025");
        assert_eq!(s.cumulative[7], 6, "le=0.025");
        assert!((s.sum_seconds - 0.030).abs() < 1e-9);
    }

    #[test]
    fn labels_name_the_bounds() {
        for (nanos, label) in BOUNDS_NANOS.iter().zip(BOUNDS_LABELS) {
            let secs: f64 = label.parse().unwrap();
            assert_eq!((secs * 1e9).round() as u64, *nanos, "{label}");
        }
        assert_eq!(bucket(BOUNDS_NANOS[3]), 3, "a bound is inclusive (le)");
        assert_eq!(bucket(BOUNDS_NANOS[3] + 1), 4);
    }
}
