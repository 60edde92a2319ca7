//! `glassbox.Sae.train`: the library's k-sweep trainer (`glassbox_dictionary::sweep`, the same
//! one `glassbox train-dict` runs) over a harvested activation store or a NumPy array, with a
//! progress bar and Ctrl-C that stops at a checkpoint.

use std::ops::ControlFlow;
use std::path::PathBuf;

use glassbox_dictionary::saelens;
use glassbox_dictionary::sweep::{
    Arch, BatchSource, InMemory, Progress, SourceInfo, Sweep, SweepConfig,
};
use glassbox_store::activations::ActivationStore;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::array::from_numpy;
use crate::dictionary::PySae;
use crate::error;

/// What `Sae.train` reads.
enum Source {
    Store(ActivationStore),
    Array(InMemory),
}

impl Source {
    fn get(&self) -> &dyn BatchSource {
        match self {
            Source::Store(s) => s,
            Source::Array(a) => a,
        }
    }

    fn from_python(
        acts: &Bound<'_, PyAny>,
        targets: Option<&Bound<'_, PyAny>>,
        model: &str,
        hook: &str,
        target_hook: Option<String>,
    ) -> PyResult<Self> {
        if let Ok(path) = acts.extract::<PathBuf>() {
            if targets.is_some() {
                return Err(PyValueError::new_err(
                    "targets= goes with an array; a store made with --target-hook holds its own",
                ));
            }
            return ActivationStore::open(&path)
                .map(Source::Store)
                .map_err(error);
        }
        let (rows, shape) = from_numpy(acts, "acts is")?;
        let [n, d] = shape[..] else {
            return Err(error(format!(
                "acts has shape {shape:?}; give rows of activations, [n, d_in]"
            )));
        };
        let targets = match targets {
            None => None,
            Some(t) => {
                let (values, tshape) = from_numpy(t, "targets is")?;
                if tshape != shape {
                    return Err(error(format!(
                        "targets have shape {tshape:?}, acts {shape:?}; give one target row per row"
                    )));
                }
                Some(values)
            }
        };
        let target_hook = match (&targets, target_hook) {
            (Some(_), None) => Some("target".to_string()),
            (None, Some(h)) => {
                return Err(error(format!(
                    "target_hook={h:?} needs targets= (the rows of that hook)"
                )));
            }
            (_, h) => h,
        };
        let info = SourceInfo {
            d_in: d,
            rows: n,
            model: model.into(),
            hook: hook.into(),
            target_hook,
            origin: format!("a NumPy array of {n} rows"),
        };
        InMemory::new(info, rows, targets)
            .map(Source::Array)
            .map_err(error)
    }
}

fn arch(name: &str, l1: f32, l0: f32, bandwidth: f32) -> PyResult<Arch> {
    Ok(match name {
        "topk" => Arch::TopK,
        "batchtopk" => Arch::BatchTopK,
        "relu" | "standard" => Arch::Relu { l1 },
        "jumprelu" => Arch::JumpRelu { l0, bandwidth },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown arch {other:?}; choose topk, batchtopk, relu or jumprelu"
            )))
        }
    })
}

/// Trains dictionaries on `acts` — a store written by `glassbox harvest` (a path) or a
/// float array `[n, d_in]` — into `out`, exactly as `glassbox train-dict` does.
///
/// `k` is an int (one dictionary, returned) or a list (a sweep sharing one pass over the
/// data, one directory `out/k<K>` each, a list returned). A directory holding a checkpoint
/// resumes from it; Ctrl-C (or a `progress` callback returning True) stops at a checkpoint,
/// and the same call later resumes. `progress`: True for a bar (tqdm when installed, else
/// plain lines), False for silence, or a callable `fn(step, steps, stats) -> bool | None`.
#[pyfunction]
#[pyo3(signature = (acts, out, *, k = None, arch = "topk", width = 16384, batch = 4096,
                    steps = None, lr = 2e-3, warmup = 50, aux_k = None, dead_after = 1_000_000,
                    l1 = 5.0, l0 = 1.0, bandwidth = 0.05, checkpoint_every = 100, seed = 0,
                    targets = None, model = "array", hook = "array", target_hook = None,
                    progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    acts: &Bound<'_, PyAny>,
    out: PathBuf,
    k: Option<&Bound<'_, PyAny>>,
    arch: &str,
    width: usize,
    batch: usize,
    steps: Option<usize>,
    lr: f32,
    warmup: usize,
    aux_k: Option<usize>,
    dead_after: u64,
    l1: f32,
    l0: f32,
    bandwidth: f32,
    checkpoint_every: usize,
    seed: u64,
    targets: Option<&Bound<'_, PyAny>>,
    model: &str,
    hook: &str,
    target_hook: Option<String>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let arch = self::arch(arch, l1, l0, bandwidth)?;
    let (ks, one) = match k {
        None => (vec![32], true),
        Some(k) if k.is_instance_of::<PyList>() || k.hasattr("__iter__")? => {
            (k.extract::<Vec<usize>>()?, false)
        }
        Some(k) => (vec![k.extract::<usize>()?], true),
    };
    let one = one || matches!(arch, Arch::Relu { .. });
    let source = Source::from_python(acts, targets, model, hook, target_hook)?;
    let cfg = SweepConfig {
        arch,
        ks,
        width,
        batch,
        steps,
        lr,
        warmup,
        aux_k,
        dead_after,
        checkpoint_every,
        seed,
    };
    let mut sweep = py
        .detach(|| Sweep::open(&out, source.get(), &cfg))
        .map_err(error)?;
    let callback = progress_callback(py, progress, sweep.start_step(), sweep.steps())?;
    let mut raised: Option<PyErr> = None;
    let report = py
        .detach(|| {
            sweep.run(source.get(), |p: &Progress| {
                Python::attach(|py| match report_step(py, callback.as_ref(), p) {
                    Ok(false) => ControlFlow::Continue(()),
                    Ok(true) => ControlFlow::Break(()),
                    Err(e) => {
                        raised = Some(e);
                        ControlFlow::Break(())
                    }
                })
            })
        })
        .map_err(error)?;
    if let Some(cb) = &callback {
        if cb.bind(py).hasattr("close")? {
            cb.call_method0(py, "close")?;
        }
    }
    if let Some(e) = raised {
        return Err(e);
    }
    if report.stopped_at.is_some() {
        return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(format!(
            "training stopped at step {} of {}; the checkpoints in {} resume it",
            report.stopped_at.unwrap_or_default(),
            report.steps,
            out.display()
        )));
    }
    let mut saes = Vec::new();
    for d in &report.dictionaries {
        let inner = saelens::load(&d.dir).map_err(error)?;
        saes.push(Py::new(py, PySae::from(inner))?);
    }
    if one {
        Ok(saes.remove(0).into_any())
    } else {
        Ok(PyList::new(py, saes)?.into_any().unbind())
    }
}

/// The callable that reports each step: the caller's, the package's default bar, or none.
fn progress_callback(
    py: Python<'_>,
    progress: Option<&Bound<'_, PyAny>>,
    start: usize,
    steps: usize,
) -> PyResult<Option<Py<PyAny>>> {
    match progress {
        Some(p) if p.is_callable() => Ok(Some(p.clone().unbind())),
        Some(p) if !p.is_truthy()? => Ok(None),
        _ => {
            let bar = py
                .import("glassbox._progress")?
                .call_method1("Bar", (steps, start, "train (steps)"))?;
            Ok(Some(bar.unbind()))
        }
    }
}

/// Reports one step; true when the run should stop (the callback said so, or Ctrl-C).
fn report_step(py: Python<'_>, callback: Option<&Py<PyAny>>, p: &Progress) -> PyResult<bool> {
    py.check_signals()?;
    let Some(cb) = callback else {
        return Ok(false);
    };
    let s = p.stats;
    let stats = PyDict::new(py);
    stats.set_item("fve", s.fve)?;
    stats.set_item("l0", s.l0)?;
    stats.set_item("mse", s.mse)?;
    stats.set_item("dead_fraction", s.dead_fraction)?;
    stats.set_item("lr", s.lr)?;
    let answer = cb.call1(py, (p.step, p.steps, stats))?;
    answer.bind(py).is_truthy()
}
