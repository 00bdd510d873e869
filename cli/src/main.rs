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
            let report = demo::run(DemoOptions {
                scenario,
                speed,
                output: out,
                data_dir,
                http_listen,
            })
            .await?;
            if out == Output::Json {
                print_json(&report)?;
            }
            Ok(())
        }
        Command::Bench {
            nodes,
            cards,
            hz,
            warmup_s,
            duration_s,
            controller_bin,
            store,
            recovery,
        } => {
            let r = bench::run(BenchOptions {
                recovery,
                nodes,
                cards,
                hz,
                warmup: Duration::from_secs(warmup_s),
                duration: Duration::from_secs(duration_s),
                controller_bin,
                store,
            })
            .await?;
            if out == Output::Json {
                return print_json(&r);
            }
            let v = serde_json::to_value(&r)?;
            // Nested objects (the recovery timing) become `outer.inner` rows.
            let mut flat: Vec<(String, &Value)> = Vec::new();
            for (k, v) in v.as_object().into_iter().flatten() {
                match v.as_object() {
                    Some(inner) => {
                        flat.extend(inner.iter().map(|(ik, iv)| (format!("{k}.{ik}"), iv)))
                    }
                    None => flat.push((k.clone(), v)),
                }
            }
            let rows: Vec<Vec<String>> = flat
                .into_iter()
                .map(|(k, v)| {
                    let val = match v {
                        Value::Number(n) if n.is_f64() => {
                            format!("{:.2}", n.as_f64().unwrap_or(0.0))
                        }
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    vec![k, val]
                })
                .collect();
            print!(
                "{}",
                vigil_cli::table::render_with(&["METRIC", "VALUE"], &rows, Style::detect())
            );
            Ok(())
        }
        Command::Cordon { target, reason } => {
            let c = Client::new(&controller)?;
            let v = c
                .post(
                    "/api/v1/cordon",
                    &serde_json::json!({ "target": target, "reason": reason }),
                )
                .await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    println!("cordoned {target}");
                    Ok(())
                }
            }
        }
        Command::Uncordon { target } => {
            let c = Client::new(&controller)?;
            let v = c
                .post("/api/v1/uncordon", &serde_json::json!({ "target": target }))
                .await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    println!("uncordoned {target}");
                    Ok(())
                }
            }
        }
        Command::Nodes => {
            let c = Client::new(&controller)?;
            let v = c.get("/api/v1/nodes").await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    print!("{}", view::nodes(array(&v), now_ms(), Style::detect()));
                    Ok(())
                }
            }
        }
        Command::Jobs => {
            let c = Client::new(&controller)?;
            let v = c.get("/api/v1/jobs").await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    print!("{}", view::jobs(array(&v), now_ms(), Style::detect()));
                    Ok(())
                }
            }
        }
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
                return match out {
                    Output::Json => print_json(&v),
                    Output::Table => {
                        print!("{}", view::advice(array(&v)));
                        Ok(())
                    }
                };
            }
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
            let path = if q.is_empty() {
                "/api/v1/ledger".to_owned()
            } else {
                format!("/api/v1/ledger?{}", q.join("&"))
            };
            let v = c.get(&path).await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    print!("{}", view::ledger(array(&v), Style::detect()));
                    Ok(())
                }
            }
        }
        Command::History { job, since, show } => {
            let c = Client::new(&controller)?;
            if let Some(HistoryCmd::Show { id }) = show {
                let v = c.get(&format!("/api/v1/incidents/{id}")).await?;
                return match out {
                    Output::Json => print_json(&v),
                    Output::Table => {
                        print!("{}", view::incident(&v, Style::detect()));
                        Ok(())
                    }
                };
            }
            let mut q = Vec::new();
            if let Some(j) = job {
                q.push(format!("job={j}"));
            }
            if let Some(s) = since {
                vigil_core::Timestamp::parse_rfc3339(&s)
                    .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
                q.push(format!("since={s}"));
            }
            let path = if q.is_empty() {
                "/api/v1/incidents".to_owned()
            } else {
                format!("/api/v1/incidents?{}", q.join("&"))
            };
            let v = c.get(&path).await?;
            match out {
                Output::Json => print_json(&v),
                Output::Table => {
                    if array(&v).is_empty() {
                        println!("no incidents");
                    } else {
                        print!("{}", view::incidents(array(&v), Style::detect()));
                    }
                    Ok(())
                }
            }
        }
        Command::Watch { from } => {
            let c = Client::new(&controller)?;
            let width = Style::detect().width;
            c.watch(from, |id, kind, data| {
                match out {
                    Output::Json => println!("{data}"),
                    Output::Table => {
                        let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                        let at = v["at"].as_str().unwrap_or("");
                        let line = format!("{id:>8} {at:<24} {kind:<18} {}", v["data"]);
                        match width {
                            Some(w) if line.chars().count() > w => {
                                let cut: String = line.chars().take(w.saturating_sub(1)).collect();
                                println!("{cut}…");
                            }
                            _ => println!("{line}"),
                        }
                    }
                }
                true
            })
            .await
        }
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
