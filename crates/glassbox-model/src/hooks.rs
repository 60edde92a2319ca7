//! Hook points: named places in the forward pass where a tensor can be read or replaced.
//!
//! Names follow TransformerLens (`blocks.3.hook_resid_pre`, `blocks.3.attn.hook_pattern`, ...),
//! so analyses written against it read the same here. A [`Hooks`] value is passed to one
//! forward call and owns what that call records: hooks are scoped to the call by construction.
//! With no hook set, each hook point costs one branch on a bool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::fsutil::atomic_write_with;

/// A hook point inside block `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockHook {
    ResidPre,
    /// `[batch, pos, head, d_head]`
    AttnQ,
    /// `[batch, pos, kv_head, d_head]`
    AttnK,
    AttnV,
    /// q and k after rotary embedding (rotary models only).
    AttnRotQ,
    AttnRotK,
    /// `[batch, head, query_pos, key_pos]`, scaled and masked, before softmax.
    AttnScores,
    /// `[batch, head, query_pos, key_pos]`
    AttnPattern,
    /// Per-head attention output before W_O, `[batch, pos, head, d_head]`.
    AttnZ,
    AttnOut,
    /// resid_pre + attn_out (before the norm in post-norm models).
    ResidMid,
    /// MLP pre-activation (for gated MLPs, the gate's).
    MlpPre,
    /// Gated MLPs only: the linear ("up") branch.
    MlpPreLinear,
    /// MLP activation, `[batch, pos, d_mlp]`.
    MlpPost,
    MlpOut,
    ResidPost,
    /// Post-norm models only: the block's output after its final norm.
    NormalizedResidPost,
}

impl BlockHook {
    pub const ALL: [BlockHook; 17] = [
        Self::ResidPre,
        Self::AttnQ,
        Self::AttnK,
        Self::AttnV,
        Self::AttnRotQ,
        Self::AttnRotK,
        Self::AttnScores,
        Self::AttnPattern,
        Self::AttnZ,
        Self::AttnOut,
        Self::ResidMid,
        Self::MlpPre,
        Self::MlpPreLinear,
        Self::MlpPost,
        Self::MlpOut,
        Self::ResidPost,
        Self::NormalizedResidPost,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Self::ResidPre => "hook_resid_pre",
            Self::AttnQ => "attn.hook_q",
            Self::AttnK => "attn.hook_k",
            Self::AttnV => "attn.hook_v",
            Self::AttnRotQ => "attn.hook_rot_q",
            Self::AttnRotK => "attn.hook_rot_k",
            Self::AttnScores => "attn.hook_attn_scores",
            Self::AttnPattern => "attn.hook_pattern",
            Self::AttnZ => "attn.hook_z",
            Self::AttnOut => "hook_attn_out",
            Self::ResidMid => "hook_resid_mid",
            Self::MlpPre => "mlp.hook_pre",
            Self::MlpPreLinear => "mlp.hook_pre_linear",
            Self::MlpPost => "mlp.hook_post",
            Self::MlpOut => "hook_mlp_out",
            Self::ResidPost => "hook_resid_post",
            Self::NormalizedResidPost => "hook_normalized_resid_post",
        }
    }
}

/// Every hook point of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// Token embedding, `[batch, pos, d_model]`.
    Embed,
    /// Learned position embedding (absolute-position models only).
    PosEmbed,
    /// Segment embedding (BERT only).
    TokenTypeEmbed,
    Block(usize, BlockHook),
    /// Final norm output (decoders), `[batch, pos, d_model]`.
    FinalNorm,
    /// `[batch, pos, vocab]` (decoders).
    Logits,
}

impl HookPoint {
    pub fn block(layer: usize, hook: BlockHook) -> Self {
        Self::Block(layer, hook)
    }

    /// The block a point belongs to (`None` for embeddings, the final norm and logits).
    pub fn layer(&self) -> Option<usize> {
        match self {
            Self::Block(i, _) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embed => f.write_str("hook_embed"),
            Self::PosEmbed => f.write_str("hook_pos_embed"),
            Self::TokenTypeEmbed => f.write_str("hook_token_type_embed"),
            Self::Block(i, h) => write!(f, "blocks.{i}.{}", h.suffix()),
            Self::FinalNorm => f.write_str("ln_final.hook_normalized"),
            Self::Logits => f.write_str("hook_logits"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = ModelError;

    /// Parses a name; whether the model has that point is checked by the model.
    fn from_str(name: &str) -> Result<Self> {
        let unknown = |msg: &str| ModelError::UnknownHook {
            name: name.to_string(),
            msg: msg.to_string(),
        };
        match name {
            "hook_embed" => return Ok(Self::Embed),
            "hook_pos_embed" => return Ok(Self::PosEmbed),
            "hook_token_type_embed" => return Ok(Self::TokenTypeEmbed),
            "ln_final.hook_normalized" => return Ok(Self::FinalNorm),
            "hook_logits" => return Ok(Self::Logits),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.").ok_or_else(|| {
            unknown("names look like `hook_embed`, `blocks.0.hook_resid_pre` or `hook_logits`; `glassbox run MODEL --list-hooks` lists them")
        })?;
        let (layer, suffix) = rest
            .split_once('.')
            .ok_or_else(|| unknown("expected `blocks.<layer>.<hook>`"))?;
        let layer: usize = layer
            .parse()
            .map_err(|_| unknown("the layer must be a number, as in `blocks.0.hook_resid_pre`"))?;
        BlockHook::ALL
            .iter()
            .find(|h| h.suffix() == suffix)
            .map(|h| Self::Block(layer, *h))
            .ok_or_else(|| {
                let names: Vec<_> = BlockHook::ALL.iter().map(|h| h.suffix()).collect();
                unknown(&format!(
                    "`{suffix}` is not a block hook; one of: {}",
                    names.join(", ")
                ))
            })
    }
}

/// Activations recorded by one forward call, by hook point.
#[derive(Debug, Default, Clone)]
pub struct ActivationCache {
    tensors: BTreeMap<HookPoint, Tensor>,
}

impl ActivationCache {
    pub fn get(&self, point: &HookPoint) -> Option<&Tensor> {
        self.tensors.get(point)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HookPoint, &Tensor)> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn into_map(self) -> BTreeMap<HookPoint, Tensor> {
        self.tensors
    }

    /// Writes the whole cache for other tools: `.safetensors` (every tensor under its hook
    /// name) or `.npy` (one recorded hook). Atomic: no partial file is left on failure.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let io = |cause: std::io::Error| ModelError::Write {
            path: path.to_path_buf(),
            cause,
        };
        let candle_io = |e: candle_core::Error| std::io::Error::other(e.to_string());
        match ext {
            "safetensors" => {
                let named: HashMap<String, Tensor> = self
                    .tensors
                    .iter()
                    .map(|(p, t)| (p.to_string(), t.clone()))
                    .collect();
                atomic_write_with(path, |tmp| {
                    candle_core::safetensors::save(&named, tmp).map_err(candle_io)
                })
                .map_err(io)
            }
            "npy" => match self.tensors.values().collect::<Vec<_>>().as_slice() {
                [one] => {
                    atomic_write_with(path, |tmp| one.write_npy(tmp).map_err(candle_io)).map_err(io)
                }
                many => Err(ModelError::Input(format!(
                    "{}: a .npy file holds one array and {} hook points were recorded; \
                     record one, or save as .safetensors",
                    path.display(),
                    many.len()
                ))),
            },
            _ => Err(ModelError::Input(format!(
                "{}: activations are saved as .safetensors (any number of hooks) or .npy (one)",
                path.display()
            ))),
        }
    }
}

/// `*` wildcard match of a hook name against a pattern (TransformerLens's `names_filter` as a
/// string): `blocks.*.hook_resid_post` matches every block's residual stream.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name.ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Why an intervention failed: any error, kept whole so the caller can recover its own type
/// (the Python package gets its exception back) from [`ModelError::Intervention`].
pub type InterventionError = Box<dyn std::error::Error + Send + Sync>;

/// Something that rewrites the activation at a hook point during a forward pass: a patch, a
/// steering vector, a clamp, a Python function. It must return a tensor of the same shape.
pub trait Intervention {
    fn apply(
        &mut self,
        point: HookPoint,
        activation: &Tensor,
    ) -> std::result::Result<Tensor, InterventionError>;
}

/// A closure over tensor operations is an intervention (its errors are candle's).
struct TensorFn<F>(F);

impl<F: FnMut(&Tensor) -> candle_core::Result<Tensor>> Intervention for TensorFn<F> {
    fn apply(
        &mut self,
        _: HookPoint,
        activation: &Tensor,
    ) -> std::result::Result<Tensor, InterventionError> {
        Ok((self.0)(activation)?)
    }
}

/// An intervention borrowed for one forward pass: the caller keeps it and reads what it
/// gathered afterwards (a monitor's firings) without sharing it through a `RefCell`.
impl<T: Intervention + ?Sized> Intervention for &mut T {
    fn apply(
        &mut self,
        point: HookPoint,
        activation: &Tensor,
    ) -> std::result::Result<Tensor, InterventionError> {
        (**self).apply(point, activation)
    }
}

/// What one forward call should do at its hook points.
#[derive(Default)]
pub struct Hooks<'a> {
    record: HashSet<HookPoint>,
    /// The interventions attached, and which one (an index) acts at each point: one
    /// intervention may serve several points.
    interventions: Vec<Box<dyn Intervention + 'a>>,
    replace: HashMap<HookPoint, usize>,
    cache: ActivationCache,
    active: bool,
    stop_at: Option<HookPoint>,
    frozen: bool,
}

impl<'a> Hooks<'a> {
    /// No hooks: the forward pass runs its fused fast path.
    pub fn none() -> Self {
        Self::default()
    }

    /// Records the activation at `point` into the cache.
    pub fn record(mut self, point: HookPoint) -> Self {
        self.record.insert(point);
        self.active = true;
        self
    }

    pub fn record_all(mut self, points: impl IntoIterator<Item = HookPoint>) -> Self {
        for p in points {
            self = self.record(p);
        }
        self
    }

    /// Replaces the activation at `point` with `f(activation)`; the shape must stay the same.
    /// Recording at the same point sees the replaced value.
    pub fn replace(
        self,
        point: HookPoint,
        f: impl FnMut(&Tensor) -> candle_core::Result<Tensor> + 'a,
    ) -> Self {
        self.intervene(point, TensorFn(f))
    }

    /// Attaches an [`Intervention`] at `point` (as [`Hooks::replace`], for interventions with
    /// their own error type; a failure ends the forward pass with
    /// [`ModelError::Intervention`] holding that error).
    pub fn intervene(self, point: HookPoint, intervention: impl Intervention + 'a) -> Self {
        self.intervene_at([point], intervention)
    }

    /// Attaches one [`Intervention`] at every point of `points`: it is called at each in
    /// forward order and is told which point it is at, so state it keeps across them (a
    /// request's monitors) needs no sharing. Pass `&mut x` to read `x` after the pass.
    pub fn intervene_at(
        mut self,
        points: impl IntoIterator<Item = HookPoint>,
        intervention: impl Intervention + 'a,
    ) -> Self {
        let index = self.interventions.len();
        self.interventions.push(Box::new(intervention));
        for point in points {
            self.replace.insert(point, index);
        }
        self.active = true;
        self
    }

    /// Replaces the activation at `point` with a fixed tensor (activation patching).
    pub fn patch(self, point: HookPoint, value: Tensor) -> Self {
        self.replace(point, move |_| Ok(value.clone()))
    }

    /// Ends the forward pass once the block holding `point` has produced it: at a block's
    /// `hook_resid_pre` before the block runs, at any other block hook after the block.
    /// The output then has no logits. Harvesting an early layer need not run the rest.
    pub fn stop_at(mut self, point: HookPoint) -> Self {
        self.stop_at = Some(point);
        self
    }

    /// Freezes attention patterns and norm scales for gradients: the forward values are the
    /// same, but backpropagation treats them as constants, so the path from one activation to
    /// another is linear apart from the MLPs (attribution graphs, TransformerLens-style
    /// direct effects).
    pub fn freeze_attention_and_norms(mut self) -> Self {
        self.frozen = true;
        self.active = true;
        self
    }

    pub fn frozen(&self) -> bool {
        self.frozen
    }

    pub fn stop_point(&self) -> Option<HookPoint> {
        self.stop_at
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Whether anything is attached at `point` (the forward pass may then take a slower,
    /// fully materialised path to expose it).
    pub fn wants(&self, point: HookPoint) -> bool {
        self.active && (self.record.contains(&point) || self.replace.contains_key(&point))
    }

    /// Whether a replacement is attached at `point`.
    pub fn replaces(&self, point: HookPoint) -> bool {
        self.active && self.replace.contains_key(&point)
    }

    /// Called by the forward pass at every hook point.
    #[inline]
    pub fn at(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        if !self.active {
            return Ok(t);
        }
        self.apply(point, t)
    }

    fn apply(&mut self, point: HookPoint, t: Tensor) -> Result<Tensor> {
        let t = match self.replace.get(&point) {
            Some(&i) => {
                let new = self.interventions[i].apply(point, &t).map_err(|source| {
                    ModelError::Intervention {
                        hook: point.to_string(),
                        source,
                    }
                })?;
                if new.dims() != t.dims() {
                    return Err(ModelError::HookShape {
                        hook: point.to_string(),
                        got: new.dims().to_vec(),
                        expected: t.dims().to_vec(),
                    });
                }
                new.to_dtype(t.dtype())?.to_device(t.device())?
            }
            None => t,
        };
        if self.record.contains(&point) {
            self.cache.tensors.insert(point, t.clone());
        }
        Ok(t)
    }

    /// The recorded activations.
    pub fn into_cache(self) -> ActivationCache {
        self.cache
    }

    pub fn cache(&self) -> &ActivationCache {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in BlockHook::ALL {
            let p = HookPoint::block(7, h);
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        for p in [
            HookPoint::Embed,
            HookPoint::PosEmbed,
            HookPoint::FinalNorm,
            HookPoint::Logits,
        ] {
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        assert_eq!(
            "blocks.5.attn.hook_pattern".parse::<HookPoint>().unwrap(),
            HookPoint::block(5, BlockHook::AttnPattern)
        );
    }

    #[test]
    fn bad_names_explain() {
        for bad in [
            "blocks.x.hook_resid_pre",
            "blocks.1.hook_nope",
            "resid",
            "blocks.1",
        ] {
            let err = bad.parse::<HookPoint>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn name_patterns() {
        assert!(name_matches(
            "blocks.*.hook_resid_post",
            "blocks.10.hook_resid_post"
        ));
        assert!(!name_matches(
            "blocks.*.hook_resid_post",
            "blocks.1.hook_resid_pre"
        ));
        assert!(name_matches("*pattern", "blocks.0.attn.hook_pattern"));
        assert!(name_matches("blocks.1.*", "blocks.1.mlp.hook_post"));
        assert!(!name_matches("a*b*c", "acb"));
        assert!(name_matches("hook_embed", "hook_embed"));
    }

    #[test]
    fn intervention_errors_keep_their_type() {
        #[derive(Debug)]
        struct Refused;
        impl fmt::Display for Refused {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("refused")
            }
        }
        impl std::error::Error for Refused {}
        struct Refuse;
        impl Intervention for Refuse {
            fn apply(
                &mut self,
                _: HookPoint,
                _: &Tensor,
            ) -> std::result::Result<Tensor, InterventionError> {
                Err(Box::new(Refused))
            }
        }
        let t = Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let mut hooks = Hooks::none().intervene(HookPoint::Embed, Refuse);
        match hooks.at(HookPoint::Embed, t) {
            Err(ModelError::Intervention { hook, source }) => {
                assert_eq!(hook, "hook_embed");
                assert!(source.downcast_ref::<Refused>().is_some());
            }
            other => panic!("expected an intervention error, got {:?}", other.err()),
        }
    }

    #[test]
    fn replace_checks_shape() {
        let t = Tensor::zeros((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let p = HookPoint::Embed;
        let mut hooks = Hooks::none().replace(p, |x| x.narrow(1, 0, 2));
        assert!(matches!(hooks.at(p, t), Err(ModelError::HookShape { .. })));
    }
}
