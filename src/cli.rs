//! The command line: subcommands and their flags, each flag backed by an environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{AmqpSettings, DbSettings, LogFormat, WorkerSettings};

#[derive(Debug, Parser)]
#[command(
    name = "roadmap-worker",
    version,
    about = "Generates learning roadmaps from queued jobs, a few weeks per LLM call."
)]
pub struct Cli {
    /// Log lines as human text or JSON (RUST_LOG sets the filter).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: consume jobs until SIGTERM/SIGINT, then drain.
    Run(Box<WorkerSettings>),
    /// Create the database if missing and apply migrations, then exit.
    Migrate(DbSettings),
    /// Publish a job exactly as a web backend would.
    Enqueue(EnqueueArgs),
    /// Migrate, start a worker on the embedded mock, run one 12-week job end to end, summarise it.
    Demo(Box<DemoArgs>),
    /// Show where a job is, or list the running or failed jobs, from Postgres.
    Status(Box<StatusArgs>),
    /// Ask the fleet to stop a job at its next batch (as its user), and wait for the answer.
    Cancel(CancelArgs),
    /// Work with the dead letters (kept in Postgres): list, show, replay, purge.
    Dlq(Box<DlqArgs>),
    /// Declare the exchanges, queues and bindings the worker uses (as every replica does at
    /// start), so a backend can publish before the first worker runs; print what was declared.
    Declare(DeclareArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DeclareArgs {
    #[command(flatten)]
    pub amqp: AmqpSettings,
    /// Print the topology (names, types, queue arguments, bindings) without connecting.
    #[arg(long)]
    pub dry_run: bool,
    /// Print it as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub db: DbSettings,
    #[command(flatten)]
    pub amqp: AmqpSettings,
    #[command(subcommand)]
    pub action: DlqAction,
}

/// Which dead letters a replay or purge acts on; the conditions given must all hold.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqSelector {
    /// A dead letter's number in `dlq list`; repeat for several.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<i64>,
    /// The dead letters with this reason code.
    #[arg(long)]
    pub reason: Option<String>,
    /// The dead letters of this job.
    #[arg(long, value_name = "JOB_ID")]
    pub job: Option<uuid::Uuid>,
}

/// Every action first moves what waits in the broker's dead-letter queue into Postgres, then
/// works on the `dead_letters` table only: reading changes nothing, and numbers stay put.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// Count the dead letters by reason and list each one's number, reason, job, age and where
    /// the job stands.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, value_name = "JOB_ID")]
        job: Option<uuid::Uuid>,
    },
    /// Print one dead letter: reason, message, properties, headers and body (the lowest number
    /// without a selector).
    Show {
        /// Its number in `dlq list`.
        id: Option<i64>,
        /// The job's first dead letter.
        #[arg(long, value_name = "JOB_ID", conflicts_with = "id")]
        job: Option<uuid::Uuid>,
        #[arg(long)]
        json: bool,
    },
    /// Republish the selected dead letters to the work queue with their stored properties, then
    /// delete them; one still broken comes back with its reason. A job that already has its
    /// outcome (completed or failed) is not run again: the worker keeps its one outcome.
    Replay {
        #[command(flatten)]
        select: DlqSelector,
        /// Replace the content type (for a backend that labelled its messages wrongly).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Delete the selected dead letters for good; `--yes` confirms.
    Purge {
        #[command(flatten)]
        select: DlqSelector,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub amqp: AmqpSettings,
    /// The job to cancel.
    pub job_id: uuid::Uuid,
    /// The job's user: only they may cancel it.
    #[arg(long)]
    pub user: String,
    /// Seconds to wait for the answer (the job's failed event, or the cancel's rejection).
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbSettings,
    /// The job to show; without it, the running jobs (or with --failed, the failed ones).
    pub job_id: Option<uuid::Uuid>,
    /// JSON for scripts; a completed job's includes its roadmap.
    #[arg(long)]
    pub json: bool,
    /// List the running jobs (the default without a JOB_ID).
    #[arg(long, conflicts_with_all = ["job_id", "failed"])]
    pub running: bool,
    /// List the failed jobs.
    #[arg(long, conflicts_with = "job_id")]
    pub failed: bool,
    /// Only jobs updated within this long: 90s, 30m, 1h, 2d.
    #[arg(long, conflicts_with = "job_id", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// The role the roadmap leads to.
    #[arg(long, default_value = "Full Stack Developer")]
    pub role: String,
    #[arg(long, default_value_t = 12)]
    pub weeks: u32,
    #[arg(long, default_value = "demo-user")]
    pub user: String,
    /// beginner, intermediate or advanced.
    #[arg(long, default_value = "beginner")]
    pub level: String,
    #[arg(long, default_value_t = 10)]
    pub hours: u32,
    /// A focus area; repeat for several.
    #[arg(long = "focus")]
    pub focus: Vec<String>,
    #[arg(long, default_value = "en")]
    pub language: String,
    /// `interactive` or `bulk` (bulk goes to the bulk queue and yields to interactive work).
    #[arg(long, default_value = "interactive")]
    pub priority: String,
    /// Reuse a job id (to see idempotency); a new one by default.
    #[arg(long)]
    pub job_id: Option<uuid::Uuid>,
}

#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub amqp: AmqpSettings,
    #[command(flatten)]
    pub job: JobArgs,
    /// Publish this file's bytes as the message body instead of a job built from the flags.
    #[arg(long)]
    pub raw: Option<PathBuf>,
    /// Wait for the job's completed or failed event, with a progress bar on a terminal, and
    /// print a summary (or with --json the whole event).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: print the final event as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub job: JobArgs,
    /// Print the whole roadmap as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: a number with `s`, `m`, `h` or `d` (`90s`, `30m`, `1h`, `2d`).
fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 90s, 30m, 1h or 2d"))?;
    let secs = match unit {
        "s" => 1,
        "m" | "" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connection flags are taken after a subcommand's own subcommand too, where an operator
    /// types them.
    #[test]
    fn connection_flags_follow_nested_subcommands() {
        let cli = Cli::try_parse_from([
            "roadmap-worker",
            "dlq",
            "list",
            "--amqp-namespace",
            "integ",
            "--database-url",
            "postgres://u@db:5432/x",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Dlq(args) = cli.command else {
            panic!("not dlq")
        };
        assert_eq!(args.amqp.namespace, "integ");
        assert!(args.db.url.to_string().contains("db:5432/x"));
        assert!(matches!(args.action, DlqAction::List { .. }));
        // Before the nested subcommand, as before.
        let cli =
            Cli::try_parse_from(["roadmap-worker", "dlq", "--amqp-namespace", "integ", "list"]).unwrap();
        let Command::Dlq(args) = cli.command else {
            panic!("not dlq")
        };
        assert_eq!(args.amqp.namespace, "integ");
    }

    /// `status` reads the database; it does not create one, and its help says which commands do.
    #[test]
    fn the_database_url_help_says_which_commands_create_it() {
        use clap::CommandFactory as _;
        let mut command = Cli::command();
        let status = command.find_subcommand_mut("status").unwrap();
        let help = status.render_long_help().to_string();
        assert!(
            help.contains("`run`, `migrate` and `demo` create the database"),
            "{help}"
        );
    }

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(parse_since("30m"), Ok(std::time::Duration::from_secs(1800)));
        assert!(parse_since("1w").is_err());
        assert!(parse_since("soon").is_err());
    }
}
