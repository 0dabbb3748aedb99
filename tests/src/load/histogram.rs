//! A fixed-size, log-linear latency histogram (HDR-like): exact below 128 µs, then 64
//! buckets per power of two (relative error under 1/64), bounded memory whatever runs.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Values below this get a bucket each.
const EXACT: u64 = 1 << (SUB_BITS + 1);
/// Values at or above `2^MAX_BITS` µs (about 19 hours) land in the last bucket.
const MAX_BITS: u32 = 36;
const BUCKETS: usize = EXACT as usize + (MAX_BITS - SUB_BITS - 1) as usize * SUB_COUNT;

/// Counts of values (microseconds) by bucket, plus the exact maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Adds every count of `other` to `self`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (exact), 0 when empty.
    #[must_use]
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `ppm` parts per million (500\_000 = median, 999\_000 =
    /// p99.9): the highest value of the bucket holding that rank, never above
    /// [`Histogram::max`]. 0 when empty.
    #[must_use]
    pub fn quantile_ppm(&self, ppm: u64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let ppm = u128::from(ppm.min(1_000_000));
        // rank = ceil(total * ppm / 1e6), at least 1; integer maths so 0.99 * 100 is 99.
        let rank = (u128::from(self.total) * ppm).div_ceil(1_000_000).max(1);
        let mut seen = 0u128;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += u128::from(count);
            if seen >= rank {
                return highest_in(index).min(self.max);
            }
        }
        self.max
    }
}

/// The bucket `value` belongs to.
fn bucket_of(value: u64) -> usize {
    if value < EXACT {
        return usize::try_from(value).unwrap_or(0);
    }
    let msb = 63 - value.leading_zeros();
    if msb >= MAX_BITS {
        return BUCKETS - 1;
    }
    let shift = msb - SUB_BITS;
    // The top SUB_BITS+1 bits of value: SUB_COUNT..2*SUB_COUNT.
    let top = usize::try_from(value >> shift).unwrap_or(0);
    EXACT as usize + (shift - 1) as usize * SUB_COUNT + (top - SUB_COUNT)
}

/// The highest value that lands in bucket `index`.
fn highest_in(index: usize) -> u64 {
    let exact = EXACT as usize;
    if index < exact {
        return index as u64;
    }
    let shift = (index - exact) / SUB_COUNT + 1;
    let top = ((index - exact) % SUB_COUNT + SUB_COUNT) as u64;
    ((top + 1) << shift) - 1
}

#[cfg(test)]
#[path = "histogram_tests.rs"]
mod tests;
