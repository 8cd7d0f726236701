//! What each subcommand does; `main` only parses and dispatches here.

pub mod dlq;
mod progress;
pub mod status;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;
use uuid::Uuid;

use crate::{
    amqp::{self, Publisher, Topology},
    cli::{CancelArgs, Command, DeclareArgs, DemoArgs, EnqueueArgs, JobArgs},
    client::{self, EventWatcher},
    config::ProviderKind,
    domain::{
        Roadmap,
        event::{Completed, EventKind, JobFailure},
    },
    store, worker,
};

pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(settings) => worker::run(*settings, shutdown_on_signal(), None).await,
        Command::Migrate(db) => store::migrate_only(&db).await,
        Command::Enqueue(args) => enqueue(args).await,
        Command::Demo(mut args) => {
            // The demo runs offline unless told otherwise.
            args.worker.llm.provider.get_or_insert(ProviderKind::Mock);
            demo(*args).await
        }
        Command::Status(args) => status::status(*args).await,
        Command::Cancel(args) => cancel(args).await,
        Command::Dlq(args) => dlq::dlq(*args).await,
        Command::Declare(args) => declare(args).await,
    }
}

/// Declares the topology (unless `--dry-run`) and prints it.
async fn declare(args: DeclareArgs) -> anyhow::Result<()> {
    let topology = Topology::new(&args.amqp.namespace, args.amqp.delivery_limit);
    if !args.dry_run {
        let connection = amqp::connect(&args.amqp, "roadmap-declare").await?;
        topology
            .declare(&connection.create_channel().await?)
            .await
            .context("declaring the topology (a queue declared before with other arguments is refused by the broker: PRECONDITION_FAILED)")?;
        let _ = connection.close(200, "declared".into()).await;
    }
    let spec = topology.spec();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&spec_json(&spec))?);
        return Ok(());
    }
    for (name, k) in &spec.exchanges {
        println!("exchange {name} ({}, durable)", kind(k));
    }
    for queue in &spec.queues {
        let arguments: Vec<String> = queue
            .arguments
            .iter()
            .map(|(name, value)| format!("{name}={}", value.to_json()))
            .collect();
        println!("queue    {} (durable) {}", queue.name, arguments.join(" "));
        for (exchange, key) in &queue.bindings {
            println!("           bound to {exchange} with routing key {key}");
        }
    }
    let (name, k) = &spec.events_exchange;
    println!("exchange {name} ({}, durable)", kind(k));
    if !args.dry_run {
        println!("declared on the broker");
    }
    Ok(())
}

/// An exchange type as the broker names it (`direct`, `topic`).
fn kind(k: &lapin::ExchangeKind) -> String {
    format!("{k:?}").to_lowercase()
}

fn spec_json(spec: &amqp::topology::Spec) -> serde_json::Value {
    let mut exchanges: Vec<serde_json::Value> = spec
        .exchanges
        .iter()
        .map(|(name, k)| serde_json::json!({"name": name, "type": kind(k), "durable": true}))
        .collect();
    let (name, k) = &spec.events_exchange;
    exchanges.push(serde_json::json!({"name": name, "type": kind(k), "durable": true}));
    let queues: Vec<serde_json::Value> = spec
        .queues
        .iter()
        .map(|q| {
            let arguments: serde_json::Map<String, serde_json::Value> = q
                .arguments
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.to_json()))
                .collect();
            let bindings: Vec<serde_json::Value> = q
                .bindings
                .iter()
                .map(|(exchange, key)| serde_json::json!({"exchange": exchange, "routing_key": key}))
                .collect();
            serde_json::json!({"name": q.name, "durable": true, "arguments": arguments, "bindings": bindings})
        })
        .collect();
    serde_json::json!({"exchanges": exchanges, "queues": queues})
}

/// A token cancelled by the first SIGTERM or SIGINT; a second signal exits at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested; draining (signal again to exit now)");
        cancel.cancel();
        wait_for_signal().await;
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn job_body(job: &JobArgs) -> (Uuid, Vec<u8>) {
    let job_id = job.job_id.unwrap_or_else(Uuid::new_v4);
    let body = serde_json::json!({
        "job_id": job_id,
        "user_id": job.user,
        "target_role": job.role,
        "duration_weeks": job.weeks,
        "experience_level": job.level,
        "hours_per_week": job.hours,
        "focus_areas": job.focus,
        "language": job.language,
        "priority": job.priority,
    });
    (job_id, body.to_string().into_bytes())
}

async fn enqueue(args: EnqueueArgs) -> anyhow::Result<()> {
    let connection = amqp::connect(&args.amqp, "roadmap-enqueue").await?;
    let topology = Topology::new(&args.amqp.namespace, args.amqp.delivery_limit);
    topology.declare(&connection.create_channel().await?).await?;
    let publisher = Publisher::new(&connection).await?;
    let (job_id, body) = match &args.raw {
        Some(path) => (
            Uuid::nil(),
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => job_body(&args.job),
    };
    let mut watcher = if args.wait {
        Some(EventWatcher::new(&connection, &topology).await?)
    } else {
        None
    };
    client::publish_job(&publisher, &topology, &body).await?;
    if args.raw.is_some() {
        println!("published {} raw bytes to {}", body.len(), topology.jobs_exchange);
    } else {
        println!("published job {job_id} to {}", topology.jobs_exchange);
    }
    if let Some(watcher) = watcher.as_mut() {
        let mut bar = progress::Bar::new();
        let event = watcher
            .wait_for_end(job_id, Duration::from_secs(args.timeout_secs), |p| {
                bar.progress(p)
            })
            .await;
        let completed = event
            .as_ref()
            .is_ok_and(|e| e.kind() == Some(EventKind::Completed));
        bar.finish(completed, if completed { "done" } else { "ended" });
        let event = event?;
        match serde_json::from_value::<Completed>(event.body.clone()) {
            // The summary on the terminal; the whole event with --json.
            Ok(completed) if !args.json => {
                let wall = (completed.completed_at - completed.started_at)
                    .to_std()
                    .unwrap_or_default();
                print!("{}", summary(&completed, wall));
            }
            _ => println!("{}", serde_json::to_string_pretty(&event.body)?),
        }
    }
    Ok(())
}

/// Publishes a cancel and waits for its answer: the job's `roadmap.failed` (reason `cancelled`),
/// its completion if it ended first, or the cancel's rejection.
async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let connection = amqp::connect(&args.amqp, "roadmap-cancel").await?;
    let topology = Topology::new(&args.amqp.namespace, args.amqp.delivery_limit);
    topology.declare(&connection.create_channel().await?).await?;
    let publisher = Publisher::new(&connection).await?;
    let mut watcher = EventWatcher::new(&connection, &topology).await?;
    client::publish_cancel(&publisher, &topology, args.job_id, &args.user).await?;
    println!("cancel for job {} sent; waiting for the answer", args.job_id);
    let event = watcher
        .wait_for_end(args.job_id, Duration::from_secs(args.timeout_secs), |_| {})
        .await?;
    let reason = event.body["reason"].as_str().unwrap_or_default();
    match (event.kind(), reason) {
        (Some(EventKind::Failed), r) if r == JobFailure::Cancelled.as_str() => println!(
            "cancelled: {}",
            event.body["message"].as_str().unwrap_or_default()
        ),
        (Some(EventKind::CancelRejected), _) => {
            anyhow::bail!(
                "cancel refused ({reason}): {}",
                event.body["message"].as_str().unwrap_or_default()
            )
        }
        _ => anyhow::bail!(
            "the job ended before the cancel took effect: {} {reason}",
            event.routing_key
        ),
    }
    Ok(())
}

/// Migrates, runs a worker in this process, sends one job through the real broker and prints
/// what came back.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let settings = args.worker.clone();
    let shutdown = shutdown_on_signal();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let worker = tokio::spawn(worker::run(settings.clone(), shutdown.clone(), Some(started_tx)));
    let Ok(running) = started_rx.await else {
        return worker.await?.context("the worker did not start");
    };
    eprintln!(
        "worker {} up; metrics at http://{}/metrics",
        running.owner, running.metrics_addr
    );
    let connection = amqp::connect(&settings.amqp, "roadmap-demo").await?;
    let topology = Topology::new(&settings.amqp.namespace, settings.amqp.delivery_limit);
    let publisher = Publisher::new(&connection).await?;
    let mut watcher = EventWatcher::new(&connection, &topology).await?;
    let (job_id, body) = job_body(&args.job);
    let started = Instant::now();
    client::publish_job(&publisher, &topology, &body).await?;
    eprintln!(
        "published job {job_id}: {} weeks of \"{}\"",
        args.job.weeks, args.job.role
    );
    let mut bar = progress::Bar::new();
    let event = watcher
        .wait_for_end(job_id, Duration::from_secs(600), |p| bar.progress(p))
        .await;
    let completed = event
        .as_ref()
        .is_ok_and(|e| e.kind() == Some(EventKind::Completed));
    bar.finish(completed, if completed { "done" } else { "ended" });
    shutdown.cancel();
    worker.await??;
    let event = event?;
    if event.kind() != Some(EventKind::Completed) {
        anyhow::bail!("job failed: {}", event.body);
    }
    let completed: Completed = serde_json::from_value(event.body).context("reading the completion event")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&completed.roadmap)?);
    } else {
        print!("{}", summary(&completed, started.elapsed()));
    }
    Ok(())
}

fn summary(event: &Completed, elapsed: Duration) -> String {
    let Roadmap {
        roadmap_id,
        target_role,
        experience_level,
        hours_per_week,
        phases,
        weeks,
        ..
    } = &event.roadmap;
    let mut out = format!(
        "Roadmap {roadmap_id}\n  \"{target_role}\", {} weeks, {}, {hours_per_week} h/week\n  \
         {} batches ({} fallback), {} LLM calls, {} input + {} output tokens, {:.1}s end to end\n",
        event.duration_weeks,
        experience_level.as_str(),
        event.batches,
        event.fallback_batches,
        event.usage.llm_calls,
        event.usage.input_tokens,
        event.usage.output_tokens,
        elapsed.as_secs_f64(),
    );
    if let Some(quality) = &event.quality {
        let found: Vec<String> = quality
            .problems
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{} {n}", kind.as_str()))
            .collect();
        out.push_str(&format!(
            "  content checks: {}; {} batches re-asked for content\n",
            if found.is_empty() {
                "no problem".to_owned()
            } else {
                found.join(", ")
            },
            quality.reasked_batches
        ));
    }
    for phase in phases {
        out.push_str(&format!(
            "\n  Phase {}: {} (weeks {}-{})\n",
            phase.number, phase.title, phase.week_from, phase.week_to
        ));
        for week in weeks.iter().filter(|w| w.phase == phase.number) {
            let tasks: usize = week.days.iter().map(|d| d.tasks.len()).sum();
            let minutes: u32 = week.days.iter().flat_map(|d| &d.tasks).map(|t| t.minutes).sum();
            out.push_str(&format!(
                "    Week {:>2}: {} ({} days, {tasks} tasks, {:.1} h)\n",
                week.number,
                week.title,
                week.days.len(),
                minutes as f64 / 60.0
            ));
        }
    }
    out.push_str(&format!(
        "\n  completion event {} received from the events exchange\n",
        event.event_id
    ));
    out
}
