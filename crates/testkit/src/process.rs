//! Worker processes for the tests that must SIGKILL or SIGTERM one: the real binary, with a
//! test's settings.

use std::process::Stdio;

use super::{TestEnv, amqp_url};

impl TestEnv {
    /// Starts the worker binary as a child process, so that a test can SIGKILL it.
    pub fn spawn_worker_process(&self, extra_env: &[(&str, &str)]) -> tokio::process::Child {
        self.worker_command(extra_env)
            .spawn()
            .expect("starting the worker binary")
    }

    /// The worker binary's `run` with this test's settings (OpenAI provider on the mock, a free
    /// metrics port, warnings only); `extra_env` overrides.
    pub fn worker_command(&self, extra_env: &[(&str, &str)]) -> tokio::process::Command {
        let bin = worker_binary();
        // A profiler around the worker, for a bench run by hand: `WORKER_WRAPPER=heaptrack`.
        // Stopping the child then stops the wrapper, not the worker under it: end that by hand
        // (`pkill -f 'roadmap-worker run'`), and delete the run's queues if its bench was cut.
        let mut cmd = match std::env::var("WORKER_WRAPPER") {
            Ok(wrapper) if !wrapper.is_empty() => {
                let mut words = wrapper.split_whitespace();
                let mut cmd = tokio::process::Command::new(words.next().unwrap_or_default());
                cmd.args(words).arg(bin);
                cmd
            }
            _ => tokio::process::Command::new(bin),
        };
        cmd.arg("run")
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", amqp_url())
            .env("AMQP_NAMESPACE", &self.name)
            .env("LLM_PROVIDER", "openai")
            .env("LLM_BASE_URL", self.mock.openai_base_url())
            .env("LLM_API_KEY", "test-key")
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            // A replica stopped by a test is taken for dead 2 s after its last heartbeat.
            .env("OWNER_GRACE_SECS", "2")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// The `roadmap-worker` binary of the build that runs this test or bench: cargo builds it beside
/// the test executable (`target/<profile>/deps/it-…` → `target/<profile>/roadmap-worker`).
/// `ROADMAP_WORKER_BIN` names another.
pub fn worker_binary() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("ROADMAP_WORKER_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in target/<profile>/deps");
    let bin = profile_dir.join("roadmap-worker");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build`; `cargo test` and `cargo bench` do it)",
        bin.display()
    );
    bin
}

/// Sends SIGTERM to a child process (the orchestrator's polite stop).
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("the child is running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid} failed");
}
