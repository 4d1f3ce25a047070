//! AdamW with PyTorch's update rule (bias-corrected moments, ε outside the square root,
//! decoupled weight decay), f32 state keyed by the parameters' official keys, and a
//! global-norm gradient clip. Written here rather than taken from burn-optim so that its
//! state is saved and restored by name and on the run's own device, and so that a damaged
//! state file is an error rather than a silent restart of the moments.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::weights::export::{KeyedMapper, map_params, params};

/// Hyper-parameters of AdamW.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The settings of `[train]` (betas, ε, weight decay).
    pub fn from_train(t: &crate::config::TrainSection) -> Self {
        AdamWConfig { beta1: t.betas[0], beta2: t.betas[1], eps: t.eps, weight_decay: t.weight_decay }
    }
}

/// First and second moments of one parameter, flattened.
struct Moments {
    m: Tensor<1>,
    v: Tensor<1>,
}

/// The optimizer state: step count and moments by official key.
pub struct AdamW {
    cfg: AdamWConfig,
    steps: u64,
    state: BTreeMap<String, Moments>,
}

const FORMAT: &str = "prdit-adamw-1";

impl AdamW {
    /// A fresh optimizer.
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW { cfg, steps: 0, state: BTreeMap::new() }
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Parameters with state (the trainable ones that have received a gradient).
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// The first and second moments (`exp_avg`, `exp_avg_sq`) of the parameter with official
    /// key `key`, flattened in Burn's layout (see [`crate::weights::export::official_layout`]).
    pub fn moments(&self, key: &str) -> Option<(Tensor<1>, Tensor<1>)> {
        self.state.get(key).map(|s| (s.m.clone(), s.v.clone()))
    }

    /// Official keys of the parameters that have state.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(String::as_str)
    }

    /// Whether no state exists yet.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Applies one update with learning rate `lr` to every parameter that has a gradient in
    /// `grads`, each gradient first multiplied by `scale` (`[1]`, the clip factor).
    pub fn step<M: Module>(
        &mut self,
        model: M,
        grads: &mut GradientsParams,
        lr: f64,
        scale: Option<Tensor<1>>,
    ) -> M {
        self.steps += 1;
        let t = self.steps as i32;
        let mut mapper = Update {
            cfg: self.cfg,
            state: &mut self.state,
            grads,
            lr,
            scale,
            bias1: 1.0 - self.cfg.beta1.powi(t),
            bias2: 1.0 - self.cfg.beta2.powi(t),
        };
        map_params(model, &mut mapper)
    }

    /// Writes the state (burnpack: `{key}.exp_avg`, `{key}.exp_avg_sq`, step count in metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.state.len());
        for (key, s) in &self.state {
            for (suffix, t) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                let data = t
                    .clone()
                    .try_into_data()
                    .map_err(|e| Error::transfer(format!("the optimizer moment `{key}.{suffix}`"), e))?;
                let (bytes, shape, dtype) = data.into_parts();
                tensors.push(burn_pack::Tensor::new(format!("{key}.{suffix}"), dtype, shape, None, bytes));
            }
        }
        crate::fsio::write_atomic_with(path, |scratch| {
            burn_pack::Writer::new(tensors)
                .with_metadata("prdit.format", FORMAT)
                .with_metadata("prdit.steps", &self.steps.to_string())
                .auto_extension(false)
                .write_to_file(scratch)
                .map_err(|e| Error::weights(path, format!("cannot write the optimizer state: {e}")))
        })
    }

    /// Reads a state written by [`save`](Self::save) onto `device`; every key of `expected`
    /// (the trainable parameters) must be present, and nothing else.
    pub fn load(cfg: AdamWConfig, path: &Path, expected: &[String], device: &Device) -> Result<Self> {
        let bad = |reason: String| Error::weights(path, reason);
        let reader = burn_pack::Reader::from_file(path)
            .map_err(|e| bad(format!("not a readable optimizer state: {e}")))?;
        let meta = reader.metadata().clone();
        if meta.get("prdit.format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a prdit optimizer state ({FORMAT})")));
        }
        let steps: u64 = meta
            .get("prdit.steps")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("the step count is missing".into()))?;
        let mut parts: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        for t in reader.into_tensors().map_err(|e| bad(format!("cannot read the tensors: {e}")))? {
            let (name, dtype, shape, _, bytes) =
                t.into_parts().map_err(|e| bad(format!("cannot read a tensor: {e}")))?;
            let data = TensorData::from_bytes(bytes, shape, dtype);
            let values = data
                .try_to_vec::<f32>()
                .map_err(|e| bad(format!("`{name}` is not a float32 tensor: {e:?}")))?;
            if let Some(problem) = crate::weights::non_finite(&values) {
                return Err(bad(format!("`{name}` {problem}")));
            }
            parts.insert(name, Tensor::from_data(data, device));
        }
        let mut state = BTreeMap::new();
        for key in expected {
            let m = parts.remove(&format!("{key}.exp_avg"));
            let v = parts.remove(&format!("{key}.exp_avg_sq"));
            match (m, v) {
                (Some(m), Some(v)) => state.insert(key.clone(), Moments { m, v }),
                _ if steps == 0 => None,
                _ => return Err(bad(format!("no moments for the trainable parameter `{key}`"))),
            };
        }
        if let Some(extra) = parts.keys().next() {
            return Err(bad(format!(
                "moments for `{extra}`, which is not a trainable parameter of this model"
            )));
        }
        Ok(AdamW { cfg, steps, state })
    }
}

struct Update<'a> {
    cfg: AdamWConfig,
    state: &'a mut BTreeMap<String, Moments>,
    grads: &'a mut GradientsParams,
    lr: f64,
    scale: Option<Tensor<1>>,
    bias1: f64,
    bias2: f64,
}

impl KeyedMapper for Update<'_> {
    fn map<const D: usize>(&mut self, key: &str, id: ParamId, tensor: Tensor<D>) -> Tensor<D> {
        let Some(grad) = self.grads.remove::<D>(id) else {
            return tensor;
        };
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let require_grad = tensor.is_require_grad();
        let theta = tensor.inner().reshape([n]);
        let mut g = grad.reshape([n]);
        if let Some(s) = &self.scale {
            g = g * s.clone();
        }
        let c = self.cfg;
        let (m, v) = match self.state.remove(key) {
            Some(Moments { m, v }) => {
                (m * c.beta1 + g.clone() * (1.0 - c.beta1), v * c.beta2 + g.square() * (1.0 - c.beta2))
            }
            None => (g.clone() * (1.0 - c.beta1), g.square() * (1.0 - c.beta2)),
        };
        // PyTorch's step, θ − (lr/b₁)·m / (√v/√b₂ + ε), with the bias corrections folded into
        // two scalars: θ − (lr·√b₂/b₁)·m / (√v + ε·√b₂) — five passes over the parameter where
        // PyTorch's form takes seven (a backend without fusion pays one memory pass per operation).
        let root_b2 = self.bias2.sqrt();
        let denom = v.clone().sqrt() + c.eps * root_b2;
        let mut theta = if c.weight_decay > 0.0 { theta * (1.0 - self.lr * c.weight_decay) } else { theta };
        theta = theta - m.clone() / denom * (self.lr * root_b2 / self.bias1);
        self.state.insert(key.to_string(), Moments { m, v });
        let updated = Tensor::from_inner(theta.reshape(dims));
        if require_grad { updated.require_grad() } else { updated }
    }
}

/// Official keys of the parameters that take gradients (the optimizer's state keys).
pub fn trainable_keys<M: Module>(model: &M) -> Vec<String> {
    params(model, None).into_iter().filter(|p| p.require_grad).map(|p| p.key).collect()
}

/// The global L2 norm of all gradients, `[1]` on the device (no host sync). The per-parameter
/// sums of squares are all taken before they are added, so that the additions run one after
/// another and a fusing backend makes a few kernels of them instead of one per parameter.
pub fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    struct Squares<'a> {
        grads: &'a GradientsParams,
        sums: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Squares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let id: ParamId = param.id;
            if let Some(g) = self.grads.get::<D>(id) {
                self.sums.push(g.square().sum());
            }
        }
    }
    let mut n = Squares { grads, sums: Vec::new() };
    model.visit(&mut n);
    n.sums.into_iter().reduce(|a, b| a + b).map(|s| s.sqrt())
}

/// PyTorch's `clip_grad_norm_` factor `min(1, max_norm / (norm + 1e-6))`, and 0 when the
/// norm is not finite (the step then only decays the moments instead of writing NaN).
pub fn clip_factor(norm: Tensor<1>, max_norm: f64) -> Tensor<1> {
    let factor = (norm.clone() + 1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
    let bad = norm.clone().is_nan().bool_or(norm.is_inf());
    factor.mask_fill(bad, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_factor_matches_pytorch() {
        let device = Device::flex();
        let f = |n: f32| clip_factor(Tensor::<1>::from_floats([n], &device), 1.0).into_scalar::<f32>();
        assert!((f(4.0) - 1.0 / (4.0 + 1e-6)).abs() < 1e-7);
        assert_eq!(f(0.5), 1.0);
        assert_eq!(f(f32::NAN), 0.0);
        assert_eq!(f(f32::INFINITY), 0.0);
    }
}
