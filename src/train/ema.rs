//! Exponential moving average of the weights, kept in f32 on the base (non-autodiff) device:
//! `ema ← d·ema + (1 − d)·θ` after every optimizer step, for the parameters that train (a
//! frozen parameter's average stays exactly equal to it instead of drifting by rounding).

use std::collections::HashMap;

use burn::module::{Module, ParamId};
use burn::tensor::Tensor;

use crate::weights::export::{KeyedMapper, map_params, params};

/// The trainable parameters of `model` (on its inner device), by official key, flattened.
fn live_params<M: Module>(model: &M) -> HashMap<String, Tensor<1>> {
    params(model, None).into_iter().filter(|p| p.require_grad).map(|p| (p.key, p.value.inner())).collect()
}

/// Moves `ema` (a non-autodiff copy of `model`'s network) towards `model`, parameter by
/// parameter (matched by official key).
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    struct Lerp {
        live: HashMap<String, Tensor<1>>,
        decay: f64,
    }
    impl KeyedMapper for Lerp {
        fn map<const D: usize>(&mut self, key: &str, _id: ParamId, value: Tensor<D>) -> Tensor<D> {
            match self.live.remove(key) {
                Some(live) => {
                    // The reshape first: a fusing backend runs it as a shape change before the
                    // three arithmetic operations, which then make one kernel; after the first
                    // of them, it would end the fused block and leave that one alone (a launch
                    // more per parameter).
                    let live = live.reshape(value.dims());
                    live * (1.0 - self.decay) + value * self.decay
                }
                None => value,
            }
        }
    }
    map_params(ema, &mut Lerp { live: live_params(model), decay })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Prdit, PrditConfig};
    use crate::weights::export::state_dict;
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::Device;

    #[test]
    fn decay_zero_copies_and_half_averages_trainable_only() {
        let device = Device::flex().autodiff();
        let cfg = PrditConfig { depth: 1, ..PrditConfig::tiny() };
        let a = Prdit::init(&cfg, 1, &device).unwrap().freeze_stage1();
        let ema = a.valid();
        // A model with other values under the same parameter ids.
        let b = a.clone().map(&mut Shift);
        let copied = state_dict(&ema_update(ema.clone(), &b, 0.0)).unwrap();
        let averaged = state_dict(&ema_update(ema.clone(), &b, 0.5)).unwrap();
        let (sa, sb) = (state_dict(&a).unwrap(), state_dict(&b).unwrap());
        let key = "fine.blocks.0.attn.qkv.bias";
        assert_eq!(copied[key], sb[key]);
        let want: Vec<f32> = sa[key].data.iter().zip(&sb[key].data).map(|(x, y)| 0.5 * x + 0.5 * y).collect();
        assert_eq!(averaged[key].data, want);
        // Frozen stage 1: untouched.
        let frozen = "coarse.mlp_denoise.mlp1.fc1_g.bias";
        assert_eq!(copied[frozen], sa[frozen]);
    }

    struct Shift;
    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, t, mapper) = param.consume();
            let require = t.is_require_grad();
            let mut t = Tensor::from_inner(t.inner() + 1.0);
            if require {
                t = t.require_grad();
            }
            Param::from_mapped_value(id, t, mapper)
        }
    }
}
