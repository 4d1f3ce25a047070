//! Reflect-padded overlapping 3D patch extraction and non-overlapping un-patchify
//! (spec §4.1, §4.3). Pure functions of data: extraction never needs a gradient, un-patchify
//! is on the gradient path.

use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

/// Overlapping windows of edge `patch`, every `stride` voxels, after reflect padding by
/// `padding` on both sides of each spatial axis.
/// - `x`: `[batch, channels, depth, height, width]`
/// - returns `[batch, g_d·g_h·g_w, channels·patch³]`, tokens in (depth, height, width) order
///   with width fastest; inside a token, index `ch·P³ + (i·P + j)·P + l`.
pub fn extract_patches(x: Tensor<5>, patch: usize, stride: usize, padding: usize) -> Tensor<3> {
    let [batch, channels, ..] = x.dims();
    let x = if padding > 0 {
        x.pad([(padding, padding); 3], PadMode::Reflect) // [b, c, D+2p, H+2p, W+2p]
    } else {
        x
    };
    let x: Tensor<6> = x.unfold(2, patch, stride); // [b, c, gd, Hp, Wp, P]
    let x: Tensor<7> = x.unfold(3, patch, stride); // [b, c, gd, gh, Wp, P, P]
    let x: Tensor<8> = x.unfold(4, patch, stride); // [b, c, gd, gh, gw, P, P, P]
    let [_, _, gd, gh, gw, ..] = x.dims();
    x.permute([0, 2, 3, 4, 1, 5, 6, 7]) // "bcDHWijl->bDHWcijl"
        .reshape([batch, gd * gh * gw, channels * patch.pow(3)])
}

/// Writes each token's `stride³·channels` outputs to its own block (no overlap).
/// - `y`: `[batch, grid³, stride³·channels]`, element `((i·s + j)·s + l)·C + ch` (channel fastest)
/// - returns `[batch, channels, grid·s, grid·s, grid·s]`
pub fn unpatchify(y: Tensor<3>, grid: usize, stride: usize, channels: usize) -> Tensor<5> {
    let [batch, tokens, width] = y.dims();
    debug_assert_eq!((tokens, width), (grid.pow(3), stride.pow(3) * channels));
    let (g, s) = (grid, stride);
    y.reshape([batch, g, g, g, s, s, s, channels]) // [b, gD, gH, gW, s, s, s, c]
        .permute([0, 7, 1, 4, 2, 5, 3, 6]) // "bDHWpqrc->bcDpHqWr"
        .reshape([batch, channels, g * s, g * s, g * s])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn reflect(i: isize, n: usize) -> usize {
        let n = n as isize;
        let r = if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        };
        r as usize
    }

    #[test]
    fn extraction_matches_index_formula() {
        let device = Device::flex();
        let (b, c, s, p, st, pad) = (2, 2, 8, 6, 4, 1);
        let data: Vec<f32> = (0..b * c * s * s * s).map(|i| i as f32).collect();
        let x = Tensor::<5>::from_data(TensorData::new(data.clone(), [b, c, s, s, s]), &device);
        let got = extract_patches(x, p, st, pad).into_data().try_into_vec_as::<f32>().unwrap();
        let g = (s + 2 * pad - p) / st + 1;
        let width = c * p * p * p;
        assert_eq!(got.len(), b * g * g * g * width);
        for bi in 0..b {
            for n in 0..g * g * g {
                let (ga, gb, gc) = (n / (g * g), (n / g) % g, n % g);
                for k in 0..width {
                    let (ch, i, j, l) = (k / (p * p * p), (k / (p * p)) % p, (k / p) % p, k % p);
                    let at = |blk: usize, off: usize| reflect((blk * st + off) as isize - pad as isize, s);
                    let src = (((bi * c + ch) * s + at(ga, i)) * s + at(gb, j)) * s + at(gc, l);
                    assert_eq!(got[(bi * g * g * g + n) * width + k], data[src], "b{bi} n{n} k{k}");
                }
            }
        }
    }

    #[test]
    fn unpatchify_matches_index_formula() {
        let device = Device::flex();
        let (b, g, s, c) = (2, 3, 2, 2);
        let width = s * s * s * c;
        let data: Vec<f32> = (0..b * g * g * g * width).map(|i| i as f32).collect();
        let y = Tensor::<3>::from_data(TensorData::new(data.clone(), [b, g * g * g, width]), &device);
        let out = unpatchify(y, g, s, c).into_data().try_into_vec_as::<f32>().unwrap();
        let e = g * s;
        for bi in 0..b {
            for ch in 0..c {
                for z in 0..e {
                    for yy in 0..e {
                        for x in 0..e {
                            let n = ((z / s) * g + yy / s) * g + x / s;
                            let k = (((z % s) * s + yy % s) * s + x % s) * c + ch;
                            let want = data[(bi * g * g * g + n) * width + k];
                            assert_eq!(out[(((bi * c + ch) * e + z) * e + yy) * e + x], want);
                        }
                    }
                }
            }
        }
    }
}
