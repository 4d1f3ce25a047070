//! The default micro-batch: the largest that the predicted peak memory of a training step
//! (`prdit inspect`'s fit, [`crate::inspect::TrainingPeak`]) fits into the device's memory.
//! Used when `[train] micro_batch` is not set; a set value is always kept.

use crate::inspect::gib;

/// Share of the device's memory a step may be predicted to take: the rest is left to what the
/// fit does not hold (the GPU runtime's own reserve, allocator slack beyond the measured
/// points, the data loader's volumes).
pub const BUDGET: f64 = 0.9;

/// The micro-batch chosen for a device share of `batch` volumes, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub micro: usize,
    pub reason: String,
    /// The prediction says even one volume per pass does not fit.
    pub too_big: bool,
}

/// Chooses the micro-batch for `batch` volumes per device: the whole batch when its predicted
/// peak (`peak(m)`: bytes of a step at `m` volumes per pass) is within [`BUDGET`] of
/// `capacity` (bytes, with the device's name), else the largest `⌈batch / k⌉` that is, splitting
/// into as few and as even passes as fit. Without a prediction or a known capacity: the whole
/// batch, as before this policy.
pub fn choose(batch: usize, peak: impl Fn(usize) -> Option<u64>, capacity: Option<(u64, &str)>) -> Choice {
    let whole = |reason: String| Choice { micro: batch, reason, too_big: false };
    let Some(at_batch) = peak(batch) else {
        return whole(format!("the whole batch ({batch}): no memory prediction for this network"));
    };
    let Some((bytes, device)) = capacity else {
        return whole(format!(
            "the whole batch ({batch}; predicted peak {}): the memory of the device is unknown",
            gib(at_batch)
        ));
    };
    let budget = (bytes as f64 * BUDGET) as u64;
    let of = format!("{:.0} % of the {} of {device}", BUDGET * 100.0, gib(bytes));
    if at_batch <= budget {
        return whole(format!("the whole batch ({batch}): predicted peak {} fits {of}", gib(at_batch)));
    }
    let mut last = batch;
    for passes in 2..=batch {
        let micro = batch.div_ceil(passes);
        if micro == last {
            continue;
        }
        last = micro;
        let p = peak(micro).unwrap_or(u64::MAX);
        if p <= budget {
            return Choice {
                micro,
                reason: format!(
                    "micro-batches of {micro} ({passes} passes per step): predicted peak {} at {batch} \
                     exceeds {of}, {} at {micro}",
                    gib(at_batch),
                    gib(p)
                ),
                too_big: false,
            };
        }
    }
    Choice {
        micro: 1,
        reason: format!(
            "micro-batches of 1: even one volume per pass is predicted to take {}, more than {of}; \
             the step will likely run out of memory (a smaller model or volume would fit)",
            gib(peak(1).unwrap_or(at_batch))
        ),
        too_big: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    /// 1 GiB of state plus 1 GiB per volume.
    fn linear(m: usize) -> Option<u64> {
        Some(G + m as u64 * G)
    }

    #[test]
    fn whole_batch_when_it_fits_or_nothing_is_known() {
        assert_eq!(choose(16, linear, Some((40 * G, "gpu"))).micro, 16);
        assert_eq!(choose(16, linear, None).micro, 16);
        assert_eq!(choose(16, |_| None, Some((G, "gpu"))).micro, 16);
    }

    #[test]
    fn fewest_even_passes_that_fit() {
        // Budget 0.9 × 10 GiB = 9 GiB: 8 volumes (9 GiB) fit, 16 do not → two passes of 8.
        let c = choose(16, linear, Some((10 * G, "gpu")));
        assert_eq!((c.micro, c.too_big), (8, false), "{}", c.reason);
        assert!(c.reason.contains("2 passes"), "{}", c.reason);
        // 9 GiB budget with 12 volumes: 6 per pass (7 GiB) rather than 8 + 4.
        assert_eq!(choose(12, linear, Some((10 * G, "gpu"))).micro, 6);
        // 4.5 GiB: ⌈12/4⌉ = 3 volumes (4 GiB).
        assert_eq!(choose(12, linear, Some((5 * G, "gpu"))).micro, 3);
    }

    #[test]
    fn one_volume_that_does_not_fit_is_said() {
        let c = choose(4, linear, Some((2 * G, "gpu")));
        assert_eq!((c.micro, c.too_big), (1, true));
        assert!(c.reason.contains("out of memory"), "{}", c.reason);
    }
}
