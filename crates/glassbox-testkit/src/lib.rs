//! Shared support for Glassbox's tests and benchmarks (a dev-dependency only; never shipped).
//!
//! - [`fixture`], [`tiny`], [`minilm`]: the committed tiny checkpoints and the packaged MiniLM.
//! - [`lines`]: a child's output read on a thread, so a test waits with a timeout instead of
//!   blocking on a process that never writes.
//! - [`Server`]: `glassbox serve` as a real process on a free loopback port, killed on drop,
//!   its log kept for assertions.
//! - [`schema::conforms`]: does an answer conform to the server's own OpenAPI document?
//!
//! (The model crate's own tests cannot use this crate: it depends on `glassbox-model`, and a
//! second copy of that crate's types would not match the first.)

pub mod schema;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glassbox_model::{registry, Device, Model};

/// The longest a test waits for a line from a child process.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A committed test checkpoint (`tiny-gpt2`, `tiny-llama`, `tiny-bert`, …) in
/// `crates/glassbox-model/tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../glassbox-model/tests/fixtures")
        .join(name)
}

/// A committed test checkpoint, loaded on the CPU.
pub fn tiny(name: &str) -> Model {
    Model::load(&fixture(name), &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading the fixture {name}: {e}"))
}

/// The packaged MiniLM (installed by `glassbox setup`, which scripts/test runs).
pub fn minilm() -> Model {
    let dir =
        registry::resolve("minilm").expect("MiniLM must be installed: run `cargo glassbox setup`");
    Model::load(&dir, &Device::Cpu).expect("loading MiniLM")
}

/// The lines of a child's output, read on a thread: `recv_timeout` on the receiver waits
/// with a limit.
pub fn lines(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A `glassbox serve` process; killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or `https://…`).
    pub url: String,
    /// Everything the server has written to stderr so far (its log).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `glassbox serve --config CONFIG --listen 127.0.0.1:0` with the binary `bin` (a test's
    /// `env!("CARGO_BIN_EXE_glassbox")`), once it says where it listens.
    pub fn start(bin: &str, config: &Path) -> Server {
        let mut serve = Command::new(bin);
        serve.arg("serve").arg("--config").arg(config);
        serve.args(["--listen", "127.0.0.1:0"]);
        Server::start_with(serve)
    }

    /// Starts a server through `command` (which ends by running `glassbox serve … --listen
    /// 127.0.0.1:0`, possibly wrapped) and waits for its `listening on URL` line; if none
    /// comes, fails with what the server wrote to stderr.
    pub fn start_with(mut command: Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting glassbox serve");
        let errors = lines(child.stderr.take().expect("piped stderr"));
        let Ok(line) = lines(child.stdout.take().expect("piped stdout")).recv_timeout(READ_TIMEOUT)
        else {
            let _ = child.kill(); // so that its stderr ends
            let said: Vec<String> = errors.iter().collect();
            panic!("the server did not start: {}", said.join("\n"));
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in errors {
                if let Ok(mut logs) = kept.lock() {
                    logs.push(line);
                }
            }
        });
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no listening line: {line:?}"))
            .to_string();
        Server { child, url, logs }
    }

    /// The server's log so far, one string.
    pub fn log(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
