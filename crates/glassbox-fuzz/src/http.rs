//! The HTTP API in process: the real router over the tiny GPT-2 with a dictionary monitor, fed
//! one request per input. The first byte picks the route; the rest is the body (or the query
//! or path). No answer may be a 5xx: bad requests get 4xx, good ones are served.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request};
use glassbox_serve::config::Config;
use glassbox_serve::server::{router, AppState};
use tower::ServiceExt;

struct Served {
    runtime: tokio::runtime::Runtime,
    state: Arc<AppState>,
}

fn served() -> &'static Served {
    static S: OnceLock<Served> = OnceLock::new();
    S.get_or_init(|| {
        let dir = super::scratch().join("serve");
        std::fs::create_dir_all(&dir).expect("scratch");
        let dict = dir.join("sae");
        super::seeds::small_dictionary(&dict, 64, "tiny-gpt2", "blocks.1.hook_resid_pre");
        let toml = format!(
            "model = {:?}\n[limits]\nmax_input_tokens = 32\nmax_new_tokens = 4\nmax_batch = 4\n\
             [[dictionary]]\nname = \"d\"\npath = {:?}\n[[monitor]]\nname = \"m\"\ndictionary = \"d\"\n\
             when = \"mean(feature 1, 4) > 100\"\naction = \"log\"\n[audit]\npath = {:?}\nfsync = \"per-request\"\n",
            super::tiny_gpt2().display().to_string(),
            dict.display().to_string(),
            dir.join("audit.jsonl").display().to_string()
        );
        let path = dir.join("deploy.toml");
        std::fs::write(&path, toml).expect("scratch");
        let cfg = Config::load(&path).expect("the fuzz deployment");
        let model = glassbox_model::Model::load(&super::tiny_gpt2(), &glassbox_model::Device::Cpu)
            .expect("the tiny GPT-2 fixture");
        let state = AppState::new(cfg, model).expect("the fuzz server");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Served { runtime, state }
    })
}

const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/v1/embeddings"),
    (Method::POST, "/v1/completions"),
    (Method::POST, "/v1/chat/completions"),
    (Method::POST, "/v1/monitors"),
    (Method::POST, "/v1/keys/reload"),
    (Method::POST, "/console/login"),
    (Method::POST, "/console/api/playground"),
    (Method::GET, "/console/catalog/results?"),
    (Method::GET, "/console/api/features?"),
    (Method::GET, "/console/reports/compare?"),
    (Method::GET, "/console/graphs/"),
    (Method::DELETE, "/v1/monitors/"),
];

pub fn request(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (method, route) = &ROUTES[pick as usize % ROUTES.len()];
    let s = served();
    let request = if method == Method::POST {
        let kind = if route.starts_with("/console/login") {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        Request::builder()
            .method(method)
            .uri(*route)
            .header("content-type", kind)
            .body(Body::from(rest.to_vec()))
    } else {
        // Query strings and path segments: only what a URI can carry.
        let tail: String = String::from_utf8_lossy(rest)
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        Request::builder()
            .method(method)
            .uri(format!("{route}{tail}"))
            .body(Body::empty())
    };
    let Ok(request) = request else { return };
    let state = s.state.clone();
    s.runtime.block_on(async move {
        let response = router(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        // Drive a streamed answer to its end.
        let body = axum::body::to_bytes(response.into_body(), 16 << 20).await;
        assert!(
            !status.is_server_error(),
            "{method} {route} answered {status}: {body:?}"
        );
        // A monitor the input created is removed, so that every input meets the same server.
        if *route == "/v1/monitors" && status.as_u16() == 201 {
            let body = body.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(name) = v["monitor"]["name"].as_str() {
                let uri = format!(
                    "/v1/monitors/{}",
                    name.bytes()
                        .map(|b| format!("%{b:02X}"))
                        .collect::<String>()
                );
                let req = Request::builder()
                    .method(Method::DELETE)
                    .uri(uri)
                    .body(Body::empty())
                    .expect("a valid request");
                let r = router(state).oneshot(req).await.expect("infallible");
                assert_eq!(
                    r.status().as_u16(),
                    200,
                    "the created monitor {name:?} could not be deleted"
                );
            }
        }
    });
}
