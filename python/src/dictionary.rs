//! `glassbox.Sae`: a sparse dictionary (SAE or transcoder) in SAELens's on-disk format.

use std::path::PathBuf;

use glassbox_dictionary::config::Activation;
use glassbox_dictionary::{saelens, Codes, Sae};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;

use crate::array::from_numpy;
use crate::error;

/// A sparse autoencoder or transcoder. `Sae.load(dir)` reads SAELens's format
/// (`cfg.json` + `sae_weights.safetensors`: standard, topk, jumprelu), as `glassbox
/// train-dict` writes it; `save(dir)` writes it back.
#[pyclass(name = "Sae", module = "glassbox", frozen)]
pub struct PySae {
    inner: Sae,
}

impl From<Sae> for PySae {
    fn from(inner: Sae) -> Self {
        Self { inner }
    }
}

impl PySae {
    /// The library's dictionary, for the analyses.
    pub(crate) fn sae(&self) -> &Sae {
        &self.inner
    }

    /// Rows of `x` (`[n, width]` or `[width]`) with the expected width; `[n, width]` out.
    fn rows(&self, x: &Bound<'_, PyAny>, width: usize, what: &str) -> PyResult<(Vec<f32>, usize)> {
        let (values, shape) = from_numpy(x, what)?;
        match shape.as_slice() {
            [w] if *w == width => Ok((values, 1)),
            [n, w] if *w == width => Ok((values, *n)),
            _ => Err(error(format!(
                "{what} an array of shape {shape:?}; expected [n, {width}] or [{width}]"
            ))),
        }
    }

    fn matrix<'py>(
        py: Python<'py>,
        values: Vec<f32>,
        shape: Vec<usize>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        PyArray1::from_vec(py, values).reshape(shape)
    }
}

#[pymethods]
impl PySae {
    /// `Sae.train(acts, out, k=…, …)`: see `crate::train::train`. A plain function held by the
    /// class, so it is called the same way on the class or an instance, without `self`.
    #[classattr]
    fn train(py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(pyo3::wrap_pyfunction!(crate::train::train, py)?
            .into_any()
            .unbind())
    }

    /// Reads a dictionary directory in SAELens's format.
    #[staticmethod]
    fn load(path: PathBuf) -> PyResult<Self> {
        let inner = saelens::load(&path).map_err(error)?;
        Ok(Self { inner })
    }

    /// Writes the dictionary to `path` (created if needed) in SAELens's format.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| saelens::save(&self.inner, &path, serde_json::json!({})))
            .map_err(error)
    }

    fn __repr__(&self) -> String {
        format!(
            "Sae({}, d_in {}, d_sae {}, reads {:?} of {:?})",
            self.architecture(),
            self.inner.d_in(),
            self.inner.d_sae(),
            self.inner.cfg.hook,
            self.inner.cfg.model
        )
    }

    #[getter]
    fn d_in(&self) -> usize {
        self.inner.d_in()
    }

    #[getter]
    fn d_sae(&self) -> usize {
        self.inner.d_sae()
    }

    /// The hook point it reads (`blocks.3.hook_resid_post`).
    #[getter]
    fn hook_name(&self) -> String {
        self.inner.cfg.hook.clone()
    }

    /// The model it was trained on, as recorded.
    #[getter]
    fn model_name(&self) -> String {
        self.inner.cfg.model.clone()
    }

    /// `standard` (ReLU), `topk`, `batchtopk` or `jumprelu`.
    #[getter]
    fn architecture(&self) -> &'static str {
        match self.inner.cfg.activation {
            Activation::Relu { .. } => "standard",
            Activation::TopK { .. } => "topk",
            Activation::BatchTopK { .. } => "batchtopk",
            Activation::JumpRelu { .. } => "jumprelu",
        }
    }

    /// `[d_in, d_sae]`, as SAELens stores it.
    #[getter(W_enc)]
    fn w_enc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (d_in, d_sae) = (self.inner.d_in(), self.inner.d_sae());
        let mut w = vec![0f32; d_in * d_sae];
        for (j, row) in self.inner.w_enc_t.chunks(d_in).enumerate() {
            for (i, v) in row.iter().enumerate() {
                w[i * d_sae + j] = *v;
            }
        }
        Self::matrix(py, w, vec![d_in, d_sae])
    }

    /// `[d_sae, d_in]`: row `j` is feature `j`'s direction.
    #[getter(W_dec)]
    fn w_dec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let scale = 1.0 / self.inner.cfg.output_scale;
        let w = self.inner.w_dec.iter().map(|v| v * scale).collect();
        Self::matrix(py, w, vec![self.inner.d_sae(), self.inner.d_in()])
    }

    #[getter]
    fn b_enc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        Self::matrix(py, self.inner.b_enc.clone(), vec![self.inner.d_sae()])
    }

    #[getter]
    fn b_dec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let scale = 1.0 / self.inner.cfg.output_scale;
        let b = self.inner.b_dec.iter().map(|v| v * scale).collect();
        Self::matrix(py, b, vec![self.inner.d_in()])
    }

    /// Feature activations of `x` (`[n, d_in]` or `[d_in]`): a dense `[n, d_sae]` array,
    /// zero where a feature is off.
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (values, n) = self.rows(x, self.inner.d_in(), "encode got")?;
        let codes = py.detach(|| self.inner.encode(&values)).map_err(error)?;
        let d_sae = self.inner.d_sae();
        let mut dense = vec![0f32; n * d_sae];
        for (row, out) in codes.rows.iter().zip(dense.chunks_mut(d_sae)) {
            for &(j, v) in row {
                out[j as usize] = v;
            }
        }
        Self::matrix(py, dense, vec![n, d_sae])
    }

    /// The reconstruction (`[n, d_in]`) from feature activations `f` (`[n, d_sae]` or
    /// `[d_sae]`): `f · W_dec + b_dec`.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        f: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let d_sae = self.inner.d_sae();
        let (values, n) = self.rows(f, d_sae, "decode got")?;
        let codes = Codes {
            rows: values
                .chunks(d_sae)
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .filter(|(_, v)| **v != 0.0)
                        .map(|(j, v)| (j as u32, *v))
                        .collect()
                })
                .collect(),
        };
        let scale = 1.0 / self.inner.cfg.output_scale;
        let out = py
            .detach(|| self.inner.decode(&codes))
            .into_iter()
            .map(|v| v * scale)
            .collect();
        Self::matrix(py, out, vec![n, self.inner.d_in()])
    }
}
