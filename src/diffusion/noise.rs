//! Where the diffusion noise comes from: a seeded host generator (the same numbers on every
//! backend for a given seed), or a list injected by a test.

use std::collections::VecDeque;

use burn::tensor::{Device, Tensor, TensorData};
use chacha20::ChaCha8Rng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// A stream of scaled Gaussian noise tensors ε = std·z.
pub trait NoiseSource {
    /// The next noise tensor of `shape` on `device`.
    fn draw(&mut self, shape: [usize; 5], device: &Device) -> Result<Tensor<5>>;
}

/// `std·N(0, 1)` from ChaCha8 seeded with `seed`.
pub struct SeededNoise {
    rng: ChaCha8Rng,
    std: f64,
}

impl SeededNoise {
    /// Noise of standard deviation `std` (PRDiT: 0.5) from `seed`.
    pub fn new(seed: u64, std: f64) -> Self {
        SeededNoise { rng: ChaCha8Rng::seed_from_u64(seed), std }
    }

    /// `n` host samples.
    pub fn draw_host(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut self.rng);
                (z * self.std) as f32
            })
            .collect()
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, shape: [usize; 5], device: &Device) -> Result<Tensor<5>> {
        let data = self.draw_host(shape.iter().product());
        Ok(Tensor::from_data(TensorData::new(data, shape), device))
    }
}

/// Tensors handed out in order; running out is an error (a test asked for the wrong count).
pub struct InjectedNoise {
    queue: VecDeque<Tensor<5>>,
}

impl InjectedNoise {
    /// Noise tensors, already scaled, in the order they will be drawn.
    pub fn new(noise: Vec<Tensor<5>>) -> Self {
        InjectedNoise { queue: noise.into() }
    }

    /// How many are left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl NoiseSource for InjectedNoise {
    fn draw(&mut self, shape: [usize; 5], device: &Device) -> Result<Tensor<5>> {
        let t = self
            .queue
            .pop_front()
            .ok_or_else(|| Error::invalid("noise", "the injected noise list ran out"))?;
        if t.dims() != shape {
            return Err(Error::invalid(
                "noise",
                format!("injected noise has shape {:?}, the sampler needs {shape:?}", t.dims()),
            ));
        }
        Ok(t.to_device(device))
    }
}

/// What a derived random stream is for; each purpose gets its own family of streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    /// The order of training volumes in an epoch (index = epoch).
    Order = 1,
    /// Diffusion times of a training batch (index = draw).
    Times = 2,
    /// Noise of a training batch (index = draw).
    TrainNoise = 3,
    /// Noise of a validation batch (index = batch number): the same at every evaluation.
    ValNoise = 4,
    /// Initial and corrector noise of a generated volume (index = volume seed mix).
    Sample = 5,
    /// Noise of the pilot batch that fits a time grid to the model (index = pilot volume).
    Pilot = 6,
}

/// Values per noise chunk: each chunk has its own stream, so the numbers do not depend on
/// how many threads generate them.
const CHUNK: usize = 1 << 18;

/// An independent stream for (`seed`, `purpose`, `index`, `chunk`): ChaCha8 keyed by the
/// seed, with the other three packed into its 64-bit stream number.
pub fn stream_rng(seed: u64, purpose: Purpose, index: u64, chunk: u64) -> ChaCha8Rng {
    debug_assert!(index < (1 << 40) && chunk < (1 << 16));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << 56) | (index << 16) | chunk);
    rng
}

/// `n` values of `std·N(0, 1)` from the streams of (`seed`, `purpose`, `index`), generated
/// in parallel; the result depends only on the arguments.
pub fn normal_noise(seed: u64, purpose: Purpose, index: u64, n: usize, std: f64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let chunks: Vec<(usize, &mut [f32])> = out.chunks_mut(CHUNK).enumerate().collect();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(chunks.len()).max(1);
    let per_thread = chunks.len().div_ceil(threads);
    let mut groups: Vec<Vec<(usize, &mut [f32])>> = Vec::new();
    let mut it = chunks.into_iter().peekable();
    while it.peek().is_some() {
        groups.push(it.by_ref().take(per_thread).collect());
    }
    std::thread::scope(|s| {
        for group in groups {
            s.spawn(move || {
                for (c, slice) in group {
                    let mut rng = stream_rng(seed, purpose, index, c as u64);
                    for v in slice.iter_mut() {
                        let z: f64 = StandardNormal.sample(&mut rng);
                        *v = (z * std) as f32;
                    }
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_noise_is_deterministic_independent_and_scaled() {
        let n = 3 * CHUNK + 17;
        let a = normal_noise(7, Purpose::TrainNoise, 5, n, 0.5);
        assert_eq!(a, normal_noise(7, Purpose::TrainNoise, 5, n, 0.5));
        assert_ne!(a[..100], normal_noise(7, Purpose::TrainNoise, 6, 100, 0.5)[..]);
        assert_ne!(a[..100], normal_noise(7, Purpose::ValNoise, 5, 100, 0.5)[..]);
        assert_ne!(a[..100], a[CHUNK..CHUNK + 100], "chunks use different streams");
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 2e-3 && (var.sqrt() - 0.5).abs() < 2e-3, "mean {mean} std {}", var.sqrt());
    }
}
