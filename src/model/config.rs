//! Model configuration: the official name grammar `PRDiT-{SIZE}/{P}/{L}`, explicit fields for
//! any other patch/stride/padding, validation with reasons, and closed-form sizes
//! (spec §1.1–§1.4).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Transformer widths of the named sizes: (letter, hidden size H, heads).
pub const SIZES: [(&str, usize, usize); 5] =
    [("XS", 192, 6), ("S", 384, 6), ("B", 768, 12), ("L", 1024, 16), ("XL", 1152, 16)];

/// Everything that fixes the PRDiT network's shapes. Serialised into checkpoints and run
/// files; two models with equal configs have identical parameter shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrditConfig {
    /// Volume edge S (volumes are S³).
    pub input_size: usize,
    /// Input channels C (1 for CT).
    #[serde(default = "one")]
    pub in_channels: usize,
    /// Output channels per voxel: 2 = (noise, image), the IaN parameterisation; 1 = the
    /// velocity of flow matching (PRDiT-FM). It decides the process ([`Self::process`]).
    #[serde(default = "two")]
    pub out_channels: usize,
    /// Extraction window edge P (the `12` in `PRDiT-B/12/4`).
    pub patch_size: usize,
    /// Window stride s, which is also the output patch edge.
    pub stride: usize,
    /// Reflect padding p on each side of each axis.
    pub padding: usize,
    /// Transformer hidden size H (also the timestep trunk width).
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Transformer blocks L; 0 is the stage-1 model (local denoiser only).
    pub depth: usize,
    /// Hidden width of the transformer MLP as a multiple of H.
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    /// Width of the sinusoidal timestep features.
    #[serde(default = "freq")]
    pub frequency_size: usize,
}

/// Input channels unless given (CT: 1).
pub const DEFAULT_IN_CHANNELS: usize = 1;
/// Output channels: (noise, image), the IaN parameterisation.
pub const OUT_CHANNELS: usize = 2;
/// Transformer MLP width as a multiple of H unless given (official: 4).
pub const DEFAULT_MLP_RATIO: f64 = 4.0;
/// Width of the sinusoidal timestep features unless given (official: 256).
pub const DEFAULT_FREQUENCY_SIZE: usize = 256;

fn one() -> usize {
    DEFAULT_IN_CHANNELS
}
fn two() -> usize {
    OUT_CHANNELS
}
fn four() -> f64 {
    DEFAULT_MLP_RATIO
}
fn freq() -> usize {
    DEFAULT_FREQUENCY_SIZE
}

/// Hidden width of the patch embedder's MLP as a multiple of H (fixed, spec §5.1).
pub const PATCH_EMBED_RATIO: usize = 4;

impl PrditConfig {
    /// Parses an official model name, e.g. `PRDiT-B/12/4`, for volumes of edge `input_size`.
    ///
    /// `P` is the extraction window; stride is 8 and padding `(P - 8) / 2`, except the
    /// official special name `PRDiT-XS/4/0` (4³ tiles, stride 4, no padding). The result is
    /// validated, so an unusable combination (an `L` size with depth > 0, a grid that does not
    /// tile the volume) is an error that says why.
    pub fn from_name(name: &str, input_size: usize) -> Result<Self> {
        let bad = |reason: String| Error::ModelName { name: name.to_string(), reason };
        let rest = match name.strip_prefix("PRDiT-") {
            Some(rest) => rest,
            None if name.starts_with("DiT-") => {
                return Err(bad("`DiT-*` names are TF-PRDiT's network variant (RMSNorm in \
                     the local denoiser and DiT blocks), which prdit does not implement"
                    .into()));
            }
            None => return Err(bad("expected `PRDiT-{XS,S,B,L,XL}/{P}/{L}`".into())),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [size, patch, depth] = parts[..] else {
            return Err(bad("expected three fields `SIZE/P/L`, e.g. `PRDiT-B/12/4`".into()));
        };
        let (_, hidden_size, num_heads) = SIZES
            .iter()
            .copied()
            .find(|(s, ..)| *s == size)
            .ok_or_else(|| bad(format!("size `{size}` is not one of XS, S, B, L, XL")))?;
        let patch_size: usize = patch.parse().map_err(|_| bad(format!("patch `{patch}` is not a number")))?;
        let depth: usize = depth.parse().map_err(|_| bad(format!("depth `{depth}` is not a number")))?;
        let (stride, padding) = if (size, patch_size) == ("XS", 4) && depth == 0 {
            (4, 0)
        } else if patch_size >= 8 {
            (8, (patch_size - 8) / 2)
        } else {
            return Err(bad(format!(
                "patch {patch_size} is smaller than the stride 8 of the standard names \
                 (the only small official name is PRDiT-XS/4/0)"
            )));
        };
        let cfg = PrditConfig {
            input_size,
            in_channels: DEFAULT_IN_CHANNELS,
            out_channels: OUT_CHANNELS,
            patch_size,
            stride,
            padding,
            hidden_size,
            num_heads,
            depth,
            mlp_ratio: DEFAULT_MLP_RATIO,
            frequency_size: DEFAULT_FREQUENCY_SIZE,
        };
        // The name is fine; the volume size (or the depth of an `L` name) is what does not fit.
        cfg.validate().map_err(|e| {
            Error::invalid("size", format!("{name} does not fit volumes of {input_size}³: {e}"))
        })?;
        Ok(cfg)
    }

    /// A small network with every code path of PRDiT (both stages, overlapping reflect-padded
    /// windows) for tests: 16³ volumes, XS width, 4³ windows at stride 2 with padding 1, two
    /// blocks — the shapes of the official parity fixture and `configs/tiny-model.toml`.
    pub fn tiny() -> Self {
        PrditConfig {
            input_size: 16,
            in_channels: DEFAULT_IN_CHANNELS,
            out_channels: OUT_CHANNELS,
            patch_size: 4,
            stride: 2,
            padding: 1,
            hidden_size: 192,
            num_heads: 6,
            depth: 2,
            mlp_ratio: DEFAULT_MLP_RATIO,
            frequency_size: DEFAULT_FREQUENCY_SIZE,
        }
    }

    /// The paper's LIDC model, `PRDiT-B/12/4` at 128³ (its stage 1 is `depth: 0`).
    pub fn paper_lidc() -> Self {
        Self::from_name("PRDiT-B/12/4", 128).expect("the paper's configuration is valid")
    }

    /// The paper's RAD-ChestCT model, `PRDiT-XL/12/4` at 128³.
    pub fn paper_rad_chestct() -> Self {
        Self::from_name("PRDiT-XL/12/4", 128).expect("the paper's configuration is valid")
    }

    /// The official name when the fields match the standard grammar, else a descriptive one.
    pub fn name(&self) -> String {
        let size =
            SIZES.iter().find(|(_, h, n)| *h == self.hidden_size && *n == self.num_heads).map(|(s, ..)| *s);
        let standard = self.in_channels == 1
            && matches!(self.out_channels, 1 | 2)
            && self.mlp_ratio == 4.0
            && self.frequency_size == 256
            && ((self.stride == 8 && self.patch_size >= 8 && self.padding == (self.patch_size - 8) / 2)
                || (self.patch_size, self.stride, self.padding, self.depth) == (4, 4, 0, 0));
        match size {
            Some(size) if standard => format!("PRDiT-{size}/{}/{}", self.patch_size, self.depth),
            _ => format!(
                "PRDiT(H={}, heads={}, P={}, s={}, p={}, L={})",
                self.hidden_size, self.num_heads, self.patch_size, self.stride, self.padding, self.depth
            ),
        }
    }

    /// The generative process this network is for (from its output channels).
    pub fn process(&self) -> crate::diffusion::Process {
        crate::diffusion::Process::of_channels(self.out_channels).unwrap_or_default()
    }

    /// Checks every invariant the forward pass relies on; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("input_size", self.input_size),
            ("in_channels", self.in_channels),
            ("patch_size", self.patch_size),
            ("stride", self.stride),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("frequency_size", self.frequency_size),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::invalid(key, "must be at least 1"));
            }
        }
        crate::diffusion::Process::of_channels(self.out_channels)?;
        if !self.frequency_size.is_multiple_of(2) {
            return Err(Error::invalid("frequency_size", "must be even (cos and sin halves)"));
        }
        let s = self.input_size;
        if !s.is_multiple_of(self.stride) {
            return Err(Error::invalid(
                "input_size",
                format!("{s} is not a multiple of the stride {}", self.stride),
            ));
        }
        if self.padding >= s {
            return Err(Error::invalid(
                "padding",
                format!("reflect padding {} needs a volume edge larger than it (is {s})", self.padding),
            ));
        }
        if s + 2 * self.padding < self.patch_size {
            return Err(Error::invalid(
                "patch_size",
                format!(
                    "window {} does not fit the padded volume edge {}",
                    self.patch_size,
                    s + 2 * self.padding
                ),
            ));
        }
        let windows = (s + 2 * self.padding - self.patch_size) / self.stride + 1;
        if windows != s / self.stride {
            return Err(Error::invalid(
                "patch_size",
                format!(
                    "window {} with stride {} and padding {} gives {windows} windows per axis, \
                     but the output grid has {} (= input_size / stride); the official code fails \
                     on this combination too",
                    self.patch_size,
                    self.stride,
                    self.padding,
                    s / self.stride
                ),
            ));
        }
        if self.depth > 0 {
            if !self.hidden_size.is_multiple_of(self.num_heads) {
                return Err(Error::invalid(
                    "num_heads",
                    format!("hidden size {} is not divisible by {} heads", self.hidden_size, self.num_heads),
                ));
            }
            if !self.hidden_size.is_multiple_of(6) {
                return Err(Error::invalid(
                    "hidden_size",
                    format!(
                        "{} is not divisible by 6: the fixed 3D sin-cos position code has six \
                         equal blocks (sin and cos per axis); this is why PRDiT-L sizes only \
                         exist with depth 0",
                        self.hidden_size
                    ),
                ));
            }
            let hidden = self.hidden_size as f64 * self.mlp_ratio;
            if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 || hidden.fract() != 0.0 {
                return Err(Error::invalid(
                    "mlp_ratio",
                    format!(
                        "{} × hidden size {} must be a positive whole number",
                        self.mlp_ratio, self.hidden_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Token width D = C·P³ (also the local denoiser's width).
    pub fn token_dim(&self) -> usize {
        self.in_channels * self.patch_size.pow(3)
    }

    /// Outputs per token O = s³·C_out.
    pub fn out_dim(&self) -> usize {
        self.out_channels * self.stride.pow(3)
    }

    /// Tokens per axis g = S / s.
    pub fn grid(&self) -> usize {
        self.input_size / self.stride
    }

    /// Token count N = g³.
    pub fn num_tokens(&self) -> usize {
        self.grid().pow(3)
    }

    /// Hidden width of the transformer MLP.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// The same network for volumes of another edge (e.g. the base of a refinement model).
    pub fn with_input_size(&self, input_size: usize) -> Self {
        PrditConfig { input_size, ..self.clone() }
    }

    /// Parameter counts from the closed forms of spec §1.4.
    pub fn param_counts(&self) -> ParamCounts {
        let (f, h, d, o) = (self.frequency_size, self.hidden_size, self.token_dim(), self.out_dim());
        let deep = self.depth > 0;
        let trunk = f * h + h;
        let coarse_head = h * d + d;
        let fine_head = if deep { h * h + h } else { 0 };
        let coarse = 2 * (3 * d * d + 5 * d) + 6 * d * d + 6 * d + o * d + o;
        let fine = if deep {
            let m = self.mlp_hidden();
            let pe = PATCH_EMBED_RATIO * h;
            let patch_embed = pe * d + pe + pe * h + h + h * d + 2 * h;
            let block = (3 * h * h + 3 * h) + (h * h + h) + (m * h + m) + (m * h + h) + (6 * h * h + 6 * h);
            let final_layer = o * h + o + 2 * h * h + 2 * h;
            patch_embed + self.depth * block + final_layer
        } else {
            0
        };
        ParamCounts {
            timestep_embedder: trunk + coarse_head + fine_head,
            coarse,
            fine,
            stage1: trunk + coarse_head + coarse,
            stage2_trainable: fine + fine_head,
        }
    }
}

/// Parameter counts of a configuration, by part and by training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Shared trunk, coarse head and (depth > 0) fine head.
    pub timestep_embedder: usize,
    /// The local MLP denoiser (stage 1).
    pub coarse: usize,
    /// The global residual DiT (stage 2).
    pub fine: usize,
    /// Everything stage 1 trains (and stage 2 freezes): trunk, coarse head, coarse branch.
    pub stage1: usize,
    /// What stage 2 trains: the fine branch and the fine head.
    pub stage2_trainable: usize,
}

impl ParamCounts {
    /// All parameters.
    pub fn total(&self) -> usize {
        self.timestep_embedder + self.coarse + self.fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parameter_table() {
        // spec §1.4: (name, t-emb, coarse, fine, total, trainable in its stage)
        let rows = [
            ("PRDiT-XS/12/0", 382_848, 37_629_952, 0, 38_012_800, 38_012_800),
            ("PRDiT-XS/12/4", 419_904, 37_629_952, 4_745_152, 42_795_008, 4_782_208),
            ("PRDiT-S/12/1", 911_808, 37_629_952, 7_260_160, 45_801_920, 7_408_000),
            ("PRDiT-S/12/4", 911_808, 37_629_952, 15_240_064, 53_781_824, 15_387_904),
            ("PRDiT-B/12/0", 1_526_208, 37_629_952, 0, 39_156_160, 39_156_160),
            ("PRDiT-B/12/4", 2_116_800, 37_629_952, 53_482_240, 93_228_992, 54_072_832),
            ("PRDiT-B/12/8", 2_116_800, 37_629_952, 95_995_648, 135_742_400, 96_586_240),
            ("PRDiT-B/12/12", 2_116_800, 37_629_952, 138_509_056, 178_255_808, 139_099_648),
            ("PRDiT-XL/12/0", 2_288_448, 37_629_952, 0, 39_918_400, 39_918_400),
            ("PRDiT-XL/12/4", 3_616_704, 37_629_952, 114_727_552, 155_974_208, 116_055_808),
            ("PRDiT-XL/12/8", 3_616_704, 37_629_952, 210_348_160, 251_594_816, 211_676_416),
            ("PRDiT-XL/12/12", 3_616_704, 37_629_952, 305_968_768, 347_215_424, 307_297_024),
        ];
        for (name, temb, coarse, fine, total, trainable) in rows {
            let c = PrditConfig::from_name(name, 128).unwrap().param_counts();
            assert_eq!(c.timestep_embedder, temb, "{name} t-emb");
            assert_eq!(c.coarse, coarse, "{name} coarse");
            assert_eq!(c.fine, fine, "{name} fine");
            assert_eq!(c.total(), total, "{name} total");
            let in_stage = if fine == 0 { c.stage1 } else { c.stage2_trainable };
            assert_eq!(in_stage, trainable, "{name} trainable");
        }
    }

    #[test]
    fn coarse_sizes_by_patch() {
        // spec §1.2: coarse (stage-1 MLP) params for P = 10, 12, 14, 16.
        for (p, n) in [(10, 13_041_024), (12, 37_629_952), (14, 93_209_216), (16, 205_587_456)] {
            let c = PrditConfig::from_name(&format!("PRDiT-B/{p}/0"), 128).unwrap();
            assert_eq!(c.param_counts().coarse, n, "P={p}");
            assert_eq!(c.padding, (p - 8) / 2);
        }
    }

    #[test]
    fn presets_are_valid_and_match_their_files() {
        let tiny = PrditConfig::tiny();
        tiny.validate().unwrap();
        let path = crate::config::repo_file("configs/tiny-model.toml");
        let file: PrditConfig = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(file, tiny);
        assert_eq!(PrditConfig::paper_lidc().name(), "PRDiT-B/12/4");
        assert_eq!(PrditConfig::paper_rad_chestct().name(), "PRDiT-XL/12/4");
        assert_eq!(PrditConfig::paper_lidc().input_size, 128);
    }

    #[test]
    fn token_counts() {
        // spec §1.3
        for (s, g, n) in [(64, 8, 512), (128, 16, 4096), (256, 32, 32_768)] {
            let c = PrditConfig::from_name("PRDiT-B/12/4", s).unwrap();
            assert_eq!((c.grid(), c.num_tokens(), c.token_dim()), (g, n, 1728));
        }
    }

    #[test]
    fn grammar_and_rejections() {
        let c = PrditConfig::from_name("PRDiT-XS/4/0", 16).unwrap();
        assert_eq!((c.patch_size, c.stride, c.padding), (4, 4, 0));
        assert_eq!(c.name(), "PRDiT-XS/4/0");
        assert_eq!(PrditConfig::from_name("PRDiT-B/12/4", 128).unwrap().name(), "PRDiT-B/12/4");
        // L with depth > 0: the position code needs H % 6 == 0.
        let e = PrditConfig::from_name("PRDiT-L/12/4", 128).unwrap_err().to_string();
        assert!(e.contains("divisible by 6"), "{e}");
        assert!(PrditConfig::from_name("PRDiT-L/12/0", 128).is_ok());
        // The broken official name PRDiT-XS/4/1 (4³ windows, stride 2, no padding): the
        // extraction gives 7 windows per axis at 16³, the output grid needs 8.
        let e = PrditConfig::from_name("PRDiT-XS/4/1", 16).unwrap_err().to_string();
        assert!(e.contains("patch"), "{e}");
        let xs41 = PrditConfig { stride: 2, depth: 1, ..PrditConfig::from_name("PRDiT-XS/4/0", 16).unwrap() };
        let e = xs41.validate().unwrap_err().to_string();
        assert!(e.contains("gives 7 windows per axis") && e.contains("has 8"), "{e}");
        for bad in ["PRDiT-M/12/4", "PRDiT-B/12", "PRDiT-B/x/4", "DiT-B/12/12", "B/12/4"] {
            assert!(PrditConfig::from_name(bad, 128).is_err(), "{bad}");
        }
        assert!(PrditConfig::from_name("PRDiT-B/12/4", 100).is_err());
    }
}
