//! A GPT-2 whose weights are written here to implement induction: layer 0 head 0 is a
//! previous-token head, layer 1 head 0 an induction head built on it, the other two heads
//! attend uniformly and write nothing, the MLPs are zero. Its induction scores and its direct
//! logit attribution are known without running it.

mod common;

use std::path::Path;

use glassbox_analysis::heads::induction_scores;
use glassbox_analysis::lens::{direct_logit_attribution, LogitTarget};
use glassbox_model::candle::{Device, Tensor};
use glassbox_model::Model;

const VOCAB: usize = 384; // the tiny-gpt2 fixture's tokenizer
const POS: usize = 64;
/// Residual layout: token one-hot, position one-hot, previous token one-hot.
const D: usize = 2 * VOCAB + POS;
const HEADS: usize = 2;
const D_HEAD: usize = D / HEADS;
const PREV: usize = VOCAB + POS;

struct Matrix {
    rows: usize,
    cols: usize,
    v: Vec<f32>,
}

impl Matrix {
    fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            v: vec![0.0; rows * cols],
        }
    }

    fn set(&mut self, r: usize, c: usize, x: f32) {
        self.v[r * self.cols + c] = x;
    }

    fn tensor(self) -> Tensor {
        Tensor::from_vec(self.v, (self.rows, self.cols), &Device::Cpu).unwrap()
    }
}

/// Writes the checkpoint: Conv1D weights are `[d_in, d_out]`; c_attn's columns are q, k, v,
/// each split into heads of `D_HEAD`.
fn write_induction_model(dir: &Path) {
    let mut wte = Matrix::zeros(VOCAB, D);
    for t in 0..VOCAB {
        wte.set(t, t, 1.0);
    }
    let mut wpe = Matrix::zeros(POS, D);
    for p in 0..POS {
        wpe.set(p, VOCAB + p, 1.0);
    }
    // After a norm a one-hot coordinate is ≈ √(D / ones); these gains make the attended
    // score ≈ 20 above the rest and the copied one-hot ≈ 1.
    let (q_gain, copy_gain) = (2.0, 0.05);
    let mut layers = Vec::new();
    for layer in 0..2 {
        let (mut qkv, mut proj) = (Matrix::zeros(D, 3 * D), Matrix::zeros(D, D));
        let (q, k, v) = (0, D, 2 * D); // head 0's columns in c_attn
        if layer == 0 {
            // Query position p matches key position p − 1; the value is the key's token,
            // written into the previous-token subspace.
            for p in 0..POS - 1 {
                qkv.set(VOCAB + p + 1, q + p, q_gain);
                qkv.set(VOCAB + p, k + p, q_gain);
            }
            for t in 0..VOCAB {
                qkv.set(t, v + t, 1.0);
                proj.set(t, PREV + t, copy_gain);
            }
        } else {
            // Query token t matches a key whose previous token is t; the value is the key's
            // own token, written back as the prediction.
            for t in 0..VOCAB {
                qkv.set(t, q + t, q_gain);
                qkv.set(PREV + t, k + t, q_gain);
                qkv.set(t, v + t, 1.0);
                proj.set(t, t, 3.0 * copy_gain);
            }
        }
        layers.push((qkv.tensor(), proj.tensor()));
    }
    common::save_gpt2(dir, wte.tensor(), wpe.tensor(), layers, HEADS);
}

#[test]
fn the_constructed_induction_head_ranks_first() {
    let dir = tempfile::tempdir().unwrap();
    write_induction_model(dir.path());
    let model = Model::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(model.config.d_head, D_HEAD);
    let scores = induction_scores(&model, 25, 4, 7).unwrap();
    let ranking = scores.ranking();
    let (l, h, ind, _) = ranking[0];
    assert_eq!((l, h), (1, 0), "ranking: {ranking:?}");
    assert!(ind > 0.9, "induction score {ind}");
    // The others: the previous-token head attends one back, the uniform heads spread out.
    for &(l, h, ind, _) in &ranking[1..] {
        assert!(ind < 0.1, "L{l}H{h} induction score {ind}");
    }
    assert!(
        scores.previous_token[0][0] > 0.9,
        "{:?}",
        scores.previous_token
    );
    assert!(scores.previous_token[1][0] < 0.1);
    assert!(scores.previous_token[0][1] < 0.2);

    // The same model on the tiny random GPT-2 has no such head.
    let tiny = Model::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../glassbox-model/tests/fixtures/tiny-gpt2"),
        &Device::Cpu,
    )
    .unwrap();
    let random = induction_scores(&tiny, 25, 4, 7).unwrap();
    assert!(random.ranking()[0].2 < 0.5, "{:?}", random.ranking()[0]);
}

#[test]
fn probe_length_is_checked_against_the_model() {
    let dir = tempfile::tempdir().unwrap();
    write_induction_model(dir.path());
    let model = Model::load(dir.path(), &Device::Cpu).unwrap();
    let err = induction_scores(&model, 40, 1, 0).unwrap_err().to_string();
    assert!(err.contains("32 tokens or fewer"), "{err}");
    assert!(induction_scores(&model, 1, 1, 0).is_err());
}

#[test]
fn direct_logit_attribution_matches_the_construction() {
    let dir = tempfile::tempdir().unwrap();
    write_induction_model(dir.path());
    let model = Model::load(dir.path(), &Device::Cpu).unwrap();
    // Distinct tokens, repeated: at the last token the induction head predicts the token that
    // followed its first occurrence, the first token of the sequence.
    let half: Vec<u32> = (0..20).map(|i| 7 + 13 * i).collect();
    let ids: Vec<u32> = half.iter().chain(&half).copied().collect();
    let (target, own) = (half[0], half[19]);
    let batch = model.batch_ids(std::slice::from_ref(&ids)).unwrap();
    let logits = model
        .forward(&batch, &mut glassbox_model::Hooks::none(), None)
        .unwrap()
        .logits
        .unwrap();
    let top = logits.get(0).unwrap().get(39).unwrap().argmax(0).unwrap();
    assert_eq!(top.to_scalar::<u32>().unwrap(), target);

    let dla = direct_logit_attribution(&model, &ids, None, LogitTarget::Token(target)).unwrap();
    let piece = |label: &str| dla.pieces.iter().find(|p| p.label == label).unwrap().value;
    // A one-hot outside the target's coordinate, centred by the final LayerNorm: −1/D, over
    // the final norm's scale; the norm's weight is 1 and nothing has a bias.
    let off_target = -1.0 / (D as f32 * dla.scale);
    assert!(
        (piece("embed") - off_target).abs() < 1e-6,
        "{}",
        piece("embed")
    );
    assert!((piece("pos_embed") - off_target).abs() < 1e-6);
    for silent in [
        "L0H1",
        "L1H1",
        "L0 mlp",
        "L1 mlp",
        "L0 attn bias",
        "L1 attn bias",
    ] {
        assert_eq!(piece(silent), 0.0, "{silent}");
    }
    assert_eq!(dla.bias, 0.0);
    // The induction head writes the prediction; the previous-token head writes elsewhere.
    assert!(piece("L1H0") > 0.9 * dla.logit, "{:?}", dla.pieces);
    assert!(piece("L0H0").abs() < 0.01 * dla.logit);
    assert!((dla.total() - dla.logit).abs() < 1e-4);
    // For the current token's own logit, the token embedding is the main direct source.
    let own_dla = direct_logit_attribution(&model, &ids, None, LogitTarget::Token(own)).unwrap();
    let embed = own_dla
        .pieces
        .iter()
        .find(|p| p.label == "embed")
        .unwrap()
        .value;
    assert!((embed - (1.0 - 1.0 / D as f32) / own_dla.scale).abs() < 1e-6);
}

/// A dictionary at `blocks.1.hook_resid_pre` with one ReLU feature per token coordinate
/// (features 0..VOCAB, "the token here is t") and per previous-token coordinate (features
/// VOCAB..2·VOCAB, "the token before was t"); no biases.
fn one_hot_dictionary() -> glassbox_dictionary::Sae {
    use glassbox_dictionary::{Activation, DictConfig, Sae};
    let mut sae = Sae::init(
        DictConfig::sae(
            Activation::Relu { l1: 0.0 },
            D,
            2 * VOCAB,
            "constructed",
            "blocks.1.hook_resid_pre",
        ),
        0,
    )
    .unwrap();
    let mut w = vec![0f32; 2 * VOCAB * D];
    for t in 0..VOCAB {
        w[t * D + t] = 1.0;
        w[(VOCAB + t) * D + PREV + t] = 1.0;
    }
    sae.w_enc_t = w.clone();
    sae.w_dec = w;
    sae.b_enc = vec![0.0; 2 * VOCAB];
    sae.b_dec = vec![0.0; D];
    sae
}

#[test]
fn the_attribution_graph_follows_the_induction_circuit() {
    use glassbox_analysis::graph::{attribution_graph, GraphConfig, GraphTarget, NodeKind};
    let dir = tempfile::tempdir().unwrap();
    write_induction_model(dir.path());
    let model = Model::load(dir.path(), &Device::Cpu).unwrap();
    let half: Vec<u32> = (0..20).map(|i| 7 + 13 * i).collect();
    let ids: Vec<u32> = half.iter().chain(&half).copied().collect();
    let dict = [one_hot_dictionary()];
    let target = GraphTarget::Logit(LogitTarget::Token(half[0]));

    // Unpruned, the graph is exact where the path is linear (no MLP, frozen attention and
    // norms, no biases): each feature's incoming edges sum to its activation, and the
    // dictionary column's influences sum to the target.
    let all = GraphConfig {
        nodes_per_layer: 100_000,
        edge_threshold: 0.0,
        position: None,
    };
    let g = attribution_graph(&model, &ids, &dict, &target, &all).unwrap();
    let column: f32 = g
        .nodes
        .iter()
        .filter(|n| n.column == 1)
        .map(|n| n.influence)
        .sum();
    assert!(
        (column - g.target_value).abs() < 1e-3 * g.target_value.abs(),
        "Σ influence {column} vs target {}",
        g.target_value
    );
    let mut checked = 0;
    for (i, n) in g.nodes.iter().enumerate() {
        if n.kind == NodeKind::Feature {
            let incoming: f32 = g
                .edges
                .iter()
                .filter(|e| e.target == i)
                .map(|e| e.weight)
                .sum();
            assert!(
                (incoming - n.activation).abs() < 1e-3 * (1.0 + n.activation),
                "{}: Σ incoming {incoming} vs activation {}",
                n.label,
                n.activation
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked} features checked");

    // Pruned: the induction head copies the token at position 20 (the one after the last
    // token's first occurrence), so the strongest feature is "the token here is half[0]"
    // there, written by that position's own embedding.
    let g = attribution_graph(&model, &ids, &dict, &target, &GraphConfig::default()).unwrap();
    let top = g
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Feature)
        .max_by(|a, b| a.influence.abs().total_cmp(&b.influence.abs()))
        .unwrap();
    assert_eq!(
        (top.feature, top.position),
        (Some(half[0]), 20),
        "{}",
        top.label
    );
    let path = &g.paths[0];
    let labels: Vec<&str> = path
        .nodes
        .iter()
        .map(|&i| g.nodes[i].label.as_str())
        .collect();
    assert_eq!(g.nodes[path.nodes[0]].kind, NodeKind::Token, "{labels:?}");
    assert_eq!(g.nodes[path.nodes[0]].position, 20, "{labels:?}");
    assert_eq!(g.nodes[path.nodes[1]].feature, Some(half[0]), "{labels:?}");
    assert_eq!(g.nodes[*path.nodes.last().unwrap()].kind, NodeKind::Target);
    assert!(
        path.effect > 0.5 * g.target_value,
        "{} of {}",
        path.effect,
        g.target_value
    );
}
