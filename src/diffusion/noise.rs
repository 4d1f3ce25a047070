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
