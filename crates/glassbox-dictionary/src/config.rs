use serde::{Deserialize, Serialize};

use crate::error::{DictError, Result};

/// How pre-activations become the sparse code.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Activation {
    /// ReLU, trained with an L1 penalty (weighted by decoder norms) of coefficient `l1`.
    Relu { l1: f32 },
    /// The k largest pre-activations per token (Gao et al. 2024).
    TopK { k: usize },
    /// The k·batch largest over a batch in training; at inference a threshold learned as the
    /// running mean of the batch's smallest kept value (Bussmann et al. 2024).
    BatchTopK { k: usize, threshold: f32 },
    /// Per-latent thresholds (the `threshold` tensor), trained with straight-through
    /// estimators of an L0 penalty of coefficient `l0` whose pseudo-derivative is a
    /// rectangle of width `bandwidth` (Rajamanoharan et al. 2024).
    JumpRelu {
        #[serde(default)]
        l0: f32,
        #[serde(default = "default_bandwidth")]
        bandwidth: f32,
    },
}

fn default_bandwidth() -> f32 {
    0.05
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictConfig {
    pub activation: Activation,
    pub d_in: usize,
    pub d_sae: usize,
    /// Model the activations came from, and the hook point the dictionary reads.
    pub model: String,
    pub hook: String,
    /// Transcoders: the hook point whose activations are reconstructed (same width as
    /// `hook`). `None` for a sparse autoencoder, which reconstructs its input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hook: Option<String>,
    /// Training only: inputs are multiplied by this so their mean norm is √d_in. Folded into
    /// the weights on save, so saved dictionaries take raw activations (scale 1).
    pub input_scale: f32,
    /// Training only: the same for the reconstructed activations (equal to `input_scale`
    /// for an SAE, whose b_dec also centres its input).
    #[serde(default = "one")]
    pub output_scale: f32,
}

impl DictConfig {
    /// An SAE with these settings reading `hook` of `model`, scale 1.
    pub fn sae(activation: Activation, d_in: usize, d_sae: usize, model: &str, hook: &str) -> Self {
        Self {
            activation,
            d_in,
            d_sae,
            model: model.into(),
            hook: hook.into(),
            target_hook: None,
            input_scale: 1.0,
            output_scale: 1.0,
        }
    }

    pub fn is_transcoder(&self) -> bool {
        self.target_hook.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if self.d_in == 0 || self.d_sae == 0 {
            return Err(DictError::Config(format!(
                "d_in ({}) and d_sae ({}) must be positive",
                self.d_in, self.d_sae
            )));
        }
        match self.activation {
            Activation::TopK { k } | Activation::BatchTopK { k, .. }
                if k == 0 || k > self.d_sae =>
            {
                Err(DictError::Config(format!(
                    "k = {k} must be in 1..={}",
                    self.d_sae
                )))
            }
            Activation::Relu { l1 } if !(l1.is_finite() && l1 >= 0.0) => {
                Err(DictError::Config(format!("l1 = {l1} must be ≥ 0")))
            }
            Activation::JumpRelu { l0, bandwidth }
                if !(l0.is_finite() && l0 >= 0.0 && bandwidth.is_finite() && bandwidth > 0.0) =>
            {
                Err(DictError::Config(format!(
                    "JumpReLU needs l0 ≥ 0 (got {l0}) and bandwidth > 0 (got {bandwidth})"
                )))
            }
            _ if ![self.input_scale, self.output_scale]
                .iter()
                .all(|s| s.is_finite() && *s > 0.0) =>
            {
                Err(DictError::Config(format!(
                    "input/output scales {}/{} must be positive",
                    self.input_scale, self.output_scale
                )))
            }
            _ if !self.is_transcoder() && self.input_scale != self.output_scale => Err(
                DictError::Config("an SAE's input and output scales must be equal".into()),
            ),
            _ => Ok(()),
        }
    }
}
