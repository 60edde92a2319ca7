//! Tensors and NumPy arrays. Out: results (logits, cached activations) are read-only NumPy
//! views of the tensors' own memory, no copy; a hook's input is a writable copy (hooks edit in
//! place), made on every thread with the GIL released. In: float32 arrays are read in place
//! when C-contiguous; other float dtypes are converted; anything else is a TypeError that says
//! what was given.

use glassbox_model::candle::{CpuStorage, Storage};
use glassbox_model::{DType, Device, Tensor};
use numpy::ndarray::{ArrayViewD, IxDyn, ShapeBuilder};
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use rayon::prelude::*;

use crate::error;

/// Keeps a tensor's memory alive for as long as NumPy views of it exist (their `base`).
#[pyclass(frozen)]
struct TensorMemory(#[allow(dead_code)] Tensor);

/// A tensor as a read-only float32 NumPy array of the same shape and strides that views the
/// tensor's own memory: no copy (at batch 32, SmolLM2's logits alone are 800 MB). For tensors
/// no one writes to after the call that made them — a forward pass's outputs and recorded
/// activations (only the KV cache is written in place, and it is not handed out). Tensors not
/// in f32 on the CPU are copied.
pub fn view_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let t = t.to_dtype(DType::F32).map_err(error)?;
    let view = {
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            Storage::Cpu(CpuStorage::F32(data)) => {
                let shape = IxDyn(layout.dims()).strides(IxDyn(layout.stride()));
                // SAFETY: candle's layout describes elements inside `data` (start offset plus
                // non-negative strides within its length); `data` is a Vec that is never
                // reallocated or written again (see above) and lives as long as the tensor,
                // which the array's base object below holds.
                Some(unsafe {
                    ArrayViewD::from_shape_ptr(shape, data.as_ptr().add(layout.start_offset()))
                })
            }
            _ => None,
        }
    };
    let Some(view) = view else {
        return to_numpy(py, &t);
    };
    let memory = Bound::new(py, TensorMemory(t.clone()))?.into_any();
    // SAFETY: `memory` owns the tensor whose memory `view` borrows, and becomes the array's base.
    let array = unsafe { PyArrayDyn::borrow_from_array(&view, memory) };
    let array: PyReadwriteArray<f32, IxDyn> = array.readwrite();
    let readonly = array.make_nonwriteable();
    Ok((*readonly).clone())
}

/// A tensor as a writable float32 NumPy array of the same shape (a copy).
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let values = py
        .detach(|| t.to_dtype(DType::F32).and_then(|t| host_values(&t)))
        .map_err(error)?;
    PyArray1::from_vec(py, values).reshape(t.dims().to_vec())
}

/// The values in row-major order. A contiguous CPU tensor is copied by all threads at once:
/// at batch 32 SmolLM2's logits alone are 800 MB, and one thread copying them (and faulting in
/// the fresh pages) cost 5 % of the forward pass.
fn host_values(t: &Tensor) -> glassbox_model::candle::Result<Vec<f32>> {
    const CHUNK: usize = 1 << 16;
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            let src = &data[start..end];
            let mut out = vec![0f32; src.len()];
            out.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(o, s)| o.copy_from_slice(s));
            return Ok(out);
        }
    }
    t.flatten_all()?.to_vec1()
}

/// Float values of a NumPy array (or anything `numpy.asarray` takes) with its shape; `what`
/// names the value in errors ("hook `blocks.0.hook_resid_pre` returned").
pub fn from_numpy(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<(Vec<f32>, Vec<usize>)> {
    let py = obj.py();
    let converted;
    let not_an_array = || {
        PyTypeError::new_err(format!(
            "{what} a {}, not an array; give a NumPy array of floats",
            type_name(obj)
        ))
    };
    let obj = if obj.extract::<PyReadonlyArrayDyn<f32>>().is_ok() {
        obj
    } else if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(not_an_array());
    } else {
        let np = py.import("numpy")?;
        let arr = np
            .call_method1("asarray", (obj,))
            .map_err(|_| not_an_array())?;
        let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
        if kind != "f" {
            let dtype = arr.getattr("dtype")?.str()?.to_string();
            return Err(PyTypeError::new_err(format!(
                "{what} an array of dtype {dtype}; give floating-point values (float32)"
            )));
        }
        converted = arr.call_method1("astype", ("float32",))?;
        &converted
    };
    let arr: PyReadonlyArrayDyn<f32> = obj.extract()?;
    let shape = arr.shape().to_vec();
    let values = match arr.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => arr.as_array().iter().copied().collect(),
    };
    Ok((values, shape))
}

/// A NumPy array as an f32 tensor on `device`.
pub fn to_tensor(obj: &Bound<'_, PyAny>, what: &str, device: &Device) -> PyResult<Tensor> {
    let (values, shape) = from_numpy(obj, what)?;
    Tensor::from_vec(values, shape, device).map_err(error)
}

pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "value".into())
}
