//! How many messages a client may send: `max_client_messages_per_sec` a second, in bursts of
//! up to as many. Clients of a feed send almost nothing (an auth message, a ping now and
//! then), so a client that sends a stream of messages is broken or hostile, and reading them
//! costs everyone CPU. One budget follows a connection from its first frame to its last.

use std::time::Instant;

pub struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// `rate` 0 means no limit.
    pub fn new(rate: u32) -> Budget {
        let rate = per_sec(rate);
        Budget {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// A new `max_client_messages_per_sec` after a reload: what is left of the burst is kept,
    /// within the new limit.
    pub fn set_rate(&mut self, rate: u32) {
        let rate = per_sec(rate);
        if rate != self.rate {
            self.tokens = if self.rate.is_infinite() {
                rate
            } else {
                self.tokens.min(rate)
            };
            self.rate = rate;
        }
    }

    /// Spends one message; false when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate.is_infinite() {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn per_sec(rate: u32) -> f64 {
    if rate == 0 {
        f64::INFINITY
    } else {
        f64::from(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_allows_bursts_up_to_the_rate_then_refills() {
        let start = Instant::now();
        let mut b = Budget::new(10);
        b.last = start;
        assert!((0..10).all(|_| b.take(start)));
        assert!(!b.take(start));
        assert!(b.take(start + Duration::from_millis(100)), "one refilled");
        assert!(!b.take(start + Duration::from_millis(100)));
        let mut unlimited = Budget::new(0);
        assert!((0..100_000).all(|_| unlimited.take(start)));
        unlimited.last = start;
        unlimited.set_rate(3);
        assert!((0..3).all(|_| unlimited.take(start)));
        assert!(!unlimited.take(start), "the new limit holds at once");
        unlimited.set_rate(0);
        assert!((0..1000).all(|_| unlimited.take(start)));
    }
}
