//! `vigil`: the command-line client.

use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use vigil_bootstrap::Flavor;
use vigil_cli::bench::{self, BenchOptions};
use vigil_cli::client::Client;
use vigil_cli::demo::{self, DemoOptions};
use vigil_cli::table::Style;
use vigil_cli::{Output, view};

/// Vigil: fault detection and recovery for AI training clusters.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
struct Cli {
    /// Controller HTTP address [default: http://127.0.0.1:7080].
    #[arg(long, global = true, env = "VIGIL_API")]
    controller: Option<String>,
    /// Output format [default: table].
    #[arg(short = 'o', long, global = true, value_enum, env = "VIGIL_OUTPUT")]
    output: Option<Output>,
    /// TOML config file with `controller` and `output` keys.
    #[arg(long, global = true, env = "VIGIL_CLI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// For example: `vigil completions bash > /etc/bash_completion.d/vigil`,
    /// or `vigil completions zsh > "${fpath[1]}/_vigil"`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Every node and card with its health and the evidence for it.
    Nodes,
    /// Jobs, their ranks, progress and state.
    Jobs,
    /// The live event feed, until interrupted.
    Watch {
        /// Start after this feed sequence number (0: everything retained).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Recovery incidents, newest first.
    History {
        /// Only this job's incidents.
        #[arg(long)]
        job: Option<String>,
        /// Only incidents detected at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[command(subcommand)]
        show: Option<HistoryCmd>,
    },
    /// Allocated versus effective card-hours, with the losses by cause.
    Ledger {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// From this time (RFC 3339; minute granularity).
        #[arg(long)]
        since: Option<String>,
        /// Until this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Group by job (default), or the losses by the node, card or card
        /// model that caused them, or by cause.
        #[arg(long, value_parser = ["job", "node", "card", "model", "cause"])]
        by: Option<String>,
        /// The checkpoint interval that maximizes ETTR (Young/Daly), from
        /// the observed failure rate and checkpoint and restart costs.
        #[arg(long)]
        advise: bool,
    },
    /// Take a node or one card out of service (manual quarantine).
    Cordon {
        /// NODE or NODE/CARD.
        target: String,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put a cordoned or failed node or card back in service.
    Uncordon {
        /// NODE or NODE/CARD.
        target: String,
    },
    /// An embedded controller and a simulated cluster running a scenario.
    Demo {
        /// Scenario file (TOML); the built-in scenario when absent.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Scenario seconds per wall second.
        #[arg(long, default_value_t = 2.0)]
        speed: f64,
        /// Keep the demo's SQLite store in this directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Serve the embedded controller's HTTP API and dashboard here
        /// (default: a free port on 127.0.0.1).
        #[arg(long, env = "VIGIL_DEMO_HTTP_LISTEN")]
        http_listen: Option<std::net::SocketAddr>,
    },
    /// Load generator: many simulated agents against a controller.
    Bench {
        /// Simulated nodes (agents).
        #[arg(long, default_value_t = 1000)]
        nodes: u32,
        /// Cards per node.
        #[arg(long, default_value_t = 8)]
        cards: u32,
        /// Heartbeats per second per agent.
        #[arg(long, default_value_t = 1.0)]
        hz: f64,
        /// Seconds to run before measuring.
        #[arg(long, default_value_t = 5)]
        warmup_s: u64,
        /// Seconds to measure.
        #[arg(long, default_value_t = 30)]
        duration_s: u64,
        /// The vigil-controller binary (default: beside this one).
        #[arg(long)]
        controller_bin: Option<PathBuf>,
        /// Store URL for the controller under test.
        #[arg(long)]
        store: Option<String>,
        /// After the ingest measurement, run one job across every node,
        /// inject XID 79 on one card, and time detection and the recovery
        /// orders (one extra spare agent takes the failed node's place).
        #[arg(long)]
        recovery: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HistoryCmd {
    /// One incident with its full timeline.
    Show { id: String },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map_or(&[][..], Vec::as_slice)
}

/// The CLI's config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    controller: Option<String>,
    output: Option<String>,
}

/// Resolves flags and environment over the config file over defaults.
fn settings(cli: &Cli) -> anyhow::Result<(String, Output)> {
    let file = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", p.display()))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {}", p.display(), e.message()))?
        }
        None => FileConfig::default(),
    };
    let output = match (cli.output, file.output.as_deref()) {
        (Some(o), _) => o,
        (None, Some("json")) => Output::Json,
        (None, Some("table") | None) => Output::Table,
        (None, Some(other)) => anyhow::bail!("config: output {other:?} must be table or json"),
    };
    let controller = cli
        .controller
        .clone()
        .or(file.controller)
        .unwrap_or_else(|| "http://127.0.0.1:7080".to_owned());
    Ok((controller, output))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut std::io::stdout());
        return Ok(());
    }
    let (controller, out) = settings(&cli)?;
    match cli.command {
        Command::Completions { .. } => Ok(()),
        Command::Demo {
            scenario,
            speed,
            data_dir,
            http_listen,
        } => {
            let opts = DemoOptions {
                scenario,
                speed,
                output: out,
                data_dir,
                http_listen,
            };
            run_demo(opts).await
        }
        bench @ Command::Bench { .. } => run_bench(bench_options(bench)?, out).await,
        Command::Cordon { target, reason } => {
            let body = serde_json::json!({ "target": target, "reason": reason });
            post_target(&controller, out, "cordon", &target, body).await
        }
        Command::Uncordon { target } => {
            let body = serde_json::json!({ "target": target });
            post_target(&controller, out, "uncordon", &target, body).await
        }
        Command::Nodes => list(&controller, out, "/api/v1/nodes", view::nodes).await,
        Command::Jobs => list(&controller, out, "/api/v1/jobs", view::jobs).await,
        Command::Ledger {
            job,
            since,
            until,
            by,
            advise,
        } => {
            let c = Client::new(&controller)?;
            if advise {
                let v = c.get("/api/v1/ledger/advice").await?;
                return show(out, &v, |v| view::advice(array(v)));
            }
            let v = c.get(&ledger_path(job, since, until, by)?).await?;
            show(out, &v, |v| view::ledger(array(v), Style::detect()))
        }
        Command::History { job, since, show } => history(&controller, out, job, since, show).await,
        Command::Watch { from } => watch(&controller, out, from).await,
    }
}

/// Prints `v` as JSON, or as the table `table` renders.
fn show(out: Output, v: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    match out {
        Output::Json => print_json(v),
        Output::Table => {
            print!("{}", table(v));
            Ok(())
        }
    }
}

/// `/api/v1/nodes` or `/api/v1/jobs`, as JSON or a table.
async fn list(
    controller: &str,
    out: Output,
    path: &str,
    table: fn(&[Value], i64, Style) -> String,
) -> anyhow::Result<()> {
    let v = Client::new(controller)?.get(path).await?;
    show(out, &v, |v| table(array(v), now_ms(), Style::detect()))
}

async fn run_demo(opts: DemoOptions) -> anyhow::Result<()> {
    let out = opts.output;
    let report = demo::run(opts).await?;
    if out == Output::Json {
        print_json(&report)?;
    }
    Ok(())
}

fn bench_options(cmd: Command) -> anyhow::Result<BenchOptions> {
    let Command::Bench {
        nodes,
        cards,
        hz,
        warmup_s,
        duration_s,
        controller_bin,
        store,
        recovery,
    } = cmd
    else {
        anyhow::bail!("not the bench command");
    };
    Ok(BenchOptions {
        recovery,
        nodes,
        cards,
        hz,
        warmup: Duration::from_secs(warmup_s),
        duration: Duration::from_secs(duration_s),
        controller_bin,
        store,
    })
}

async fn run_bench(opts: BenchOptions, out: Output) -> anyhow::Result<()> {
    let r = bench::run(opts).await?;
    if out == Output::Json {
        return print_json(&r);
    }
    let v = serde_json::to_value(&r)?;
    print!(
        "{}",
        vigil_cli::table::render_with(&["METRIC", "VALUE"], &metric_rows(&v), Style::detect())
    );
    Ok(())
}

/// One `[name, value]` row per benchmark figure; nested objects (the
/// recovery timing) become `outer.inner` rows.
fn metric_rows(v: &Value) -> Vec<Vec<String>> {
    let mut flat: Vec<(String, &Value)> = Vec::new();
    for (k, v) in v.as_object().into_iter().flatten() {
        match v.as_object() {
            Some(inner) => flat.extend(inner.iter().map(|(ik, iv)| (format!("{k}.{ik}"), iv))),
            None => flat.push((k.clone(), v)),
        }
    }
    flat.into_iter()
        .map(|(k, v)| {
            let val = match v {
                Value::Number(n) if n.is_f64() => match n.as_f64() {
                    Some(f) => format!("{f:.2}"),
                    None => n.to_string(),
                },
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![k, val]
        })
        .collect()
}

/// `POST /api/v1/cordon` or `/api/v1/uncordon`.
async fn post_target(
    controller: &str,
    out: Output,
    verb: &str,
    target: &str,
    body: Value,
) -> anyhow::Result<()> {
    let c = Client::new(controller)?;
    let v = c.post(&format!("/api/v1/{verb}"), &body).await?;
    match out {
        Output::Json => print_json(&v),
        Output::Table => {
            println!("{verb}ed {target}");
            Ok(())
        }
    }
}

/// `path` with its query string, if any.
fn with_query(path: &str, q: &[String]) -> String {
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

fn ledger_path(
    job: Option<String>,
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
) -> anyhow::Result<String> {
    let mut q = Vec::new();
    if let Some(j) = job {
        vigil_core::JobId::new(j.clone()).map_err(|e| anyhow::anyhow!("--job: {e}"))?;
        q.push(format!("job={j}"));
    }
    for (name, t) in [("since", since), ("until", until)] {
        if let Some(t) = t {
            vigil_core::Timestamp::parse_rfc3339(&t)
                .map_err(|e| anyhow::anyhow!("--{name}: {e}"))?;
            q.push(format!("{name}={}", t.replace('+', "%2B")));
        }
    }
    if let Some(b) = by {
        q.push(format!("by={b}"));
    }
    Ok(with_query("/api/v1/ledger", &q))
}

async fn history(
    controller: &str,
    out: Output,
    job: Option<String>,
    since: Option<String>,
    show_cmd: Option<HistoryCmd>,
) -> anyhow::Result<()> {
    let c = Client::new(controller)?;
    if let Some(HistoryCmd::Show { id }) = show_cmd {
        let v = c.get(&format!("/api/v1/incidents/{id}")).await?;
        return show(out, &v, |v| view::incident(v, Style::detect()));
    }
    let mut q = Vec::new();
    if let Some(j) = job {
        q.push(format!("job={j}"));
    }
    if let Some(s) = since {
        vigil_core::Timestamp::parse_rfc3339(&s).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
        q.push(format!("since={s}"));
    }
    let v = c.get(&with_query("/api/v1/incidents", &q)).await?;
    show(out, &v, |v| {
        if array(v).is_empty() {
            "no incidents\n".to_owned()
        } else {
            view::incidents(array(v), Style::detect())
        }
    })
}

async fn watch(controller: &str, out: Output, from: u64) -> anyhow::Result<()> {
    let c = Client::new(controller)?;
    let width = Style::detect().width;
    c.watch(from, |id, kind, data| {
        match out {
            Output::Json => println!("{data}"),
            Output::Table => println!("{}", watch_line(id, kind, data, width)),
        }
        true
    })
    .await
}

/// One feed event as a table line, cut to the terminal's width.
fn watch_line(id: u64, kind: &str, data: &str, width: Option<usize>) -> String {
    let v: Value = serde_json::from_str(data).unwrap_or_else(|e| {
        tracing::warn!(id, error = %e, "feed event is not JSON");
        Value::Null
    });
    let at = v["at"].as_str().unwrap_or("");
    let line = format!("{id:>8} {at:<24} {kind:<18} {}", v["data"]);
    match width {
        Some(w) if line.chars().count() > w => {
            let cut: String = line.chars().take(w.saturating_sub(1)).collect();
            format!("{cut}…")
        }
        _ => line,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    vigil_bootstrap::init_tracing("warn");
    let r = vigil_bootstrap::block_on("vigil", Flavor::MultiThread, async {
        tokio::select! {
            r = run(cli) => r,
            _ = vigil_bootstrap::interrupt() => Ok(()),
        }
    });
    match r {
        Ok(r) => vigil_bootstrap::exit_code("vigil", r),
        Err(code) => code,
    }
}
