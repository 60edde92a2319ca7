//! Whether a dictionary fits where it is used: a model's hook (monitors, catalogs, graphs,
//! splicing) or a store of harvested rows (evaluation). Every surface asks here, so a
//! dictionary from another model or hook is refused with the same message everywhere.

use glassbox_model::{HookPoint, Model};

use crate::error::{DictError, Result};
use crate::sae::Sae;
use crate::sweep::SourceInfo;

/// What the dictionary is used for at the model's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Encode the hook's rows (monitors, evaluation, splicing).
    Read,
    /// Also read its decoder directions in the residual stream's space (vocabulary effects
    /// through the unembedding, as catalogs do).
    Vocabulary,
    /// Replace the hook's value by the reconstruction inside the forward pass (attribution
    /// graphs): an SAE, whose output is its own hook.
    Replace,
}

impl Sae {
    /// The hook point this dictionary reads in `model`, once it is known to fit there for
    /// `purpose`: the hook exists, its rows are `d_in` wide, and a transcoder's target hook
    /// exists and is as wide as its output.
    pub fn hook_in(&self, model: &Model, purpose: Use) -> Result<HookPoint> {
        let cfg = &self.cfg;
        let point = model.reader_at(&cfg.hook, self.d_in(), "the dictionary")?;
        if let Some(target) = &cfg.target_hook {
            if purpose == Use::Replace {
                return Err(DictError::Config(format!(
                    "the dictionary at {} is a transcoder (it reconstructs {target}); this \
                     needs an SAE, which reconstructs its own hook",
                    cfg.hook
                )));
            }
            model.reader_at(target, self.d_in(), "the transcoder's output")?;
        }
        let d_model = model.config.d_model;
        if purpose == Use::Vocabulary && self.d_in() != d_model {
            return Err(DictError::Config(format!(
                "the dictionary at {} writes {}-dimensional directions; vocabulary effects need \
                 the residual stream's {d_model}",
                cfg.hook,
                self.d_in()
            )));
        }
        Ok(point)
    }

    /// Checks that this dictionary reads what `source` holds: the same width and hook, and
    /// for a transcoder the same target hook.
    pub fn check_source(&self, source: &SourceInfo) -> Result<()> {
        let (cfg, at) = (&self.cfg, &source.origin);
        if self.d_in() != source.d_in {
            return Err(DictError::Config(format!(
                "the dictionary reads {} dimensions but {at} holds {}-dimensional activations \
                 of {}",
                self.d_in(),
                source.d_in,
                source.hook
            )));
        }
        if !cfg.hook.is_empty() && cfg.hook != source.hook {
            return Err(DictError::Config(format!(
                "the dictionary was trained on {} but {at} holds {}",
                cfg.hook, source.hook
            )));
        }
        if cfg.target_hook.is_some() && cfg.target_hook != source.target_hook {
            return Err(DictError::Config(format!(
                "the transcoder reconstructs {} but {at} holds targets of {}; harvest with \
                 --target-hook",
                cfg.target_hook.as_deref().unwrap_or_default(),
                source.target_hook.as_deref().unwrap_or("no hook")
            )));
        }
        Ok(())
    }
}
