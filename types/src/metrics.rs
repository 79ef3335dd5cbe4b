//! Prometheus text exposition (format 0.0.4) for weft's own counters.
//!
//! weft's counters are plain atomics owned by the code that counts (the
//! forwarding threads count packets, the registry counts etcd requests);
//! `/metrics` renders a snapshot of them. This module holds the two pieces
//! every crate needs for that: a fixed-bucket [`Histogram`] and [`Writer`],
//! which writes `# HELP`/`# TYPE` once per family and one line per sample.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket bounds (seconds) for the durations weft measures: an etcd round
/// trip or a reconcile, from 100 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0];

/// A histogram of durations with [`DURATION_BUCKETS`]; lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Writes one metric family after another into a `String`.
pub struct Writer<'a> {
    out: &'a mut String,
}

/// Metric types, as `# TYPE` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut String) -> Writer<'a> {
        Writer { out }
    }

    /// `# HELP` and `# TYPE` of a family; write its samples next.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample: `name{labels} value`. Label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", fmt_value(value));
        self
    }

    /// The `_bucket`, `_sum` and `_count` samples of a histogram.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&bound.to_string()));
            let _ = writeln!(self.out, " {}", h.buckets[i].load(Ordering::Relaxed));
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = write!(self.out, "{name}_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", fmt_value(h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9));
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {count}");
        self
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|l| ("le", l))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            let _ = write!(self.out, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_labels_render_in_text_format() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(20));
        let mut s = String::new();
        Writer::new(&mut s)
            .family("weft_x_seconds", Kind::Histogram, "A test.")
            .histogram("weft_x_seconds", &[("op", "get")], &h)
            .family("weft_y", Kind::Gauge, "Another.")
            .sample("weft_y", &[("why", "a \"b\"\n")], 1.5);
        assert!(s.contains("weft_x_seconds_bucket{op=\"get\",le=\"0.00025\"} 0\n"), "{s}");
        assert!(s.contains("weft_x_seconds_bucket{op=\"get\",le=\"0.0005\"} 1\n"), "{s}");
        assert!(s.contains("weft_x_seconds_bucket{op=\"get\",le=\"+Inf\"} 2\n"), "{s}");
        assert!(s.contains("weft_x_seconds_count{op=\"get\"} 2\n"), "{s}");
        assert!(s.contains("weft_y{why=\"a \\\"b\\\"\\n\"} 1.5\n"), "{s}");
        assert!(s.starts_with("# HELP weft_x_seconds A test.\n# TYPE weft_x_seconds histogram\n"));
    }
}
