//! Forward-pass throughput on MiniLM (installed by `glassbox setup`), with and without hooks.
//! Run through `bench/forward.sh`, which puts PyTorch beside it when available.
//!
//! `cargo bench -p glassbox-model --bench forward [-- --json OUT.json] [--seconds S]`

use std::time::{Duration, Instant};

use glassbox_model::{registry, BlockHook, Device, HookPoint, Hooks, Model};

struct Case {
    batch: usize,
    seq: usize,
    hooks: &'static str,
}

fn hooks_for(model: &Model, kind: &str) -> Hooks<'static> {
    let n = model.config.n_layers;
    match kind {
        "none" => Hooks::none(),
        // The residual stream at every layer: what harvesting records.
        "resid" => Hooks::none().record_all((0..n).flat_map(|l| {
            [
                BlockHook::ResidPre,
                BlockHook::ResidMid,
                BlockHook::ResidPost,
            ]
            .map(|h| HookPoint::block(l, h))
        })),
        // Every hook point, attention patterns included (forces materialised attention).
        "all" => Hooks::none().record_all(model.hook_points()),
        other => panic!("unknown hook set {other}"),
    }
}

/// Median tokens/s over repeated forward passes lasting at least `budget`.
fn measure(model: &Model, case: &Case, budget: Duration) -> (f64, usize) {
    let text = "Interpretability research asks what computation a trained network performs, \
                and tests its answers by intervening on the network's activations. ";
    let mut ids = model.tokenize(&text.repeat(20), true).unwrap();
    ids.truncate(case.seq);
    let batch = model.batch_ids(&vec![ids; case.batch]).unwrap();
    let run = || {
        let mut hooks = hooks_for(model, case.hooks);
        let start = Instant::now();
        let out = model.forward(&batch, &mut hooks, None).unwrap();
        std::hint::black_box((&out.hidden, hooks.cache().len()));
        start.elapsed()
    };
    run(); // warm-up
    let mut times = Vec::new();
    let begin = Instant::now();
    while times.len() < 3 || (begin.elapsed() < budget && times.len() < 200) {
        times.push(run().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    ((case.batch * case.seq) as f64 / median, times.len())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let json_out = flag("--json");
    let seconds: f64 = flag("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let dir = registry::resolve("minilm")
        .expect("MiniLM is not installed: run `cargo glassbox setup` first");
    let model = Model::load(&dir, &Device::Cpu).unwrap();
    let cases = [(1, 128), (32, 128)]
        .into_iter()
        .flat_map(|(batch, seq)| ["none", "resid", "all"].map(|hooks| Case { batch, seq, hooks }))
        .collect::<Vec<_>>();
    println!(
        "glassbox forward, MiniLM-L6 (f32, CPU, {} rayon threads)",
        rayon::current_num_threads()
    );
    println!(
        "{:<8} {:<5} {:<6} {:>10} {:>6}",
        "batch", "seq", "hooks", "tokens/s", "runs"
    );
    let mut rows = Vec::new();
    for c in &cases {
        let (tps, runs) = measure(&model, c, Duration::from_secs_f64(seconds));
        println!(
            "{:<8} {:<5} {:<6} {:>10.0} {:>6}",
            c.batch, c.seq, c.hooks, tps, runs
        );
        rows.push(serde_json::json!({"batch": c.batch, "seq": c.seq, "hooks": c.hooks, "tokens_per_s": tps, "runs": runs}));
    }
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    }
}
