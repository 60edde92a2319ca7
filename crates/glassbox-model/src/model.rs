//! A loaded model: embeddings, blocks, final norm and unembedding, with the hooked forward pass.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::arch::{self, Embeddings};
use crate::block::{Block, LayerCache, Pass};
use crate::chat::{self, ChatTemplate, Message};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::generate::{GenerateConfig, Plain};
use crate::gguf::{self, GgufFile};
use crate::gguf_model;
use crate::hooks::{BlockHook, HookPoint, Hooks};
use crate::ops::{self, AttnMask, Linear, Norm};
use crate::registry;
use crate::tokenizer::TextTokenizer;
use crate::weights::WeightFile;

pub struct Model {
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    /// The Jinja chat template (from the GGUF metadata or `tokenizer_config.json`).
    pub chat_template: Option<String>,
    path: PathBuf,
    weights_path: PathBuf,
    device: Device,
    embed: Embeddings,
    blocks: Vec<Block>,
    final_norm: Option<Norm>,
    unembed: Option<Linear>,
    /// Tokens that end a generation: end-of-sequence and the chat formats' end-of-turn markers.
    end_ids: Vec<u32>,
}

/// End-of-turn markers of common chat formats (Gemma, ChatML, Llama 3, Phi): generation stops
/// at them as at end-of-sequence (Gemma's GGUF names `<eos>`, but its turns end earlier).
const END_OF_TURN: &[&str] = &["<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>"];

/// Token ids of several texts, right-padded to one length.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, pos]`, u32
    pub ids: Tensor,
    /// Real tokens per row (the rest is padding).
    pub lengths: Vec<usize>,
}

impl Batch {
    /// `[batch, pos]` with 1 on real tokens, or `None` when no row is padded.
    pub fn key_mask(&self) -> Option<Vec<u8>> {
        let t = self.lengths.iter().copied().max().unwrap_or(0);
        if self.lengths.iter().all(|&n| n == t) {
            return None;
        }
        Some(
            self.lengths
                .iter()
                .flat_map(|&n| (0..t).map(move |j| u8::from(j < n)))
                .collect(),
        )
    }
}

/// What one forward call returns.
pub struct Output {
    /// The last residual stream (after the final norm for decoders), `[batch, pos, d_model]`.
    pub hidden: Tensor,
    /// `[batch, pos, vocab]` for decoders.
    pub logits: Option<Tensor>,
}

/// Keys and values of the positions seen so far, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on, so one prefilled prefix can be continued in
    /// several ways (the next append overwrites what followed it).
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
        self.len = self.len.min(len);
    }

    /// Positions the first layer's buffers can hold before they grow.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::capacity)
    }
}

impl Model {
    /// Loads a model directory (`config.json`, `model.safetensors`, `tokenizer.json`, and
    /// the chat template of `tokenizer_config.json` if there is one) or a GGUF file (all of it
    /// from the file's metadata).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        if gguf::is_gguf(path) {
            let file = GgufFile::open(path)?;
            let config = ModelConfig::from_json(&gguf_model::config_json(&file)?, path)?;
            let tokenizer = TextTokenizer::from_json(
                &gguf_model::tokenizer_json(&file)?,
                path,
                config.vocab_size,
            )?;
            let arch = file.optional("general.architecture", "a string", gguf::Value::as_str)?;
            let template = file
                .optional("tokenizer.chat_template", "a string", gguf::Value::as_str)?
                .or_else(|| arch.and_then(chat::builtin_template))
                .map(str::to_string);
            let weights = WeightFile::Gguf(file);
            return Self::assemble(path, config, tokenizer, template, weights, device);
        }
        let dir = path;
        let missing = registry::missing_files(dir);
        if !missing.is_empty() {
            return Err(registry::incomplete_dir(dir, &missing));
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = WeightFile::open(&dir.join("model.safetensors"))?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), config.vocab_size)?;
        let template = chat::template_of_dir(dir)?;
        Self::assemble(dir, config, tokenizer, template, weights, device)
    }

    fn assemble(
        path: &Path,
        config: ModelConfig,
        tokenizer: TextTokenizer,
        chat_template: Option<String>,
        weights: WeightFile,
        device: &Device,
    ) -> Result<Self> {
        let parts = arch::load(&config, &weights.view(device, &config))?;
        let end_ids = config
            .eos_token_id
            .into_iter()
            .chain(END_OF_TURN.iter().filter_map(|t| tokenizer.token_id(t)))
            .collect();
        Ok(Self {
            config,
            tokenizer,
            chat_template,
            path: path.to_path_buf(),
            weights_path: weights.path().to_path_buf(),
            device: device.clone(),
            embed: parts.embed,
            blocks: parts.blocks,
            final_norm: parts.final_norm,
            unembed: parts.unembed,
            end_ids,
        })
    }

    /// Whether generating `id` ends the generation (end of sequence or of the turn).
    pub fn ends_generation(&self, id: u32) -> bool {
        self.end_ids.contains(&id)
    }

    /// The token embedding matrix, `[vocab, d_model]`.
    pub fn token_embeddings(&self) -> &Tensor {
        &self.embed.tok
    }

    /// The unembedding as one row per token, `[vocab, d_model]` (decoders; `None` for encoders).
    /// A residual direction's dot product with a row is its direct effect on that logit,
    /// ignoring the final norm's scale.
    pub fn unembedding(&self) -> Result<Option<Tensor>> {
        Ok(match &self.unembed {
            Some(l) => Some(l.weight().t()?.contiguous()?),
            None => None,
        })
    }

    /// The blocks in forward order (weights included, for analyses that decompose outputs).
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The norm before the unembedding (decoders).
    pub fn final_norm(&self) -> Option<&Norm> {
        self.final_norm.as_ref()
    }

    /// The unembedding, `[d_model, vocab]` plus bias (decoders).
    pub fn unembed(&self) -> Option<&Linear> {
        self.unembed.as_ref()
    }

    /// `messages` rendered with the model's chat template, with the assistant's turn opened
    /// when `add_generation_prompt`. The result holds the template's special tokens as text;
    /// tokenize it without adding more (`tokenizer.encode_plain`).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::ChatTemplate(format!(
                "{} has no chat template (none in its GGUF metadata or tokenizer_config.json); use a plain prompt",
                self.path.display()
            ))
        })?;
        let token = |id: Option<u32>| id.and_then(|i| self.tokenizer.token(i)).unwrap_or_default();
        ChatTemplate::new(source)?.render(
            messages,
            add_generation_prompt,
            &token(self.config.bos_token_id),
            &token(self.config.eos_token_id),
        )
    }

    /// `messages` as the model reads them, text and token ids: rendered with its chat template
    /// (whose special tokens are in the text), or for a model without one as a plain
    /// `role: content` transcript ending in `assistant:` (tokenized with the model's special
    /// tokens; cut to the context when `truncate`).
    pub fn chat_prompt(&self, messages: &[Message], truncate: bool) -> Result<(String, Vec<u32>)> {
        if self.chat_template.is_some() {
            let prompt = self.apply_chat_template(messages, true)?;
            let ids = self.tokenizer.encode_plain(&prompt)?;
            return Ok((prompt, ids));
        }
        let mut prompt = String::new();
        for m in messages {
            prompt.push_str(&format!("{}: {}\n", m.role, m.content));
        }
        prompt.push_str("assistant:");
        let ids = self.tokenize(&prompt, truncate)?;
        Ok((prompt, ids))
    }

    /// What the model was loaded from: a directory or a GGUF file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file holding the weights (`model.safetensors` or the GGUF file).
    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every hook point this model has, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut points = vec![HookPoint::Embed];
        if self.embed.pos.is_some() {
            points.push(HookPoint::PosEmbed);
        }
        if self.embed.token_type.is_some() {
            points.push(HookPoint::TokenTypeEmbed);
        }
        for b in &self.blocks {
            points.extend(b.hook_points());
        }
        if self.final_norm.is_some() {
            points.push(HookPoint::FinalNorm);
        }
        if self.unembed.is_some() {
            points.push(HookPoint::Logits);
        }
        points
    }

    /// Parses a hook name and checks that this model has it.
    pub fn hook_point(&self, name: &str) -> Result<HookPoint> {
        let point: HookPoint = name.parse()?;
        if self.hook_points().contains(&point) {
            return Ok(point);
        }
        let msg = match point {
            HookPoint::Block(i, _) if i >= self.blocks.len() => {
                format!(
                    "this model has blocks 0..{}",
                    self.blocks.len().saturating_sub(1)
                )
            }
            _ => format!("a {} model has no such hook point", self.config.model_type),
        };
        Err(ModelError::UnknownHook {
            name: name.to_string(),
            msg,
        })
    }

    /// The width of one position's row at `point` (heads flattened): what a dictionary or
    /// probe reading that hook takes. `None` for attention scores and patterns, which are per
    /// query and key rather than per position.
    pub fn row_width(&self, point: HookPoint) -> Option<usize> {
        let c = &self.config;
        Some(match point {
            HookPoint::Logits => c.vocab_size,
            HookPoint::Block(_, h) => match h {
                BlockHook::AttnQ | BlockHook::AttnRotQ | BlockHook::AttnZ => c.n_heads * c.d_head,
                BlockHook::AttnK | BlockHook::AttnV | BlockHook::AttnRotK => {
                    c.n_kv_heads * c.d_head
                }
                BlockHook::AttnScores | BlockHook::AttnPattern => return None,
                BlockHook::MlpPre | BlockHook::MlpPreLinear | BlockHook::MlpPost => c.d_mlp,
                _ => c.d_model,
            },
            _ => c.d_model,
        })
    }

    /// Resolves `hook` for a reader of `width`-dimensional rows (a dictionary, a probe: `what`
    /// names it in the error) and checks that it fits there. The one check every surface that
    /// attaches a reader to a model goes through.
    pub fn reader_at(&self, hook: &str, width: usize, what: &str) -> Result<HookPoint> {
        let point = self.hook_point(hook)?;
        match self.row_width(point) {
            Some(expected) if expected == width => Ok(point),
            Some(expected) => Err(ModelError::ReaderWidth {
                what: what.to_string(),
                hook: hook.to_string(),
                width,
                expected,
            }),
            None => Err(ModelError::UnknownHook {
                name: hook.to_string(),
                msg: format!(
                    "{what} needs rows per position; attention scores and patterns are per \
                     query and key"
                ),
            }),
        }
    }

    /// The hook points named by `patterns`, in forward order: exact names (checked against this
    /// model) or `*` patterns (see [`crate::hooks::name_matches`]), each of which must match.
    pub fn resolve_hooks<S: AsRef<str>>(&self, patterns: &[S]) -> Result<Vec<HookPoint>> {
        let all = self.hook_points();
        let mut wanted = std::collections::HashSet::new();
        for p in patterns.iter().map(AsRef::as_ref) {
            if p.contains('*') {
                let matched: Vec<_> = all
                    .iter()
                    .filter(|h| crate::hooks::name_matches(p, &h.to_string()))
                    .collect();
                if matched.is_empty() {
                    return Err(ModelError::UnknownHook {
                        name: p.to_string(),
                        msg: "the pattern matches no hook point of this model".into(),
                    });
                }
                wanted.extend(matched.into_iter().copied());
            } else {
                wanted.insert(self.hook_point(p)?);
            }
        }
        Ok(all.into_iter().filter(|h| wanted.contains(h)).collect())
    }

    /// Token ids of `text` (special tokens included). Over-long input is an error unless
    /// `truncate` keeps the first `max_positions` tokens.
    pub fn tokenize(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, self.config.max_positions, truncate)
    }

    /// Tokenizes texts into one right-padded batch.
    pub fn batch(&self, texts: &[&str], truncate: bool) -> Result<Batch> {
        let rows = texts
            .iter()
            .map(|t| self.tokenize(t, truncate))
            .collect::<Result<Vec<_>>>()?;
        self.batch_ids(&rows)
    }

    pub fn batch_ids(&self, rows: &[Vec<u32>]) -> Result<Batch> {
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let pad = 0u32;
        let flat: Vec<u32> = rows
            .iter()
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, t - r.len()))
            })
            .collect();
        Ok(Batch {
            ids: Tensor::from_vec(flat, (rows.len(), t), &self.device)?,
            lengths: rows.iter().map(Vec::len).collect(),
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.blocks.len())
                .map(|_| LayerCache::default())
                .collect(),
            len: 0,
        }
    }

    /// Runs the model on `batch`. With a `cache`, the batch holds only new positions and the
    /// cache grows by them (decoders; the batch must then be unpadded).
    pub fn forward(
        &self,
        batch: &Batch,
        hooks: &mut Hooks,
        cache: Option<&mut KvCache>,
    ) -> Result<Output> {
        self.forward_inner(batch, hooks, cache, false)
    }

    /// The next-token logits of a one-row batch, `[vocab]`, extending `cache`: the unembedding
    /// runs at the last position only (what decoding needs; the `hook_logits` hook then sees
    /// `[1, 1, vocab]`).
    pub fn forward_last(
        &self,
        batch: &Batch,
        hooks: &mut Hooks,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let out = self.forward_inner(batch, hooks, Some(cache), true)?;
        let logits = out
            .logits
            .ok_or_else(|| ModelError::Input("the model has no unembedding".into()))?;
        Ok(logits.get(0)?.get(0)?.to_dtype(DType::F32)?)
    }

    /// The next-token logits after a one-row batch, `[vocab]`, without a cache: the whole text
    /// in one pass, unembedded at the last position only (large vocabularies make full logits
    /// costly: Gemma's 262,144 × 2,000 positions are 2 GB).
    pub fn last_logits(&self, batch: &Batch, hooks: &mut Hooks) -> Result<Tensor> {
        let out = self.forward_inner(batch, hooks, None, true)?;
        let logits = out
            .logits
            .ok_or_else(|| ModelError::Input("the model has no unembedding".into()))?;
        Ok(logits.get(0)?.get(0)?.to_dtype(DType::F32)?)
    }

    fn forward_inner(
        &self,
        batch: &Batch,
        hooks: &mut Hooks,
        mut cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Output> {
        let (b, t) = batch.ids.dims2()?;
        if t == 0 {
            return Err(ModelError::Input(
                "the text has no tokens (an empty prompt?); give some text".into(),
            ));
        }
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if offset + t > self.config.max_positions {
            return Err(ModelError::InputTooLong {
                len: offset + t,
                max: self.config.max_positions,
            });
        }
        let max_id = batch.ids.max_all()?.to_scalar::<u32>().unwrap_or(0);
        if t > 0 && max_id as usize >= self.config.vocab_size {
            return Err(ModelError::Input(format!(
                "token id {max_id} is outside the vocabulary of {} tokens",
                self.config.vocab_size
            )));
        }
        let key_mask = batch.key_mask();
        if cache.is_some() && key_mask.is_some() {
            return Err(ModelError::Input(
                "incremental decoding needs unpadded rows of one length".into(),
            ));
        }
        let mut x = self.embed(batch, hooks, offset)?;
        let mut pass = Pass {
            hooks,
            mask: AttnMask {
                causal: self.config.causal,
                keys: key_mask,
                window: None,
            },
            offset,
        };
        let stop = pass.hooks.stop_point();
        if stop.is_some() && cache.is_some() {
            return Err(ModelError::Input(
                "an early stop cannot be combined with the KV cache".into(),
            ));
        }
        for (i, block) in self.blocks.iter().enumerate() {
            if stop == Some(HookPoint::Block(i, BlockHook::ResidPre)) {
                let x = pass.hooks.at(HookPoint::Block(i, BlockHook::ResidPre), x)?;
                return Ok(Output {
                    hidden: x,
                    logits: None,
                });
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(x, &mut pass, layer_cache)?;
            if matches!(stop, Some(HookPoint::Block(j, _)) if j == i) {
                return Ok(Output {
                    hidden: x,
                    logits: None,
                });
            }
        }
        if let Some(c) = cache {
            c.len += t;
        }
        if let Some(norm) = &self.final_norm {
            let normed = if pass.hooks.frozen() {
                norm.forward_frozen(&x)?
            } else {
                norm.forward(&x)?
            };
            x = pass.hooks.at(HookPoint::FinalNorm, normed)?;
        }
        debug_assert_eq!(x.dims()[..2], [b, t]);
        let at = if last_only {
            x.narrow(1, t - 1, 1)?
        } else {
            x.clone()
        };
        let logits = match &self.unembed {
            Some(u) => Some(pass.hooks.at(HookPoint::Logits, u.forward(&at)?)?),
            None => None,
        };
        Ok(Output { hidden: x, logits })
    }

    fn embed(&self, batch: &Batch, hooks: &mut Hooks, offset: usize) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        let d = self.config.d_model;
        let tok = self
            .embed
            .tok
            .index_select(&batch.ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        // Scaled before the hook: `hook_embed` is what enters the residual stream.
        let tok = match self.embed.scale {
            Some(s) => (tok * s)?,
            None => tok,
        };
        let mut x = hooks.at(HookPoint::Embed, tok)?;
        if let Some(pos) = &self.embed.pos {
            let p = pos
                .narrow(0, offset, t)?
                .unsqueeze(0)?
                .broadcast_as((b, t, d))?;
            x = ops::add(&x, &hooks.at(HookPoint::PosEmbed, p.contiguous()?)?)?;
        }
        if let Some(tt) = &self.embed.token_type {
            // Single-segment input: every token has segment 0.
            let seg = tt.narrow(0, 0, 1)?.unsqueeze(0)?.broadcast_as((b, t, d))?;
            x = ops::add(&x, &hooks.at(HookPoint::TokenTypeEmbed, seg.contiguous()?)?)?;
        }
        match &self.embed.norm {
            Some(n) if hooks.frozen() => n.forward_frozen(&x),
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    /// The token embedding matrix as it enters the residual stream (`hook_embed` of each
    /// token; Gemma's scale applied), `[vocab, d_model]`, f32: what a gradient with respect to
    /// `hook_embed` is multiplied by to rank token substitutions.
    pub fn scaled_token_embeddings(&self) -> Result<Tensor> {
        let e = self.embed.tok.to_dtype(DType::F32)?;
        Ok(match self.embed.scale {
            Some(s) => (e * s)?,
            None => e,
        })
    }

    /// Sentence embeddings as sentence-transformers computes them for MiniLM: the mean of
    /// the last hidden state over real tokens, L2-normalised. `[batch, d_model]`
    pub fn sentence_embedding(&self, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, _) = hidden.dims3()?;
        let mask: Vec<f32> = batch
            .lengths
            .iter()
            .flat_map(|&n| (0..t).map(move |j| if j < n { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, t, 1), hidden.device())?;
        let counts: Vec<f32> = batch
            .lengths
            .iter()
            .map(|&n| (n as f32).max(1e-9))
            .collect();
        let counts = Tensor::from_vec(counts, (b, 1), hidden.device())?;
        let mean = hidden
            .broadcast_mul(&mask)?
            .sum(1)?
            .broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        Ok(mean.broadcast_div(&norm)?)
    }

    /// Each text's sentence embedding (see [`Self::sentence_embedding`]), in the order given;
    /// a text longer than the model's context is truncated to it. Texts are read in batches of
    /// 16 of similar length (sorted by tokens), so a short sentence is not padded to a long one.
    pub fn sentence_embeddings(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .sentence_embeddings_fitting(texts)?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// [`Self::sentence_embeddings`], each with whether its text fitted the context whole
    /// (special tokens included; one that did not was read by its first `max_positions`
    /// tokens), both from one tokenisation.
    pub fn sentence_embeddings_fitting(&self, texts: &[&str]) -> Result<Vec<(Vec<f32>, bool)>> {
        let (rows, fitted): (Vec<Vec<u32>>, Vec<bool>) = texts
            .iter()
            .map(|t| self.tokenizer.encode_fitting(t, self.config.max_positions))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = vec![Vec::new(); rows.len()];
        for chunk in order.chunks(16) {
            let chunk_rows: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
            let batch = self.batch_ids(&chunk_rows)?;
            let hidden = self
                .forward(&batch, &mut crate::Hooks::none(), None)?
                .hidden;
            let embedded = self.sentence_embedding(&batch, &hidden)?.to_vec2::<f32>()?;
            for (&i, e) in chunk.iter().zip(embedded) {
                out[i] = e;
            }
        }
        Ok(out.into_iter().zip(fitted).collect())
    }

    /// Greedy decoding with the KV cache: the prompt once, then one position per step.
    /// Stops after `max_new` tokens or at the end-of-sequence token.
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
        let cfg = GenerateConfig {
            max_new,
            ..GenerateConfig::default()
        };
        let g = self.generate(prompt, &cfg, &mut Plain)?;
        Ok(g.tokens.iter().map(|c| c.id).collect())
    }
}
