//! The machine's own Postgres and RabbitMQ, for the run-alone targets that stop, restart or
//! reconfigure them (never from `cargo test`, whose tests run side by side).

use std::process::Command;

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// `pg_ctlcluster <version> main <action>` on the machine's newest Debian cluster; `stop` is fast
/// (sessions are cut, as in a crash of the server).
pub fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .unwrap();
    let mut args = vec!["--skip-systemctl-redirect", version.as_str(), "main", action];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    sh("pg_ctlcluster", &args);
}

/// Starts Postgres again when dropped, even if the test panics while it is stopped.
#[derive(Debug)]
pub struct PostgresBack;

impl Drop for PostgresBack {
    fn drop(&mut self) {
        pg_ctl("start");
    }
}

/// Stops Postgres until the returned guard is dropped.
pub fn stop_postgres() -> PostgresBack {
    pg_ctl("stop");
    PostgresBack
}

/// Restarts the RabbitMQ application: every connection is cut, and transient messages in
/// durable queues are gone.
pub fn restart_rabbitmq() {
    sh("rabbitmqctl", &["-q", "stop_app"]);
    sh("rabbitmqctl", &["-q", "start_app"]);
}

/// The broker's consumer timeout shortened (checked every second) for channels opened while
/// the returned guard lives; dropping it puts RabbitMQ's defaults back.
pub fn short_consumer_timeout(ms: u64) -> BrokerDefaults {
    set_broker_env("consumer_timeout", ms);
    set_broker_env("channel_tick_interval", 1000);
    BrokerDefaults
}

/// Puts the broker's consumer timeout and channel tick back to RabbitMQ's defaults when dropped.
#[derive(Debug)]
pub struct BrokerDefaults;

impl Drop for BrokerDefaults {
    fn drop(&mut self) {
        set_broker_env("consumer_timeout", 1_800_000);
        set_broker_env("channel_tick_interval", 60_000);
    }
}

fn set_broker_env(key: &str, value: u64) {
    let expr = format!("application:set_env(rabbit, {key}, {value}).");
    sh("rabbitmqctl", &["-q", "eval", &expr]);
}

/// A second broker user with full rights on the default vhost (kept: adding it again is a no-op).
pub fn broker_user(name: &str, password: &str) {
    let _ = Command::new("rabbitmqctl")
        .args(["-q", "add_user", name, password])
        .status();
    sh(
        "rabbitmqctl",
        &["-q", "set_permissions", "-p", "/", name, ".*", ".*", ".*"],
    );
}

/// Raises RabbitMQ's memory alarm (the high watermark set near zero) until the returned guard
/// is dropped: every connection that publishes is blocked meanwhile.
pub fn memory_alarm() -> MemoryAlarm {
    sh("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", "0.00001"]);
    MemoryAlarm
}

/// Puts RabbitMQ's default memory high watermark (0.4) back when dropped.
#[derive(Debug)]
pub struct MemoryAlarm;

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        sh("rabbitmqctl", &["-q", "set_vm_memory_high_watermark", "0.4"]);
    }
}
