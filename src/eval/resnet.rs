//! MedicalNet's 3D ResNet as the feature network of 3D-FID/MMD (spec §12.1): depths 10, 18,
//! 34 (basic blocks) and 50 (bottlenecks), shortcut A (strided identity, zero-padded
//! channels) or B (1×1×1 convolution + batch norm); 7³ stride-2 stem, 3³ stride-2 max-pool,
//! layer3 with dilation 2 and layer4 with dilation 4 (stride 1), batch norm in eval mode,
//! global average pool → 512 or 2048 features.
//!
//! Python: MedicalNet `models/resnet.py` (as copied into PRDiT's `evaluations/`).

use std::collections::BTreeSet;

use burn::module::{Module, Param};
use burn::tensor::module::conv3d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::StateDict;

/// Which MedicalNet network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetSpec {
    /// 10, 18, 34 or 50.
    pub depth: usize,
    /// `'A'` or `'B'`.
    pub shortcut: char,
}

impl ResNetSpec {
    fn blocks(&self) -> Result<[usize; 4]> {
        match self.depth {
            10 => Ok([1, 1, 1, 1]),
            18 => Ok([2, 2, 2, 2]),
            34 | 50 => Ok([3, 4, 6, 3]),
            d => Err(Error::invalid("resnet depth", format!("{d} is not one of 10, 18, 34, 50"))),
        }
    }

    fn bottleneck(&self) -> bool {
        self.depth >= 50
    }

    /// Width of the pooled features.
    pub fn features(&self) -> usize {
        if self.bottleneck() { 2048 } else { 512 }
    }

    /// The network a state dict holds, read from its keys (depth from the block counts and
    /// block type, shortcut from the presence of projection convolutions).
    pub fn detect(sd: &StateDict) -> Result<Self> {
        let keys: BTreeSet<&str> = sd.keys().collect();
        let count = |layer: usize| {
            (0..).take_while(|b| keys.contains(format!("layer{layer}.{b}.conv1.weight").as_str())).count()
        };
        let counts = [count(1), count(2), count(3), count(4)];
        let bottleneck = keys.contains("layer1.0.conv3.weight");
        let depth = match (counts, bottleneck) {
            ([1, 1, 1, 1], false) => 10,
            ([2, 2, 2, 2], false) => 18,
            ([3, 4, 6, 3], false) => 34,
            ([3, 4, 6, 3], true) => 50,
            _ => {
                return Err(Error::weights(
                    sd.path(),
                    format!(
                        "not a MedicalNet ResNet-10/18/34/50 (blocks per layer {counts:?}, bottleneck {bottleneck})"
                    ),
                ));
            }
        };
        let shortcut = if keys.contains("layer2.0.downsample.0.weight") { 'B' } else { 'A' };
        Ok(ResNetSpec { depth, shortcut })
    }
}

/// Batch norm in eval mode, folded into a per-channel scale and shift.
#[derive(Module, Debug)]
struct Bn {
    scale: Param<Tensor<1>>,
    shift: Param<Tensor<1>>,
}

impl Bn {
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let c = x.dims()[1];
        x * self.scale.val().reshape([1, c, 1, 1, 1]) + self.shift.val().reshape([1, c, 1, 1, 1])
    }
}

#[derive(Module, Debug)]
struct Conv {
    weight: Param<Tensor<5>>,
    stride: usize,
    padding: usize,
    dilation: usize,
}

impl Conv {
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let (s, p, d) = (self.stride, self.padding, self.dilation);
        conv3d(x, self.weight.val(), None, ConvOptions::new([s; 3], [p; 3], [d; 3], 1))
    }
}

#[derive(Module, Debug)]
struct Block {
    convs: Vec<Conv>,
    bns: Vec<Bn>,
    /// Shortcut B: projection and its norm.
    proj: Option<(Conv, Bn)>,
    /// Shortcut A: stride and the output channels to zero-pad to (0 = identity).
    a_stride: usize,
    a_channels: usize,
}

impl Block {
    fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            h = bn.forward(conv.forward(h));
            if i < last {
                h = burn::tensor::activation::relu(h);
            }
        }
        let residual = match &self.proj {
            Some((conv, bn)) => bn.forward(conv.forward(x)),
            None if self.a_channels > 0 => {
                // avg_pool3d with kernel 1 and stride s = every s-th voxel, then zero channels.
                let mut x = x;
                for axis in 2..5 {
                    let n = x.dims()[axis];
                    let idx: Vec<i64> = (0..n).step_by(self.a_stride).map(|i| i as i64).collect();
                    let len = idx.len();
                    let idx =
                        Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(idx, [len]), &x.device());
                    x = x.select(axis, idx);
                }
                let pad = self.a_channels - x.dims()[1];
                x.pad([(0, pad), (0, 0), (0, 0), (0, 0)], PadMode::Constant(0.0))
            }
            None => x,
        };
        burn::tensor::activation::relu(h + residual)
    }
}

/// The feature network.
#[derive(Module, Debug)]
pub struct ResNet3d {
    conv1: Conv,
    bn1: Bn,
    layers: Vec<Vec<Block>>,
    #[module(skip)]
    shapes: Vec<(String, Vec<usize>)>,
}

/// The weights of the fixture formula (`tests/fixtures/med3d/README.md`): deterministic,
/// meaningless values for testing the network against the official code — never for scores.
pub fn formula_weights(key: &str, shape: &[usize]) -> Vec<f32> {
    let phase = (key.bytes().map(|b| b as u64).sum::<u64>() % 1000) as f64 / 100.0;
    let n: usize = shape.iter().product();
    let s = (0..n).map(|j| (0.61803 * j as f64 + phase).sin() as f32);
    let suffix = key.rsplit('.').next().unwrap_or_default();
    match (shape.len(), suffix) {
        (5, _) => {
            let fan_in = (shape[1] * shape[2] * shape[3] * shape[4]) as f64;
            s.map(|v| (v * 2.0) / fan_in.sqrt() as f32).collect()
        }
        (_, "weight") => s.map(|v| 1.0 + 0.1 * v).collect(),
        (_, "bias") | (_, "running_mean") => s.map(|v| 0.1 * v).collect(),
        (_, "running_var") => s.map(|v| 1.0 + 0.25 * (1.0 + v)).collect(),
        _ => s.collect(),
    }
}

/// Reads parameters by key with strict checks (shape, presence); collects problems. Without
/// a state dict, the test formula provides every parameter.
struct Loader<'a> {
    sd: Option<&'a StateDict>,
    device: Device,
    used: BTreeSet<String>,
    problems: Vec<String>,
    shapes: Vec<(String, Vec<usize>)>,
}

impl Loader<'_> {
    fn tensor(&mut self, key: &str, shape: &[usize]) -> Vec<f32> {
        self.used.insert(key.to_string());
        self.shapes.push((key.to_string(), shape.to_vec()));
        let Some(sd) = self.sd else {
            return formula_weights(key, shape);
        };
        match sd.shape(key) {
            None => {
                self.problems.push(format!("missing key `{key}`"));
                vec![0.0; shape.iter().product()]
            }
            Some(s) if s != shape => {
                self.problems.push(format!("key `{key}` has shape {s:?}, the network needs {shape:?}"));
                vec![0.0; shape.iter().product()]
            }
            Some(_) => sd.read(key).map(|t| t.data).unwrap_or_else(|e| {
                self.problems.push(e.to_string());
                vec![0.0; shape.iter().product()]
            }),
        }
    }

    fn conv(&mut self, key: &str, cin: usize, cout: usize, k: usize, stride: usize, dilation: usize) -> Conv {
        let w = self.tensor(&format!("{key}.weight"), &[cout, cin, k, k, k]);
        let weight = Param::from_data(TensorData::new(w, [cout, cin, k, k, k]), &self.device);
        Conv { weight, stride, padding: if k == 1 { 0 } else { dilation * (k / 2) }, dilation }
    }

    fn bn(&mut self, key: &str, c: usize) -> Bn {
        let [w, b, m, v] = ["weight", "bias", "running_mean", "running_var"]
            .map(|p| self.tensor(&format!("{key}.{p}"), &[c]));
        let scale: Vec<f32> =
            w.iter().zip(&v).map(|(w, v)| (*w as f64 / (*v as f64 + 1e-5).sqrt()) as f32).collect();
        let shift: Vec<f32> = b
            .iter()
            .zip(&m)
            .zip(&scale)
            .map(|((b, m), s)| (*b as f64 - *m as f64 * *s as f64) as f32)
            .collect();
        let p = |v: Vec<f32>| Param::from_data(TensorData::new(v, [c]), &self.device);
        Bn { scale: p(scale), shift: p(shift) }
    }
}

/// Keys a MedicalNet file may hold that are not part of the feature network: the
/// segmentation head of the released models and batch-norm counters.
fn ignorable(key: &str) -> bool {
    key.starts_with("conv_seg.") || key.ends_with("num_batches_tracked")
}

impl ResNet3d {
    /// Builds `spec` from a MedicalNet state dict, strictly: a missing, unexpected or
    /// mis-shaped key is an error naming it (the segmentation head `conv_seg.*` and
    /// `num_batches_tracked` counters are ignored by design).
    pub fn from_state_dict(spec: ResNetSpec, sd: &StateDict, device: &Device) -> Result<Self> {
        Self::build(spec, Some(sd), device)
    }

    /// The network with the fixture's formula weights: for tests only — its features mean
    /// nothing.
    pub fn with_formula_weights(spec: ResNetSpec, device: &Device) -> Result<Self> {
        Self::build(spec, None, device)
    }

    fn build(spec: ResNetSpec, sd: Option<&StateDict>, device: &Device) -> Result<Self> {
        let blocks = spec.blocks()?;
        let mut ld = Loader {
            sd,
            device: device.clone(),
            used: BTreeSet::new(),
            problems: Vec::new(),
            shapes: Vec::new(),
        };
        let conv1 = ld.conv("conv1", 1, 64, 7, 2, 1);
        let conv1 = Conv { padding: 3, ..conv1 };
        let bn1 = ld.bn("bn1", 64);
        let expansion = if spec.bottleneck() { 4 } else { 1 };
        let mut inplanes = 64;
        let mut layers = Vec::new();
        for (l, (&n, (planes, stride, dilation))) in
            blocks.iter().zip([(64, 1, 1), (128, 2, 1), (256, 1, 2), (512, 1, 4)]).enumerate()
        {
            let mut layer = Vec::new();
            for b in 0..n {
                let key = format!("layer{}.{b}", l + 1);
                let s = if b == 0 { stride } else { 1 };
                let out = planes * expansion;
                let needs_shortcut = b == 0 && (stride != 1 || inplanes != out);
                let (convs, bns) = if spec.bottleneck() {
                    (
                        vec![
                            ld.conv(&format!("{key}.conv1"), inplanes, planes, 1, 1, 1),
                            ld.conv(&format!("{key}.conv2"), planes, planes, 3, s, dilation),
                            ld.conv(&format!("{key}.conv3"), planes, out, 1, 1, 1),
                        ],
                        vec![
                            ld.bn(&format!("{key}.bn1"), planes),
                            ld.bn(&format!("{key}.bn2"), planes),
                            ld.bn(&format!("{key}.bn3"), out),
                        ],
                    )
                } else {
                    (
                        vec![
                            ld.conv(&format!("{key}.conv1"), inplanes, planes, 3, s, dilation),
                            ld.conv(&format!("{key}.conv2"), planes, planes, 3, 1, dilation),
                        ],
                        vec![ld.bn(&format!("{key}.bn1"), planes), ld.bn(&format!("{key}.bn2"), planes)],
                    )
                };
                let (proj, a_stride, a_channels) = match (needs_shortcut, spec.shortcut) {
                    (true, 'B') => {
                        let conv = ld.conv(&format!("{key}.downsample.0"), inplanes, out, 1, s, 1);
                        (Some((conv, ld.bn(&format!("{key}.downsample.1"), out))), 0, 0)
                    }
                    (true, _) => (None, s, out),
                    (false, _) => (None, 0, 0),
                };
                layer.push(Block { convs, bns, proj, a_stride, a_channels });
                inplanes = out;
            }
            layers.push(layer);
        }
        for key in sd.iter().flat_map(|sd| sd.keys()) {
            if !ld.used.contains(key) && !ignorable(key) {
                ld.problems.push(format!(
                    "unexpected key `{key}` (not part of a ResNet-{} with shortcut {})",
                    spec.depth, spec.shortcut
                ));
            }
        }
        if !ld.problems.is_empty() {
            let n = ld.problems.len();
            let mut shown: Vec<String> = ld.problems.iter().take(12).cloned().collect();
            if n > 12 {
                shown.push(format!("… and {} more", n - 12));
            }
            let path = sd.map_or(std::path::Path::new("<formula>"), |sd| sd.path());
            return Err(Error::weights(
                path,
                format!("{n} problem(s) loading the feature network:\n  - {}", shown.join("\n  - ")),
            ));
        }
        Ok(ResNet3d { conv1, bn1, layers, shapes: ld.shapes })
    }

    /// Every parameter key of the network with its shape (PyTorch layout), in build order.
    pub fn parameter_shapes(&self) -> &[(String, Vec<usize>)] {
        &self.shapes
    }

    /// - `x`: `[batch, 1, S, S, S]` → pooled features `[batch, 512 or 2048]`
    pub fn forward(&self, x: Tensor<5>) -> Tensor<2> {
        let h = burn::tensor::activation::relu(self.bn1.forward(self.conv1.forward(x)));
        let mut h = max_pool_3x3x3_s2(h);
        for layer in &self.layers {
            for block in layer {
                h = block.forward(h);
            }
        }
        let [b, c, ..] = h.dims();
        h.mean_dims(&[2, 3, 4]).reshape([b, c])
    }

    /// The layer1 output (for debugging against the fixture).
    pub fn layer1(&self, x: Tensor<5>) -> Tensor<5> {
        let h = burn::tensor::activation::relu(self.bn1.forward(self.conv1.forward(x)));
        let mut h = max_pool_3x3x3_s2(h);
        for block in &self.layers[0] {
            h = block.forward(h);
        }
        h
    }
}

/// `max_pool3d(kernel 3, stride 2, padding 1)`: the maximum over the 27 taps of each window
/// of the −∞-padded input (Burn 0.22 has no 3D max-pool).
pub fn max_pool_3x3x3_s2(x: Tensor<5>) -> Tensor<5> {
    let x = x.pad([(1, 1); 3], PadMode::Constant(f32::NEG_INFINITY));
    let x: Tensor<6> = x.unfold(2, 3, 2);
    let x: Tensor<7> = x.unfold(3, 3, 2);
    let x: Tensor<8> = x.unfold(4, 3, 2); // [b, c, oD, oH, oW, 3, 3, 3]
    let [b, c, d, h, w, ..] = x.dims();
    x.reshape([b, c, d, h, w, 27]).max_dim(5).reshape([b, c, d, h, w])
}
