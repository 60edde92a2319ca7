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
    /// Per-latent thresholds (`threshold` tensor); inference only here.
    JumpRelu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictConfig {
    pub activation: Activation,
    pub d_in: usize,
    pub d_sae: usize,
    /// Model the activations came from, and its hook point.
    pub model: String,
    pub hook: String,
    /// Training only: inputs are multiplied by this so their mean norm is √d_in. Folded into
    /// the weights on save, so saved dictionaries take raw activations (scale 1).
    pub input_scale: f32,
}

impl DictConfig {
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
            _ if !(self.input_scale.is_finite() && self.input_scale > 0.0) => Err(
                DictError::Config(format!("input scale {} must be positive", self.input_scale)),
            ),
            _ => Ok(()),
        }
    }
}
