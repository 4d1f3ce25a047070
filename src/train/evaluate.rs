//! The official validation: the EMA model's image-prediction MSE at t = 100 with fixed noise.

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::dataset::Dataset;
use crate::data::volume::Volume;
use crate::device::to_host;
use crate::diffusion::noise::{Purpose, normal_noise};
use crate::diffusion::{NOISE_STD, q_sample};
use crate::error::Result;
use crate::model::network::Network;

/// The diffusion time of the official validation (image-prediction MSE at t = 100).
pub const VAL_T: usize = 100;

/// Validation: mean over `val` of the image-prediction MSE at t = 100 with fixed noise, and
/// the first volume's (x₀, x_t, x̂₀) for the preview.
pub fn evaluate<N: Network>(
    ema: &N,
    val: &Dataset,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<(f64, [Volume; 3])> {
    let s = val.size();
    let voxels = s * s * s;
    let mut total = 0.0;
    let mut preview = None;
    let indices: Vec<usize> = (0..val.len()).collect();
    for (n, chunk) in indices.chunks(batch).enumerate() {
        let b = chunk.len();
        let mut x0 = Vec::with_capacity(b * voxels);
        for &i in chunk {
            val.extend_f32(i, &mut x0);
        }
        let noise = normal_noise(seed, Purpose::ValNoise, n as u64, b * voxels, NOISE_STD);
        let x0 = Tensor::<5>::from_data(TensorData::new(x0, [b, 1, s, s, s]), device);
        let noise = Tensor::<5>::from_data(TensorData::new(noise, [b, 1, s, s, s]), device);
        let t = vec![VAL_T; b];
        let xt = q_sample(x0.clone(), &t, noise);
        let (_, x0_hat) = ema.predict(xt.clone(), &vec![VAL_T as f32; b]);
        let err = to_host(
            (x0_hat.clone() - x0.clone()).square().mean_dims(&[1, 2, 3, 4]),
            "the validation errors",
        )?;
        total += err.iter().map(|&e| e as f64).sum::<f64>();
        if preview.is_none() {
            let first = |t: Tensor<5>| -> Result<Volume> {
                Ok(Volume {
                    dims: [s; 3],
                    spacing: [1.0; 3],
                    data: to_host(t.narrow(0, 0, 1), "the preview")?,
                })
            };
            preview = Some([first(x0)?, first(xt)?, first(x0_hat)?]);
        }
    }
    Ok((total / val.len().max(1) as f64, preview.expect("validation set is not empty")))
}
