//! A log line that a flood could repeat thousands of times a second (a source's garbage, a
//! Redis outage), written at most once per period with a count of what it swallowed.

use std::time::{Duration, Instant};

/// Logs at most once per period, counting what it swallowed in between.
pub struct RateLimited {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(period: Duration) -> RateLimited {
        RateLimited {
            period,
            last: None,
            suppressed: 0,
        }
    }

    pub fn note(&mut self, log: impl FnOnce(u64)) {
        self.suppressed += 1;
        if self.last.map_or(true, |t| t.elapsed() >= self.period) {
            log(self.suppressed);
            self.suppressed = 0;
            self.last = Some(Instant::now());
        }
    }
}
