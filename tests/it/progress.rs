//! Promise: `enqueue --wait` reads well on a terminal. Under a pseudo-terminal (`script`) it
//! draws a progress bar from the job's progress events that reaches the job's total, then a
//! summary; without a terminal it prints one line per stored batch. No log lines interleave.

use std::process::Output;

use testkit::{TestEnv, amqp_url};

fn enqueue(env: &TestEnv, under_pty: bool) -> Output {
    let bin = env!("CARGO_BIN_EXE_roadmap-worker");
    let args = "enqueue --wait --weeks 6 --role 'Data Engineer'";
    let mut cmd = if under_pty {
        // `script` gives the command a terminal and copies what it draws to stdout.
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qec", &format!("{bin} {args}"), "/dev/null"]);
        cmd
    } else {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &format!("{bin} {args}")]);
        cmd
    };
    cmd.env("AMQP_URL", amqp_url())
        .env("AMQP_NAMESPACE", &env.name)
        .env_remove("RUST_LOG")
        .env("COLUMNS", "120")
        .output()
        .expect("running roadmap-worker enqueue (is `script` from util-linux installed?)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_draws_a_bar_to_the_total_on_a_terminal_and_lines_elsewhere() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[]).await;

    let out = enqueue(&env, true);
    let drawn = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{drawn}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        drawn.contains("100% 3/3 batches") && drawn.contains(" tokens"),
        "the bar reaches the total: {drawn:?}"
    );
    assert!(drawn.contains("done"), "{drawn:?}");
    assert!(
        drawn.contains("Roadmap ") && drawn.contains("6 weeks"),
        "then the summary: {drawn:?}"
    );
    assert!(
        !drawn.contains(" INFO "),
        "no log lines on the terminal: {drawn:?}"
    );

    let out = enqueue(&env, false);
    let lines = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{lines}");
    assert!(
        lines.contains("batch 3/3 stored"),
        "one line per batch without a terminal: {lines:?}"
    );
    assert!(!lines.contains('\r'), "no bar drawn into a pipe: {lines:?}");
    worker.stop().await;
    env.cleanup().await;
}
