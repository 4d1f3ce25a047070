//! 3D resampling as `torch.nn.functional.interpolate` does it with `align_corners=False`:
//! separable linear interpolation (trilinear) and nearest neighbour, built from index
//! selections so that gradients flow through the trilinear path.

use burn::tensor::{Int, Tensor, TensorData};

/// Source indices and weight of the upper neighbour for each output position along an axis
/// of `input` → `output` samples (PyTorch's `area_pixel_compute_source_index` with
/// `align_corners=False`, negative coordinates clamped to 0).
fn linear_taps(input: usize, output: usize) -> (Vec<i64>, Vec<i64>, Vec<f32>) {
    let scale = input as f64 / output as f64;
    let mut lo = Vec::with_capacity(output);
    let mut hi = Vec::with_capacity(output);
    let mut w = Vec::with_capacity(output);
    for o in 0..output {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        lo.push(i0 as i64);
        hi.push(i1 as i64);
        w.push((src - i0 as f64) as f32);
    }
    (lo, hi, w)
}

/// Linear interpolation of `x` along `axis` (2, 3 or 4) to `output` samples.
fn linear_axis(x: Tensor<5>, axis: usize, output: usize) -> Tensor<5> {
    let input = x.dims()[axis];
    if input == output {
        return x;
    }
    let device = x.device();
    let (lo, hi, w) = linear_taps(input, output);
    let lo = Tensor::<1, Int>::from_data(TensorData::new(lo, [output]), &device);
    let hi = Tensor::<1, Int>::from_data(TensorData::new(hi, [output]), &device);
    let mut shape = [1usize; 5];
    shape[axis] = output;
    let w = Tensor::<1>::from_data(TensorData::new(w, [output]), &device).reshape(shape);
    let a = x.clone().select(axis, lo);
    let b = x.select(axis, hi);
    a.clone() + (b - a) * w
}

/// Trilinear resize of `[batch, channels, D, H, W]` to `size`, `align_corners=False`.
pub fn trilinear(x: Tensor<5>, size: [usize; 3]) -> Tensor<5> {
    let x = linear_axis(x, 2, size[0]);
    let x = linear_axis(x, 3, size[1]);
    linear_axis(x, 4, size[2])
}

/// Nearest-neighbour resize (PyTorch `mode="nearest"`: source index ⌊o·in/out⌋), so ×½
/// keeps the even indices and ×2 repeats each voxel.
pub fn nearest(x: Tensor<5>, size: [usize; 3]) -> Tensor<5> {
    let mut x = x;
    for (k, &output) in size.iter().enumerate() {
        let axis = k + 2;
        let input = x.dims()[axis];
        if input == output {
            continue;
        }
        let idx: Vec<i64> = (0..output).map(|o| ((o * input) / output).min(input - 1) as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [output]), &x.device());
        x = x.select(axis, idx);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn ramps_and_constants() {
        let device = Device::flex();
        // A linear ramp along W stays linear in the interior after a ×2 upsample.
        let ramp: Vec<f32> = (0..4).map(|i| i as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(ramp, [1, 1, 1, 1, 4]), &device);
        let y: Vec<f32> = trilinear(x.clone(), [1, 1, 8]).into_data().try_into_vec_as().unwrap();
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
        let n: Vec<f32> = nearest(x, [1, 1, 8]).into_data().try_into_vec_as().unwrap();
        assert_eq!(n, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }
}
