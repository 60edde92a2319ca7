//! Reading hook activations over a text's own tokens, as the probe commands and the Python
//! package's `Model.read_whole` read them.
//!
//! A text longer than one forward pass is either cut to its first pass (`--truncate`) or read
//! whole, pass by pass: each later pass starts a quarter of a pass before the last one ended,
//! so every kept token sees at least that much left context. Cutting silently is how a buried
//! injection at the end of a long document goes unread (and, in training, how the document's
//! benign opening gets labelled an attack).

use crate::{BlockHook, HookPoint, Hooks, Model, ModelError, Result};

/// Reads hooks' activations over a text's own tokens (the model's special tokens are run but
/// not returned), in forward passes of at most `pass` content tokens.
pub struct Reader<'m> {
    model: &'m Model,
    /// In forward order; the pass stops at the last.
    hooks: Vec<HookPoint>,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// Content tokens per forward pass.
    pass: usize,
    /// Whether a longer text is read whole (in overlapping passes) or cut to one pass.
    whole: bool,
}

impl<'m> Reader<'m> {
    pub fn new(model: &'m Model, hook: &str) -> Result<Self> {
        Self::with_hooks(model, &[hook])
    }

    /// A reader of several hooks in one pass (results in the order given). It reads whole
    /// texts in passes of the model's context until [`Self::passes`] says otherwise.
    pub fn with_hooks(model: &'m Model, hooks: &[&str]) -> Result<Self> {
        let hooks = hooks
            .iter()
            .map(|h| model.hook_point(h))
            .collect::<Result<Vec<_>>>()?;
        Self::of_points(model, hooks)
    }

    /// [`Self::with_hooks`] of hook points already resolved. Each must hold a row per token:
    /// the attention scores and pattern (`[batch, head, query, key]`) are refused.
    pub fn of_points(model: &'m Model, hooks: Vec<HookPoint>) -> Result<Self> {
        let (prefix, suffix) = model.tokenizer.special_affixes()?;
        if hooks.is_empty() {
            return Err(ModelError::Input(
                "no hook to read: name at least one".into(),
            ));
        }
        if let Some(h) = hooks.iter().find(|h| {
            matches!(
                h,
                HookPoint::Block(_, BlockHook::AttnScores | BlockHook::AttnPattern)
            )
        }) {
            return Err(ModelError::Input(format!(
                "hook {h} holds [batch, head, query, key], not a row per token: read a \
                 per-token hook (hook_z, hook_attn_out, a residual stream) instead"
            )));
        }
        let context = model
            .config
            .max_positions
            .saturating_sub(prefix.len() + suffix.len());
        if context == 0 {
            return Err(ModelError::Input(
                "the model's context holds no tokens besides its special ones".into(),
            ));
        }
        Ok(Self {
            hooks,
            model,
            prefix,
            suffix,
            pass: context,
            whole: true,
        })
    }

    /// Passes of at most `tokens` content tokens (default and ceiling: the model's context);
    /// `truncate` keeps only a long text's first pass.
    pub fn passes(mut self, tokens: Option<usize>, truncate: bool) -> Self {
        if let Some(t) = tokens {
            self.pass = t.clamp(1, self.pass);
        }
        self.whole = !truncate;
        self
    }

    /// The first hook's `[tokens, d_model]`, flattened.
    pub fn activations(&self, text: &str) -> Result<Vec<f32>> {
        let mut all = self.activations_all(text)?;
        Ok(all.swap_remove(0))
    }

    /// Per token read, whether it overlaps `span` (bytes).
    pub fn span_labels(&self, text: &str, span: (usize, usize)) -> Result<Vec<bool>> {
        let (_, offsets) = self.model.tokenizer.encode_plain_offsets(text)?;
        let n = self.tokens_read(offsets.len());
        Ok(offsets[..n]
            .iter()
            .map(|&(s, e)| s < span.1 && e > span.0)
            .collect())
    }

    /// How many of `n` content tokens are read.
    fn tokens_read(&self, n: usize) -> usize {
        passes(n, self.pass, self.whole).last().map_or(0, |p| p.end)
    }

    /// Every hook's `[tokens, d_model]`, flattened, in the order the hooks were given.
    pub fn activations_all(&self, text: &str) -> Result<Vec<Vec<f32>>> {
        Ok(self.read(text)?.1)
    }

    /// How many of `text`'s tokens are read (its own, without the special ones: all of them,
    /// or the first pass's when reading truncates), and [`Self::activations_all`].
    pub fn read(&self, text: &str) -> Result<(usize, Vec<Vec<f32>>)> {
        let content = self.model.tokenizer.encode_plain(text)?;
        if content.is_empty() {
            return Err(ModelError::Input("the text has no tokens".into()));
        }
        let order = self.model.hook_points();
        let last = self
            .hooks
            .iter()
            .copied()
            .max_by_key(|h| order.iter().position(|p| p == h))
            .ok_or_else(|| ModelError::Input("no hook to read".into()))?;
        let mut out = vec![Vec::new(); self.hooks.len()];
        for p in passes(content.len(), self.pass, self.whole) {
            let ids = [
                self.prefix.as_slice(),
                &content[p.start..p.end],
                self.suffix.as_slice(),
            ]
            .concat();
            let mut hooks = Hooks::none()
                .record_all(self.hooks.iter().copied())
                .stop_at(last);
            self.model
                .forward(&self.model.batch_ids(&[ids])?, &mut hooks, None)?;
            for (h, acts) in self.hooks.iter().zip(&mut out) {
                let act = hooks
                    .cache()
                    .get(h)
                    .ok_or_else(|| ModelError::Input(format!("hook {h} did not fire")))?;
                let kept = act.narrow(1, self.prefix.len() + p.keep - p.start, p.end - p.keep)?;
                acts.extend(kept.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        Ok((self.tokens_read(content.len()), out))
    }
}

/// One forward pass over content tokens `start..end`, of which `keep..end` are returned.
#[derive(Debug, PartialEq)]
struct Pass {
    start: usize,
    keep: usize,
    end: usize,
}

/// The passes that read `n` tokens, `len` at a time: one when the text fits or `whole` is
/// false; otherwise full-length passes, each returning the tokens after the last one's end
/// with at least `len / 4` tokens of left context before them.
fn passes(n: usize, len: usize, whole: bool) -> Vec<Pass> {
    let len = len.max(1);
    let first = Pass {
        start: 0,
        keep: 0,
        end: n.min(len),
    };
    let mut out = vec![first];
    if !whole {
        return out;
    }
    let overlap = len / 4;
    let mut done = n.min(len);
    while done < n {
        let end = (done + len - overlap).min(n);
        out.push(Pass {
            start: end - len,
            keep: done,
            end,
        });
        done = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_every_token_once_with_left_context() {
        for n in [1, 7, 8, 9, 20, 100, 513] {
            for len in [1, 2, 4, 8, 64] {
                let ps = passes(n, len, true);
                let mut next = 0;
                for p in &ps {
                    assert_eq!(p.keep, next, "n {n} len {len}: {ps:?}");
                    assert!(p.end > p.keep && p.end - p.start <= len);
                    if p.keep > 0 {
                        assert!(p.keep - p.start >= len / 4, "n {n} len {len}: {p:?}");
                    }
                    next = p.end;
                }
                assert_eq!(next, n, "n {n} len {len}: {ps:?}");
            }
        }
    }

    #[test]
    fn truncating_keeps_the_first_pass() {
        assert_eq!(
            passes(100, 30, false),
            vec![Pass {
                start: 0,
                keep: 0,
                end: 30
            }]
        );
        assert_eq!(passes(10, 30, false).len(), 1);
        assert_eq!(passes(10, 30, true).len(), 1);
    }
}
