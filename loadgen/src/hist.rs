//! A log-linear latency histogram (≈1.6 % resolution, ns values), cheap to
//! record into and sparse to ship between processes.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS; // 64 sub-buckets per power of two
const LINEAR: u64 = 2 * SUB; // values below are exact
const BUCKETS: usize = (LINEAR + (64 - SUB_BITS as u64 - 1) * SUB) as usize;

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
    pub sum: u128,
}

/// The sparse wire form: `[[bucket, count], ...]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistWire {
    pub b: Vec<(u32, u64)>,
    pub max: u64,
    pub sum: u128,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

#[inline]
fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 7
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..64
    (LINEAR + (exp as u64 - SUB_BITS as u64 - 1) * SUB + sub) as usize
}

fn value_of(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let k = i - LINEAR;
    let exp = k / SUB + SUB_BITS as u64 + 1;
    let sub = k % SUB;
    let shift = exp - SUB_BITS as u64;
    let lo = (SUB + sub) << shift;
    lo + (1u64 << shift) / 2
}

impl Hist {
    pub fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS],
            n: 0,
            max: 0,
            sum: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.n += 1;
        self.sum += v as u128;
        if v > self.max {
            self.max = v;
        }
    }

    /// The value at quantile `q` (0..=1); the exact maximum for q = 1.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(i).min(self.max);
            }
        }
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }

    pub fn to_wire(&self) -> HistWire {
        HistWire {
            b: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
            sum: self.sum,
        }
    }

    /// Merges the histogram a worker reported under `"hist"` in `report`,
    /// if it has one.
    pub fn merge_report(&mut self, report: &serde_json::Value) {
        if let Some(wire) = report
            .get("hist")
            .and_then(|h| serde_json::from_value::<HistWire>(h.clone()).ok())
        {
            self.merge_wire(&wire);
        }
    }

    pub fn merge_wire(&mut self, w: &HistWire) {
        for &(i, c) in &w.b {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.n += c;
            }
        }
        self.sum += w.sum;
        self.max = self.max.max(w.max);
    }

    /// `{"n", "p50_us", "p99_us", "max_us", "mean_us"}`.
    pub fn summary_us(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "p50_us": us(self.quantile(0.5)),
            "p90_us": us(self.quantile(0.9)),
            "p99_us": us(self.quantile(0.99)),
            "p999_us": us(self.quantile(0.999)),
            "max_us": us(self.max),
            "mean_us": (self.mean() / 10.0).round() / 100.0,
        })
    }
}

/// ns → µs with two decimals.
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 10.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Hist::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 100_000_000);
        let mut g = Hist::new();
        g.merge_wire(&h.to_wire());
        assert_eq!(g.n, h.n);
        assert_eq!(g.quantile(0.5), h.quantile(0.5));
    }

    #[test]
    fn index_is_monotonic_and_in_range() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(i >= last);
            last = i;
        }
    }
}
