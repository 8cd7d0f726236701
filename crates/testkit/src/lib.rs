//! Test harness: each test gets its own database and its own exchange/queue names, a real mock
//! LLM server over HTTP, and workers in-process or as child processes.
//!
//! A crate of its own, used as a dev-dependency by `tests/` and `benches/`, so that none of it
//! reaches the shipped binary.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use clap::Parser as _;
use lapin::{Connection, options::BasicGetOptions, types::AMQPValue};
use mock_llm::{FaultPlan, MockLlmServer, QuotaSettings};
use roadmap_worker::{
    amqp::{self, Publisher, Topology, properties},
    cli::{Cli, Command},
    client::{self, EventWatcher},
    config::{AmqpSettings, WorkerSettings},
    domain::Plan,
    store::dead_letters as letters,
    worker::{self, Running},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PG_HINT: &str = "Postgres must run on 127.0.0.1:5432 with trust auth for user postgres: \
    `pg_ctlcluster $(ls /etc/postgresql) main start`, or `docker compose up -d postgres`";
pub const AMQP_HINT: &str = "RabbitMQ must run on 127.0.0.1:5672 with guest/guest: \
    `rabbitmq-server -detached`, or `docker compose up -d rabbitmq`";

fn base_pg() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Every batch row written, stored or folded away by its job's completion, as `batch` (the row
/// as JSON), once [`TestEnv::keep_folded_batches`] is in place: a table expression for `FROM`.
pub const ALL_BATCHES: &str =
    "(SELECT to_jsonb(b) AS batch FROM batches b UNION ALL SELECT batch FROM folded_batches) AS b";

/// One test's private world.
#[derive(Debug)]
pub struct TestEnv {
    pub name: String,
    pub database_url: String,
    pub topology: Topology,
    pub mock: MockLlmServer,
    pub connection: Connection,
    pub publisher: Publisher,
    cleaned: bool,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_plan(FaultPlan::default()).await
    }

    pub async fn with_plan(plan: FaultPlan) -> Self {
        Self::with_mock(plan, Duration::ZERO).await
    }

    /// A world whose mock LLM answers after `latency`.
    pub async fn with_mock(plan: FaultPlan, latency: Duration) -> Self {
        Self::with_quota(plan, latency, QuotaSettings::default()).await
    }

    /// Like [`Self::with_mock`], the mock keeping `quota` as a provider keeps its rate limits.
    pub async fn with_quota(plan: FaultPlan, latency: Duration, quota: QuotaSettings) -> Self {
        // Worker logs go to the test's captured output, shown when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,lapin=warn".into())
                    .add_directive(roadmap_worker::telemetry::QUIET_RETURNS.parse().unwrap()),
            )
            .try_init();
        let name = format!("rwtest_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let database_url = format!("{}/{name}", base_pg());
        let (_probe, _) = tokio_postgres::connect(&format!("{}/postgres", base_pg()), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot reach Postgres ({e}). {PG_HINT}"));
        let settings = amqp_settings(&name);
        let connection = amqp::connect(&settings, &name)
            .await
            .unwrap_or_else(|e| panic!("cannot reach RabbitMQ ({e:#}). {AMQP_HINT}"));
        let topology = Topology::new(&name, 5);
        topology
            .declare(&connection.create_channel().await.unwrap())
            .await
            .expect("declaring the test topology");
        let publisher = Publisher::new(&connection).await.unwrap();
        let mock = MockLlmServer::start_with_quota("127.0.0.1:0".parse().unwrap(), plan, latency, quota)
            .await
            .unwrap();
        Self {
            name,
            database_url,
            topology,
            mock,
            connection,
            publisher,
            cleaned: false,
        }
    }

    /// Worker settings for this test, through the real command line: `provider` (`openai` or
    /// `gemini`) pointed at the mock server, a free metrics port, short grace. `extra` flags
    /// override.
    pub fn settings_for(&self, provider: &str, extra: &[&str]) -> WorkerSettings {
        let base_url = match provider {
            "gemini" => self.mock.gemini_base_url(),
            _ => self.mock.openai_base_url(),
        };
        let defaults = [
            ("--database-url", self.database_url.as_str()),
            ("--database-pool-size", "8"),
            ("--amqp-namespace", &self.name),
            ("--llm-provider", provider),
            ("--llm-base-url", &base_url),
            ("--llm-api-key", "test-key"),
            ("--metrics-addr", "127.0.0.1:0"),
            ("--shutdown-grace-secs", "5"),
            ("--llm-max-retry-delay-ms", "200"),
            ("--worker-concurrency", "8"),
            ("--llm-probe-interval-secs", "1"),
            // A replica stopped by a test is taken for dead 2 s after its last heartbeat.
            ("--owner-grace-secs", "2"),
        ];
        let mut args = vec!["roadmap-worker", "run"];
        for (flag, value) in defaults {
            // A flag given in `extra` replaces the default (clap refuses a flag twice).
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, value]);
            }
        }
        args.extend_from_slice(extra);
        let amqp = amqp_url();
        args.extend_from_slice(&["--amqp-url", &amqp]);
        match Cli::try_parse_from(args).expect("valid test flags").command {
            Command::Run(settings) => *settings,
            _ => unreachable!(),
        }
    }

    /// Starts a worker in this process and waits until it consumes.
    pub async fn start_worker(&self, extra: &[&str]) -> WorkerHandle {
        self.start_worker_for("openai", extra).await
    }

    pub async fn start_worker_for(&self, provider: &str, extra: &[&str]) -> WorkerHandle {
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let settings = self.settings_for(provider, extra);
        let join = tokio::spawn(worker::run(settings, shutdown.clone(), Some(tx)));
        let running = match rx.await {
            Ok(running) => running,
            Err(_) => panic!("worker failed to start: {:?}", join.await),
        };
        WorkerHandle {
            shutdown,
            join,
            running,
        }
    }

    /// A backend that takes every event and keeps none: a queue bound to `roadmap.#` that holds
    /// no message (`x-max-length` 0), so events are routed, as with a real backend, at no cost.
    /// Keep the channel alive as long as events should be taken.
    pub async fn event_sink(&self) -> lapin::Channel {
        let channel = self.connection.create_channel().await.unwrap();
        let mut args = lapin::types::FieldTable::default();
        args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(0));
        let queue = channel
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                self.topology.events_exchange.as_str().into(),
                "roadmap.#".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        channel
    }

    pub async fn watcher(&self) -> EventWatcher {
        EventWatcher::new(&self.connection, &self.topology).await.unwrap()
    }

    pub async fn publish(&self, body: &Value) {
        client::publish_job(&self.publisher, &self.topology, body.to_string().as_bytes())
            .await
            .unwrap();
    }

    pub async fn publish_raw(&self, body: &[u8], content_type: Option<&str>) {
        let mut props = lapin::BasicProperties::default().with_delivery_mode(2);
        if let Some(ct) = content_type {
            props = props.with_content_type(ct.into());
        }
        self.publish_with(body, props).await;
    }

    /// Publishes `body` to the jobs exchange with exactly these properties.
    pub async fn publish_with(&self, body: &[u8], props: lapin::BasicProperties) {
        self.publisher
            .publish(
                &self.topology.jobs_exchange,
                amqp::topology::JOB_ROUTING_KEY,
                body,
                props,
                true,
            )
            .await
            .unwrap();
    }

    /// A client on this test's database (created by the worker if needed).
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot open the test database ({e}). {PG_HINT}"));
        tokio::spawn(conn);
        client
    }

    /// Keeps a copy of every batch row deleted from now on, as JSON in `folded_batches`: a
    /// completion folds its job's batches away, and some tests look at each batch of a
    /// completed job (its outcome, calls, writing time). Read them with [`ALL_BATCHES`]. Call it
    /// once a worker has migrated the database, before the jobs it is for complete.
    pub async fn keep_folded_batches(&self) {
        let db = self.db().await;
        // Worker processes may still be migrating: `batches` is all the trigger needs.
        eventually(Duration::from_secs(30), "the batches table", || async {
            let row = db
                .query_one("SELECT to_regclass('batches') IS NOT NULL", &[])
                .await
                .ok()?;
            row.get::<_, bool>(0).then_some(())
        })
        .await;
        db.batch_execute(
            "CREATE TABLE folded_batches (batch jsonb NOT NULL);
                 CREATE FUNCTION keep_folded_batch() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO folded_batches VALUES (to_jsonb(OLD)); RETURN OLD; END $$;
                 CREATE TRIGGER keep_folded_batch BEFORE DELETE ON batches
                     FOR EACH ROW EXECUTE FUNCTION keep_folded_batch();",
        )
        .await
        .expect("the folded batches' table and trigger");
    }

    /// The plan stored with job `job_id` (with its outline, once written).
    pub async fn stored_plan(&self, job_id: Uuid) -> Plan {
        let row = self
            .db()
            .await
            .query_one("SELECT plan FROM jobs WHERE job_id = $1", &[&job_id])
            .await
            .expect("the job's row");
        serde_json::from_value(row.get(0)).expect("a stored plan")
    }

    /// A pool on this test's database whose sessions carry `replica`'s name, as a worker's do.
    pub async fn pool(&self, replica: &str) -> deadpool_postgres::Pool {
        let args = ["roadmap-worker", "migrate", "--database-url", &self.database_url];
        let Command::Migrate(db) = Cli::try_parse_from(args).unwrap().command else {
            unreachable!()
        };
        let name = format!("{}{replica}", roadmap_worker::store::jobs::APP_PREFIX);
        roadmap_worker::store::connect(&db, &name).await.unwrap()
    }

    /// Takes every dead letter filed so far (they are removed), with its reason: the rows of
    /// `dead_letters`, then whatever waits in the broker's dead-letter queue (copies filed
    /// while Postgres was away). Headers are the message's own plus `x-reject-reason` and
    /// `x-reject-message`, as a broker copy carries them.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        // No database or no table yet (no worker has migrated it): nothing filed there.
        if let Ok((client, conn)) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            if let Ok(rows) = letters::list(&client, &letters::Filter::default(), i64::MAX).await {
                let ids: Vec<i64> = rows.iter().map(|l| l.id).collect();
                let taken = letters::delete(&client, &ids)
                    .await
                    .expect("taking the dead letters");
                for letter in taken {
                    let mut headers = letter
                        .properties
                        .get("headers")
                        .and_then(Value::as_object)
                        .map(properties::table_from_json)
                        .unwrap_or_default();
                    for (name, value) in [
                        (properties::REJECT_REASON, &letter.reason),
                        (properties::REJECT_MESSAGE, &letter.message),
                    ] {
                        headers.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
                    }
                    out.push(DeadLetter {
                        reason: Some(letter.reason),
                        headers,
                        body: letter.body,
                    });
                }
            }
        }
        let channel = self.connection.create_channel().await.unwrap();
        while let Some(msg) = channel
            .basic_get(
                self.topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let headers = msg.delivery.properties.headers().clone().unwrap_or_default();
            let reason = match headers.inner().get(properties::REJECT_REASON) {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                _ => None,
            };
            out.push(DeadLetter {
                reason,
                headers,
                body: msg.delivery.data,
            });
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// Deletes this test's queues, exchanges and database.
    pub async fn cleanup(mut self) {
        let _ = self.connection.close(200, "test done".into()).await;
        remove(&self.name, &self.topology).await;
        self.cleaned = true;
    }
}

/// A test that panicked before `cleanup` still leaves nothing behind.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (name, topology) = (self.name.clone(), self.topology.clone());
        // Drop may run inside the test's runtime, which cannot be blocked on: use a thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(remove(&name, &topology));
        })
        .join();
    }
}

/// Deletes a test's queues, exchanges and database, on a connection of its own (the test's may
/// have died with a broker restart).
async fn remove(name: &str, topology: &Topology) {
    if let Ok(connection) = amqp::connect(&amqp_settings(name), name).await
        && let Ok(channel) = connection.create_channel().await
    {
        for q in topology.queues() {
            let _ = channel.queue_delete(q.into(), Default::default()).await;
        }
        for x in [
            &topology.jobs_exchange,
            &topology.events_exchange,
            &topology.dead_letter_exchange,
        ] {
            let _ = channel
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
        }
        let _ = connection.close(200, "test cleanup".into()).await;
    }
    if let Ok((admin, conn)) =
        tokio_postgres::connect(&format!("{}/postgres", base_pg()), tokio_postgres::NoTls).await
    {
        tokio::spawn(conn);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

pub fn amqp_settings(namespace: &str) -> AmqpSettings {
    AmqpSettings {
        url: amqp_url().parse().unwrap(),
        namespace: namespace.into(),
        delivery_limit: 5,
    }
}

/// A filed dead letter: its reason, the message's headers with the reason's, and its bytes.
#[derive(Debug)]
pub struct DeadLetter {
    pub reason: Option<String>,
    pub headers: lapin::types::FieldTable,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct WorkerHandle {
    pub shutdown: CancellationToken,
    pub join: JoinHandle<anyhow::Result<()>>,
    pub running: Running,
}

impl WorkerHandle {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.join.await.expect("worker task").expect("worker ran cleanly");
    }
}

/// A valid job message (contract v1) with a fresh job_id.
pub fn job(weeks: u32, role: &str) -> (Uuid, Value) {
    let job_id = Uuid::new_v4();
    let body = json!({
        "job_id": job_id,
        "user_id": "user-1",
        "target_role": role,
        "duration_weeks": weeks,
        "experience_level": "intermediate",
        "hours_per_week": 8,
        "focus_areas": ["testing"],
    });
    (job_id, body)
}

/// Polls `probe` until it yields `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the job's row until `probe` accepts it.
pub async fn job_row<T>(
    db: &tokio_postgres::Client,
    job_id: Uuid,
    what: &str,
    probe: impl Fn(&tokio_postgres::Row) -> Option<T>,
) -> T {
    eventually(Duration::from_secs(30), what, || async {
        let row = db
            .query_opt(
                "SELECT status, batches_done, owner, claims, abandoned, delivery_acked FROM jobs WHERE job_id = $1",
                &[&job_id],
            )
            .await
            .ok()??;
        probe(&row)
    })
    .await
}

/// The test database once the first worker has created and migrated it.
pub async fn db_when_ready(env: &TestEnv) -> tokio_postgres::Client {
    eventually(Duration::from_secs(30), "the test database", || async {
        let (client, conn) = tokio_postgres::connect(&env.database_url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        client
            .query_opt("SELECT 1 FROM jobs LIMIT 1", &[])
            .await
            .ok()
            .map(|_| client)
    })
    .await
}
pub use process::{sigterm, worker_binary};

pub mod contract_cases;
pub mod hostile;
pub mod job_strategies;
pub mod memory;
mod proxy;
pub use proxy::{Mode as ProxyMode, Proxy};
mod process;
pub mod runs;
pub mod scripted;
pub mod services;
