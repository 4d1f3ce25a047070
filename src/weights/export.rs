//! From a built network back to official keys: each parameter's Burn module path mapped to
//! its PyTorch state-dict key, values (or gradients) on the host in PyTorch layout. Used to
//! compare gradients with the official ones and to export weights.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor};

use super::HostTensor;

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

struct Collector<'a> {
    path: Vec<String>,
    grads: Option<&'a Gradients>,
    out: BTreeMap<String, HostTensor>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = match self.grads {
            Some(grads) => match param.val().grad(grads) {
                Some(g) => g,
                None => return,
            },
            None => param.val(),
        };
        // Every rank-2 parameter is a Linear weight: Burn [in, out] → PyTorch [out, in].
        let value = if D == 2 { value.transpose() } else { value };
        let shape = value.dims().to_vec();
        let data = value.into_data().try_into_vec_as::<f32>().expect("a float parameter converts to f32");
        self.out.insert(official_key(&self.path), HostTensor { shape, data });
    }
}

/// All parameters of `model` by official key, PyTorch layout.
pub fn state_dict<M: Module>(model: &M) -> BTreeMap<String, HostTensor> {
    let mut c = Collector { path: Vec::new(), grads: None, out: BTreeMap::new() };
    model.visit(&mut c);
    c.out
}

/// The gradients `grads` holds for `model`'s parameters, by official key (parameters
/// without a gradient, such as frozen ones, are absent).
pub fn gradients<M: Module>(model: &M, grads: &Gradients) -> BTreeMap<String, HostTensor> {
    let mut c = Collector { path: Vec::new(), grads: Some(grads), out: BTreeMap::new() };
    model.visit(&mut c);
    c.out
}
