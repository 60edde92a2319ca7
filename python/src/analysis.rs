//! The analyses of `glassbox_analysis` for Python: activation and attribution patching, the
//! logit lens, direct logit attribution and feature attribution graphs. Each returns the
//! library's report as JSON, the same document the CLI prints with `--json`; the Python side
//! (`glassbox/analysis.py`) turns it into pandas tables.

use std::path::PathBuf;

use glassbox_analysis::graph::{attribution_graph, GraphConfig, GraphTarget};
use glassbox_analysis::lens::{direct_logit_attribution, logit_lens, single_token, LogitTarget};
use glassbox_analysis::patching::{self, Component, Direction, Metric};
use glassbox_dictionary::probe::Probe;
use glassbox_model::Model;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::array::type_name;
use crate::dictionary::PySae;
use crate::error;
use crate::model::PyModel;

/// Token ids of one text (tokenized as the CLI does) or of a given id list.
fn tokens(model: &Model, input: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(text) = input.extract::<String>() {
        return model.tokenize(&text, false).map_err(error);
    }
    let ids: Vec<u32> = input.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "give a string or a list of token ids, not a {}",
            type_name(input)
        ))
    })?;
    let vocab = model.config.vocab_size as u32;
    if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
        return Err(error(format!(
            "token id {bad} is outside the vocabulary (0..{vocab})"
        )));
    }
    Ok(ids)
}

fn json(value: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(value).map_err(error)
}

/// A negative position counts from the end, as Python indexes.
fn position(pos: Option<i64>, len: usize) -> PyResult<Option<usize>> {
    match pos {
        None => Ok(None),
        Some(p) if p >= 0 => Ok(Some(p as usize)),
        Some(p) => len
            .checked_sub(p.unsigned_abs() as usize)
            .map(Some)
            .ok_or_else(|| error(format!("position {p} is before the first of {len} tokens"))),
    }
}

/// Activation patching (or, with `attribution`, its first-order estimate) of every
/// component; see `glassbox.analysis.patch`.
#[pyfunction]
#[pyo3(signature = (model, clean, corrupt, *, target = None, minus = None, reverse = false,
                    attribution = false))]
#[allow(clippy::too_many_arguments)]
pub fn patch(
    py: Python<'_>,
    model: &PyModel,
    clean: &Bound<'_, PyAny>,
    corrupt: &Bound<'_, PyAny>,
    target: Option<&str>,
    minus: Option<&str>,
    reverse: bool,
    attribution: bool,
) -> PyResult<String> {
    let m = model.model();
    let metric =
        match (target, minus) {
            (None, None) => Metric::Cosine,
            (Some(good), Some(bad)) => Metric::LogitDiff {
                good: single_token(m, good).map_err(error)?,
                bad: single_token(m, bad).map_err(error)?,
            },
            _ => return Err(error(
                "patching measures a logit difference: give both target= and minus= (decoders), \
                 or neither for the cosine of the pooled embedding",
            )),
        };
    let (clean, corrupt) = (tokens(m, clean)?, tokens(m, corrupt)?);
    let direction = if reverse {
        Direction::Noise
    } else {
        Direction::Denoise
    };
    let run = if attribution {
        patching::attribute
    } else {
        patching::sweep
    };
    let report = py
        .detach(|| run(m, &clean, &corrupt, &metric, direction, &Component::ALL))
        .map_err(error)?;
    json(&report)
}

/// The logit lens table (top-`k` predictions after each layer, and a target's rank).
#[pyfunction]
#[pyo3(signature = (model, text, *, k = 3, target = None))]
pub fn logit_lens_table(
    py: Python<'_>,
    model: &PyModel,
    text: &Bound<'_, PyAny>,
    k: usize,
    target: Option<&str>,
) -> PyResult<String> {
    let m = model.model();
    let ids = tokens(m, text)?;
    let target = target
        .map(|t| single_token(m, t))
        .transpose()
        .map_err(error)?;
    let table = py
        .detach(|| logit_lens(m, &ids)?.table(m, &ids, k.max(1), target))
        .map_err(error)?;
    json(&table)
}

/// Direct logit attribution of `target` (default: the top prediction) at `position`.
#[pyfunction]
#[pyo3(signature = (model, text, *, target = None, minus = None, position = None))]
pub fn dla(
    py: Python<'_>,
    model: &PyModel,
    text: &Bound<'_, PyAny>,
    target: Option<&str>,
    minus: Option<&str>,
    position: Option<i64>,
) -> PyResult<String> {
    let m = model.model();
    let ids = tokens(m, text)?;
    let pos = self::position(position, ids.len())?;
    let dla = py
        .detach(|| {
            let target = LogitTarget::parse_or_top(m, &ids, pos, target, minus)?;
            direct_logit_attribution(m, &ids, pos, target)
        })
        .map_err(error)?;
    let mut value = serde_json::to_value(&dla).map_err(error)?;
    value["sum"] = dla.total().into();
    json(&value)
}

/// A feature attribution graph through `saes` to a logit (difference) or a probe's logit.
#[pyfunction]
#[pyo3(signature = (model, text, saes, *, target = None, minus = None, probe = None,
                    position = None, nodes_per_layer = 12, edge_threshold = 0.02))]
#[allow(clippy::too_many_arguments)]
pub fn graph(
    py: Python<'_>,
    model: &PyModel,
    text: &Bound<'_, PyAny>,
    saes: Vec<PyRef<'_, PySae>>,
    target: Option<&str>,
    minus: Option<&str>,
    probe: Option<PathBuf>,
    position: Option<i64>,
    nodes_per_layer: usize,
    edge_threshold: f32,
) -> PyResult<String> {
    let m = model.model();
    let ids = tokens(m, text)?;
    let dictionaries: Vec<_> = saes.iter().map(|s| s.sae().clone()).collect();
    let probe = probe.map(|p| Probe::load(&p)).transpose().map_err(error)?;
    let target = match (target, &probe) {
        (Some(t), None) => GraphTarget::Logit(LogitTarget::parse(m, t, minus).map_err(error)?),
        (None, Some(p)) => GraphTarget::Probe(p),
        _ => {
            return Err(error(
                "say what the graph explains: target= (a token; decoders) or probe= (a probe \
                 directory), one of them",
            ))
        }
    };
    let cfg = GraphConfig {
        nodes_per_layer: nodes_per_layer.max(1),
        edge_threshold: edge_threshold.max(0.0),
        position: self::position(position, ids.len())?,
    };
    let graph = py
        .detach(|| attribution_graph(m, &ids, &dictionaries, &target, &cfg))
        .map_err(error)?;
    json(&graph)
}
