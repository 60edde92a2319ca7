//! `glassbox.SentenceProbe`: the shipped prompt-injection / jailbreak monitor (a probe on
//! sentences read alone, from `glassbox probe families --segments --out`), scored in a notebook
//! as `glassbox probe score` scores it.

use std::path::PathBuf;

use glassbox_dictionary::sentence_probe::SentenceProbe;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error;
use crate::model::PyModel;

/// A sentence probe. `SentenceProbe.load(dir)` reads `dir/sentence_probe.json`; `score(model,
/// texts)` gives each text's logit (the highest over its heads, its whole and each sentence read
/// alone), which the served rule `sentences NAME > threshold` compares.
#[pyclass(name = "SentenceProbe", module = "glassbox", frozen)]
pub struct PySentenceProbe {
    inner: SentenceProbe,
}

#[pymethods]
impl PySentenceProbe {
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        let inner = SentenceProbe::load(&path).map_err(error)?;
        Ok(Self { inner })
    }

    /// The pieces the probe reads `text` as: the whole, then each sentence where there are two
    /// or more; a probe that reads wholes only where they fit leaves out the whole of a text
    /// `model` cuts to its context (`whole_only_if_fits`).
    fn pieces(&self, py: Python<'_>, model: &PyModel, text: &str) -> PyResult<Vec<String>> {
        let (_, pieces) = py
            .detach(|| self.inner.read_pieces(model.model(), text))
            .map_err(error)?;
        Ok(pieces
            .iter()
            .map(|p| text[p.start..p.end].to_string())
            .collect())
    }

    /// Whether it reads a text's whole only where the text fits the model's context.
    #[getter]
    fn whole_only_if_fits(&self) -> bool {
        self.inner.whole_only_if_fits
    }

    /// Its discount by piece count (`probe families --discount-pieces`): a text scores its
    /// highest piece logit less this times ln(pieces); `None` for the plain highest.
    #[getter]
    fn piece_scale(&self) -> Option<f32> {
        self.inner.piece_scale
    }

    /// Each piece's logit (the highest over the probe's heads), in `pieces(model, text)`'s order;
    /// `model` is the model the probe names (`probe.model_name`, MiniLM).
    fn piece_logits<'py>(
        &self,
        py: Python<'py>,
        model: &PyModel,
        text: &str,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let logits = py
            .detach(|| self.inner.piece_logits(model.model(), text))
            .map_err(error)?;
        Ok(PyArray1::from_vec(py, logits))
    }

    /// The kind (head) that scores each piece highest, in `pieces(model, text)`'s order: beside
    /// `piece_logits`, which sentence read as which attack (`probe score --pieces`).
    fn piece_kinds(&self, py: Python<'_>, model: &PyModel, text: &str) -> PyResult<Vec<String>> {
        let (_, pieces) = py
            .detach(|| self.inner.read_pieces(model.model(), text))
            .map_err(error)?;
        Ok(pieces.into_iter().map(|p| p.kind).collect())
    }

    /// Each text's score: its highest piece logit (less `piece_scale`·ln(pieces) for a probe
    /// saved with `--discount-pieces`), what a served `sentences NAME` rule reads.
    fn score<'py>(
        &self,
        py: Python<'py>,
        model: &PyModel,
        texts: Vec<String>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let scores = py
            .detach(|| {
                texts
                    .iter()
                    .map(|t| Ok(self.inner.read_text(model.model(), t)?.max_logit))
                    .collect::<glassbox_dictionary::Result<Vec<f32>>>()
            })
            .map_err(error)?;
        Ok(PyArray1::from_vec(py, scores))
    }

    /// Its heads, kind → `(weights, bias)`: a piece's logit under a head is `weights @ e + bias`
    /// for the piece's sentence embedding `e` (`Model.sentence_embeddings`), its score the
    /// highest over heads.
    #[getter]
    fn heads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for h in &self.inner.heads {
            out.set_item(&h.kind, (PyArray1::from_vec(py, h.weights.clone()), h.bias))?;
        }
        Ok(out)
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// The model whose sentence embeddings it reads.
    #[getter]
    fn model_name(&self) -> String {
        self.inner.model.clone()
    }

    /// The kinds of attack it has a head for.
    #[getter]
    fn kinds(&self) -> Vec<String> {
        self.inner.heads.iter().map(|h| h.kind.clone()).collect()
    }

    /// The calibrated threshold on the score (a logit), or None.
    #[getter]
    fn threshold(&self) -> Option<f32> {
        self.inner.calibration.as_ref().map(|c| c.threshold)
    }

    /// The heads' L2 penalty it was trained at (on standardised inputs), or None where the
    /// file predates recording it (then 0.5).
    #[getter]
    fn penalty(&self) -> Option<f32> {
        self.inner.penalty
    }

    fn __repr__(&self) -> String {
        format!(
            "SentenceProbe({:?}, reads {:?}, kinds {:?}, threshold {:?})",
            self.inner.name,
            self.inner.model,
            self.kinds(),
            self.threshold()
        )
    }
}
