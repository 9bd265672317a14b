//! Prometheus' text exposition format (version 0.0.4), as `/metrics` and the backbone's
//! section of it write their families: each with its `# HELP` and `# TYPE` lines.

use std::fmt::{Display, Write as _};

/// A `/metrics` text being written.
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(bytes),
        }
    }

    /// One family: its `# HELP` and `# TYPE` lines, then a line per sample. A sample's
    /// suffix is what follows the name: its labels (`{symbol="EURUSD"}`, see [`label`]), a
    /// histogram's `_bucket{le="1"}`, or nothing.
    pub fn family<V: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (suffix, value) in samples {
            let _ = writeln!(self.out, "{name}{suffix} {value}");
        }
    }

    /// A family of one sample without labels.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help, [(String::new(), value)]);
    }

    /// A histogram: its buckets (each upper bound as written in `le`, with the count of
    /// observations at or below it), then `+Inf`, `_sum` and `_count`.
    pub fn histogram<B: Display>(
        &mut self,
        name: &str,
        help: &str,
        buckets: impl IntoIterator<Item = (B, u64)>,
        sum: impl Display,
        count: u64,
    ) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} histogram");
        for (le, n) in buckets {
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.out, "{name}_sum {sum}");
        let _ = writeln!(self.out, "{name}_count {count}");
    }

    pub fn into_text(self) -> String {
        self.out
    }
}

/// `{name="value"}`, for a sample with one label. Values here are the proxy's own words and
/// symbols, which need no escaping.
pub fn label(name: &str, value: impl Display) -> String {
    format!("{{{name}=\"{value}\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_samples() {
        let mut e = Exposition::with_capacity(64);
        e.single("x_total", "counter", "Things.", 3);
        e.family(
            "y",
            "gauge",
            "Per symbol.",
            [(label("symbol", "EURUSD"), 1.5)],
        );
        assert_eq!(
            e.into_text(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y Per symbol.\n# TYPE y gauge\ny{symbol=\"EURUSD\"} 1.5\n"
        );
    }

    #[test]
    fn a_histogram_ends_with_inf_sum_and_count() {
        let mut e = Exposition::with_capacity(64);
        e.histogram("h_seconds", "Waits.", [("0.1", 2), ("1", 3)], 1.25, 4);
        assert_eq!(
            e.into_text(),
            "# HELP h_seconds Waits.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.1\"} 2\nh_seconds_bucket{le=\"1\"} 3\n\
             h_seconds_bucket{le=\"+Inf\"} 4\nh_seconds_sum 1.25\nh_seconds_count 4\n"
        );
    }
}
