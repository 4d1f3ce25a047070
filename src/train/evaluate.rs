//! The official validation: the EMA model's image-prediction MSE at t = 100 with fixed noise;
//! for a flow model PRDiT-FM's, the MSE of the reconstruction `x_t + (1 − t)·v̂` at t = 0.5 (with
//! fixed noise here; PRDiT-FM draws it unseeded, so its value changes from one evaluation to
//! the next even for the same weights).

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::dataset::Dataset;
use crate::data::volume::Volume;
use crate::device::to_host;
use crate::diffusion::noise::{Purpose, normal_noise};
use crate::diffusion::{Process, flow, q_sample};
use crate::error::Result;
use crate::model::network::Network;

/// The diffusion time of the official validation (image-prediction MSE at t = 100).
pub const VAL_T: usize = 100;

/// What the validation measures, as logs and `progress.png` name it.
pub fn val_label(process: Process) -> String {
    match process {
        Process::Ian => format!("image MSE at {}", val_time(process)),
        Process::Flow => format!("reconstruction MSE at {}", val_time(process)),
    }
}

/// The validation's time as the previews and logs show it: `t = 100` or `t = 0.5` (flow).
pub fn val_time(process: Process) -> String {
    match process {
        Process::Ian => format!("t = {VAL_T}"),
        Process::Flow => format!("t = {}", flow::VAL_T),
    }
}

/// Validation: mean over `val` of the image-prediction MSE at t = 100 (flow: 0.5) with fixed
/// noise, and
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
        let process = N::process(ema.config());
        let noise = normal_noise(seed, Purpose::ValNoise, n as u64, b * voxels, process.noise_std());
        let x0 = Tensor::<5>::from_data(TensorData::new(x0, [b, 1, s, s, s]), device);
        let noise = Tensor::<5>::from_data(TensorData::new(noise, [b, 1, s, s, s]), device);
        let (xt, x0_hat) = match process {
            Process::Ian => {
                let xt = q_sample(x0.clone(), &vec![VAL_T; b], noise);
                let (_, x0_hat) = ema.predict(xt.clone(), &vec![VAL_T as f32; b]);
                (xt, x0_hat)
            }
            Process::Flow => {
                let (x0_hat, xt) = flow::reconstruct(ema, x0.clone(), noise, flow::VAL_T);
                (xt, x0_hat)
            }
        };
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
