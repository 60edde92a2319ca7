//! `glassbox._native`: the Rust library behind the `glassbox` Python package. The Python
//! side (`python/glassbox/`) re-exports these classes and adds the pandas tables.
//!
//! Everything crosses the boundary as NumPy arrays (f32, C order) and plain Python values;
//! errors become `glassbox.GlassboxError` with the library's message, and an exception
//! raised inside a Python hook comes back out of the forward pass unchanged.

mod analysis;
mod array;
mod catalog;
mod dictionary;
mod model;
mod probe;
mod train;

use pyo3::prelude::*;

pyo3::create_exception!(
    glassbox,
    GlassboxError,
    pyo3::exceptions::PyException,
    "An error of the Glassbox library (bad input, a missing model or file, a malformed weight or catalog): the message says what and where."
);

/// A library error as a Python exception carrying its message.
pub(crate) fn error(e: impl std::fmt::Display) -> PyErr {
    GlassboxError::new_err(e.to_string())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Kernels run on rayon's pool; the calling thread joins it, as the CLI's main thread does.
    glassbox_model::join_thread_pool();
    m.add("GlassboxError", m.py().get_type::<GlassboxError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<model::PyHook>()?;
    m.add_class::<dictionary::PySae>()?;
    m.add_class::<probe::PySentenceProbe>()?;
    m.add_class::<catalog::PyCatalog>()?;
    m.add_function(wrap_pyfunction!(analysis::patch, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::logit_lens_table, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::dla, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::graph, m)?)?;
    Ok(())
}
