//! From a built network back to official keys: each parameter's Burn module path mapped to
//! its PyTorch state-dict key, values (or gradients) on the host in PyTorch layout. Used to
//! compare gradients with the official ones and to export weights.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor};

use super::HostTensor;
use crate::error::Result;

/// The official key of a parameter from its Burn module path
/// (`coarse.mlp1.fc1_g.weight` → `coarse.mlp_denoise.mlp1.fc1_g.weight`; the refinement
/// model's `sr.…` likewise, and its base under `base.`).
pub fn official_key(path: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::with_capacity(path.len() + 1);
    for seg in path {
        match seg.as_str() {
            "coarse" | "sr" => parts.extend([seg.as_str(), "mlp_denoise"]),
            "mlp0" => parts.extend(["mlp", "0"]),
            "ada_ln" => parts.extend(["adaLN_modulation", "1"]),
            "gamma" => parts.push("weight"),
            "beta" => parts.push("bias"),
            other => parts.push(other),
        }
    }
    parts.join(".")
}

/// One float parameter of a module, as the visitors below hand it out.
pub struct ParamEntry {
    /// Its official key.
    pub key: String,
    /// Its shape (Burn layout: a Linear weight is `[in, out]`).
    pub dims: Vec<usize>,
    /// Its value, flattened (on the module's device, autodiff included).
    pub value: Tensor<1>,
    /// Its gradient, flattened, when gradients were given and it has one.
    pub grad: Option<Tensor<1>>,
    /// Whether it takes gradients (frozen parameters do not).
    pub require_grad: bool,
}

struct Entries<'a> {
    path: Vec<String>,
    grads: Option<&'a Gradients>,
    out: Vec<ParamEntry>,
}

impl ModuleVisitor for Entries<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let dims = value.dims().to_vec();
        let n = dims.iter().product::<usize>();
        let grad = self.grads.and_then(|g| value.grad(g)).map(|g| g.reshape([n]));
        self.out.push(ParamEntry {
            key: official_key(&self.path),
            require_grad: value.is_require_grad(),
            value: value.reshape([n]),
            dims,
            grad,
        });
    }
}

/// Every float parameter of `model` with its official key, in module order; with `grads`,
/// each with its gradient.
pub fn params<M: Module>(model: &M, grads: Option<&Gradients>) -> Vec<ParamEntry> {
    let mut e = Entries { path: Vec::new(), grads, out: Vec::new() };
    model.visit(&mut e);
    e.out
}

/// A change of parameters by official key (see [`map_params`]).
pub trait KeyedMapper {
    /// The new value of the parameter `key` (identity `id`); `value` keeps its device (and
    /// autodiff state) and shape, and so must the result.
    fn map<const D: usize>(&mut self, key: &str, id: ParamId, value: Tensor<D>) -> Tensor<D>;
}

/// `model` with every float parameter passed through `mapper` by official key — the one place
/// that tracks module paths while mapping (the optimizer and the EMA use it).
pub fn map_params<M: Module>(model: M, mapper: &mut impl KeyedMapper) -> M {
    struct Keyed<'a, K> {
        path: Vec<String>,
        inner: &'a mut K,
    }
    impl<K: KeyedMapper> ModuleMapper for Keyed<'_, K> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let key = official_key(&self.path);
            Param::from_mapped_value(id, self.inner.map(&key, id, tensor), mapper)
        }
    }
    model.map(&mut Keyed { path: Vec::new(), inner: mapper })
}

/// A flattened tensor on the host in PyTorch layout (every rank-2 parameter is a Linear
/// weight: Burn `[in, out]` → PyTorch `[out, in]`).
pub fn official_layout(t: Tensor<1>, dims: &[usize]) -> Result<HostTensor> {
    host(t, dims)
}

fn host(t: Tensor<1>, dims: &[usize]) -> Result<HostTensor> {
    let (t, shape) = match dims {
        [i, o] => (t.reshape([*i, *o]).transpose().reshape([i * o]), vec![*o, *i]),
        _ => (t, dims.to_vec()),
    };
    Ok(HostTensor { shape, data: crate::device::to_host(t, "a parameter")? })
}

/// All parameters of `model` by official key, PyTorch layout.
pub fn state_dict<M: Module>(model: &M) -> Result<BTreeMap<String, HostTensor>> {
    params(model, None).into_iter().map(|p| Ok((p.key, host(p.value, &p.dims)?))).collect()
}

/// The gradients `grads` holds for `model`'s parameters, by official key (parameters
/// without a gradient, such as frozen ones, are absent).
pub fn gradients<M: Module>(model: &M, grads: &Gradients) -> Result<BTreeMap<String, HostTensor>> {
    params(model, Some(grads))
        .into_iter()
        .filter_map(|p| Some((p.key, p.grad?, p.dims)))
        .map(|(key, grad, dims)| Ok((key, host(grad, &dims)?)))
        .collect()
}
