//! How long to wait before trying a connection again: the upstream's provider and the
//! backbone's Redis both back off the same way.

use std::fmt;
use std::time::Duration;

/// Exponential back-off with jitter: the start (1 s by default) doubling to the maximum, each
/// delay drawn between half and all of the current step so many proxies restarting together
/// spread out.
pub struct Backoff {
    start: Duration,
    max: Duration,
    step: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(start: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            start,
            max,
            step: start,
            seed: seed | 1,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        self.jitter(step)
    }

    /// Jumps to the maximum: hammering a provider that refuses us makes it worse.
    pub fn saturate(&mut self) -> Duration {
        self.step = self.max;
        self.max
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    pub fn reset(&mut self) {
        self.step = self.start;
    }

    /// New bounds after a reload; the current step moves within them.
    pub fn set_bounds(&mut self, start: Duration, max: Duration) {
        self.start = start;
        self.max = max;
        self.step = self.step.clamp(start, max);
    }

    fn jitter(&mut self, step: Duration) -> Duration {
        // splitmix64: plenty for spreading reconnects, and no dependency.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let fraction = 0.5 + (z >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        step.mul_f64(fraction)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backoff({:?} of {:?})", self.step, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 42);
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(b.next_delay());
        }
        let expected = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60];
        for (got, step) in steps.iter().zip(expected) {
            let step = Duration::from_secs(step);
            assert!(
                *got >= step / 2 && *got <= step,
                "{got:?} for step {step:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        assert_eq!(b.saturate(), Duration::from_secs(60));
        assert!(b.next_delay() >= Duration::from_secs(30));
    }
}
