//! Agent configuration: flags, `VIGIL_*` environment variables and an
//! optional TOML file, validated before anything starts.

use crate::backoff::BackoffConfig;
use crate::cards::CardSpec;
use crate::checkpoints::WatchConfig;
use crate::logtail::TailConfig;
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use vigil_core::{JobId, NodeId};
use vigil_ingest::checkpoint::Layout;

/// `vigil-agent`: probes this node's cards and host, receives training
/// progress, and streams both to the Vigil controller.
#[derive(Debug, Parser)]
#[command(name = "vigil-agent", version, about, long_about = None)]
pub struct Args {
    /// Controller gRPC address, e.g. http://10.0.0.5:7070.
    #[arg(long, env = "VIGIL_CONTROLLER")]
    pub controller: Option<String>,
    /// This node's name (default: the hostname).
    #[arg(long, env = "VIGIL_NODE_ID")]
    pub node_id: Option<String>,
    /// Card probe: auto, none, nvml, smi, exec:CMD or sim:N.
    #[arg(long, env = "VIGIL_CARDS")]
    pub cards: Option<String>,
    /// Where training processes send progress records.
    #[arg(long, env = "VIGIL_PROGRESS_LISTEN")]
    pub progress_listen: Option<SocketAddr>,
    /// The job whose workers this agent runs.
    #[arg(long, env = "VIGIL_JOB")]
    pub job: Option<String>,
    /// Stand by as a spare: start the worker command only when assigned.
    #[arg(long, env = "VIGIL_SPARE")]
    pub spare: bool,
    /// TOML config file (flags and environment override it).
    /// Watch this directory for complete checkpoints of --job.
    #[arg(long, env = "VIGIL_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// megatron, deepspeed, dcp or hf_trainer (default: any whose markers are present).
    #[arg(long, env = "VIGIL_CHECKPOINT_LAYOUT")]
    pub checkpoint_layout: Option<String>,
    #[arg(long, env = "VIGIL_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Heartbeat period in milliseconds until the controller sets one.
    #[arg(long, env = "VIGIL_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u32>,
    /// Events kept for replay while the controller is unreachable.
    #[arg(long, env = "VIGIL_SPOOL_CAPACITY")]
    pub spool_capacity: Option<usize>,
    /// Follow this training log and report the progress it shows (needs --job).
    #[arg(long, env = "VIGIL_LOG_TAIL")]
    pub log_tail: Option<PathBuf>,
    /// Log format of --log-tail: auto, megatron, deepspeed, hf_trainer or torchtitan.
    #[arg(long, env = "VIGIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// The rank whose log --log-tail follows (default 0).
    #[arg(long, env = "VIGIL_LOG_RANK")]
    pub log_rank: Option<u32>,
    /// The world size reported for --log-tail (default 1).
    #[arg(long, env = "VIGIL_LOG_WORLD_SIZE")]
    pub log_world_size: Option<u32>,
    /// Worker command to supervise (after `--`).
    #[arg(last = true)]
    pub worker: Vec<String>,
}

/// The config file's shape; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub controller: Option<String>,
    pub node_id: Option<String>,
    pub cards: Option<String>,
    pub progress_listen: Option<SocketAddr>,
    pub job: Option<String>,
    pub spare: Option<bool>,
    pub heartbeat_ms: Option<u32>,
    pub spool_capacity: Option<usize>,
    pub worker: Option<Vec<String>>,
    pub checkpoint_dir: Option<PathBuf>,
    pub checkpoint_layout: Option<String>,
    pub log_tail: Option<PathBuf>,
    pub log_format: Option<String>,
    pub log_rank: Option<u32>,
    pub log_world_size: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub controller: String,
    pub node_id: NodeId,
    pub cards: CardSpec,
    pub progress_listen: Option<SocketAddr>,
    pub job: Option<JobId>,
    pub spare: bool,
    pub heartbeat: Duration,
    pub spool_capacity: usize,
    pub probe_timeout: Duration,
    pub backoff: BackoffConfig,
    pub host_metrics: bool,
    pub worker: Vec<String>,
    /// Obeys worker orders (a worker command, or the simulator's ranks).
    pub supervises: bool,
    /// The checkpoint directory watcher, if configured.
    pub checkpoints: Option<WatchConfig>,
    /// The training log followed, if configured.
    pub log_tail: Option<TailConfig>,
}

impl AgentConfig {
    /// A configuration for `node` against `controller` with defaults.
    pub fn new(controller: impl Into<String>, node: NodeId) -> Self {
        AgentConfig {
            controller: controller.into(),
            node_id: node,
            cards: CardSpec::Auto,
            progress_listen: None,
            job: None,
            spare: false,
            heartbeat: Duration::from_secs(1),
            spool_capacity: 100_000,
            probe_timeout: Duration::from_secs(2),
            backoff: BackoffConfig::default(),
            host_metrics: true,
            worker: Vec::new(),
            supervises: false,
            checkpoints: None,
            log_tail: None,
        }
    }

    /// Merges flags over the file over defaults, and validates.
    pub fn from_args(args: Args) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("config {}: {}", path.display(), e.message()))?
            }
            None => FileConfig::default(),
        };
        let controller = args
            .controller
            .or(file.controller)
            .ok_or("--controller URL is required (or VIGIL_CONTROLLER)")?;
        validate_url(&controller)?;
        let node = match args.node_id.or(file.node_id) {
            Some(n) => n,
            None => hostname()?,
        };
        let node_id = NodeId::new(node).map_err(|e| format!("--node-id: {e}"))?;
        let mut cfg = AgentConfig::new(controller, node_id);
        if let Some(c) = args.cards.or(file.cards) {
            cfg.cards = c.parse()?;
        }
        cfg.progress_listen = args
            .progress_listen
            .or(file.progress_listen)
            .or_else(|| "127.0.0.1:7071".parse().ok());
        if let Some(j) = args.job.or(file.job) {
            cfg.job = Some(JobId::new(j).map_err(|e| format!("--job: {e}"))?);
        }
        cfg.spare = args.spare || file.spare.unwrap_or(false);
        if let Some(ms) = args.heartbeat_ms.or(file.heartbeat_ms) {
            if !(10..=60_000).contains(&ms) {
                return Err(format!("--heartbeat-ms {ms}: must be within 10..=60000"));
            }
            cfg.heartbeat = Duration::from_millis(u64::from(ms));
        }
        if let Some(n) = args.spool_capacity.or(file.spool_capacity) {
            if n == 0 {
                return Err("--spool-capacity must be at least 1".to_owned());
            }
            cfg.spool_capacity = n;
        }
        cfg.worker = if args.worker.is_empty() {
            file.worker.unwrap_or_default()
        } else {
            args.worker
        };
        cfg.supervises = !cfg.worker.is_empty();
        let layout = match args.checkpoint_layout.or(file.checkpoint_layout) {
            Some(l) if l != "auto" => Some(
                l.parse::<Layout>()
                    .map_err(|e| format!("--checkpoint-layout: {e}"))?,
            ),
            _ => None,
        };
        if let Some(dir) = args.checkpoint_dir.or(file.checkpoint_dir) {
            let job = cfg
                .job
                .clone()
                .ok_or("--checkpoint-dir needs --job (whose checkpoints the directory holds)")?;
            cfg.checkpoints = Some(WatchConfig {
                dir,
                layout,
                job,
                poll: Duration::from_secs(2),
            });
        }
        cfg.log_tail = log_tail(
            &cfg,
            args.log_tail.or(file.log_tail),
            args.log_format.or(file.log_format),
            args.log_rank.or(file.log_rank),
            args.log_world_size.or(file.log_world_size),
        )?;
        if cfg.spare && cfg.worker.is_empty() {
            return Err("--spare needs a worker command after --".to_owned());
        }
        Ok(cfg)
    }
}

/// The `--log-tail` settings, validated.
fn log_tail(
    cfg: &AgentConfig,
    path: Option<PathBuf>,
    format: Option<String>,
    rank: Option<u32>,
    world_size: Option<u32>,
) -> Result<Option<TailConfig>, String> {
    let Some(path) = path else {
        if format.is_some() || rank.is_some() || world_size.is_some() {
            return Err(
                "--log-format, --log-rank and --log-world-size need --log-tail FILE".to_owned(),
            );
        }
        return Ok(None);
    };
    if path.as_os_str().is_empty() {
        return Err("--log-tail: empty path".to_owned());
    }
    let job = cfg
        .job
        .clone()
        .ok_or("--log-tail needs --job (the job whose log it is)")?;
    let mut t = TailConfig::new(path, job);
    if let Some(f) = format {
        t.preset = f.parse().map_err(|e| format!("--log-format: {e}"))?;
    }
    t.world_size = world_size.unwrap_or(1);
    if t.world_size == 0 || t.world_size > vigil_core::progress::MAX_WORLD_SIZE {
        return Err(format!(
            "--log-world-size {}: must be within 1..={}",
            t.world_size,
            vigil_core::progress::MAX_WORLD_SIZE
        ));
    }
    t.rank = rank.unwrap_or(0);
    if t.rank >= t.world_size {
        return Err(format!(
            "--log-rank {} must be below --log-world-size {}",
            t.rank, t.world_size
        ));
    }
    Ok(Some(t))
}

fn validate_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("--controller {url:?}: must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--controller {url:?}: missing host"));
    }
    Ok(())
}

fn hostname() -> Result<String, String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map_err(|e| format!("cannot read the hostname ({e}); pass --node-id"))?;
    Ok(raw.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let mut v = vec!["vigil-agent"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        AgentConfig::from_args(a)
    }

    #[test]
    fn flags_are_validated() {
        let c = parse(&[
            "--controller",
            "http://127.0.0.1:7070",
            "--node-id",
            "n0",
            "--cards",
            "sim:4",
        ])
        .expect("valid");
        assert_eq!(c.cards, CardSpec::Sim(4));
        assert_eq!(c.node_id.as_str(), "n0");
        assert!(parse(&["--node-id", "n0"]).is_err_and(|e| e.contains("--controller")));
        assert!(parse(&["--controller", "127.0.0.1:7070"]).is_err_and(|e| e.contains("http://")));
        assert!(
            parse(&["--controller", "http://x", "--node-id", "a b"])
                .is_err_and(|e| e.contains("node"))
        );
        assert!(parse(&["--controller", "http://x", "--cards", "gpu"]).is_err());
        assert!(parse(&["--controller", "http://x", "--heartbeat-ms", "0"]).is_err());
        assert!(
            parse(&["--controller", "http://x", "--spare"]).is_err_and(|e| e.contains("worker"))
        );
    }

    #[test]
    fn log_tail_flags() {
        let base = ["--controller", "http://x", "--node-id", "n0"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        let c = with(&[
            "--job",
            "gpt",
            "--log-tail",
            "train.log",
            "--log-format",
            "megatron",
            "--log-rank",
            "7",
            "--log-world-size",
            "8",
        ])
        .expect("valid");
        let t = c.log_tail.expect("log tail configured");
        assert_eq!(t.path, PathBuf::from("train.log"));
        assert_eq!(t.preset, vigil_ingest::logtail::Preset::Megatron);
        assert_eq!((t.rank, t.world_size, t.job.as_str()), (7, 8, "gpt"));
        let c = with(&["--job", "gpt", "--log-tail", "train.log"]).expect("valid");
        let t = c.log_tail.expect("log tail configured");
        assert_eq!(
            (t.preset, t.rank, t.world_size, t.from_start),
            (vigil_ingest::logtail::Preset::Auto, 0, 1, false)
        );
        assert!(with(&["--log-tail", "train.log"]).is_err_and(|e| e.contains("--job")));
        assert!(
            with(&[
                "--job",
                "gpt",
                "--log-tail",
                "t.log",
                "--log-format",
                "nemo"
            ])
            .is_err_and(|e| e.contains("--log-format"))
        );
        assert!(
            with(&["--job", "gpt", "--log-tail", "t.log", "--log-rank", "1"])
                .is_err_and(|e| e.contains("--log-rank"))
        );
        assert!(
            with(&[
                "--job",
                "gpt",
                "--log-tail",
                "t.log",
                "--log-world-size",
                "0"
            ])
            .is_err()
        );
        assert!(
            with(&["--job", "gpt", "--log-format", "megatron"])
                .is_err_and(|e| e.contains("--log-tail"))
        );
        assert!(with(&[]).is_ok_and(|c| c.log_tail.is_none()));
    }

    #[test]
    fn log_tail_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("vigil-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("agent.toml");
        std::fs::write(
            &file,
            "controller = \"http://x\"\nnode_id = \"n0\"\njob = \"ft\"\nlog_tail = \"/var/log/train.log\"\nlog_format = \"hf_trainer\"\n",
        )
        .expect("write config");
        let path = file.to_string_lossy().into_owned();
        let c = parse(&["--config", &path]).expect("valid");
        let t = c.log_tail.expect("log tail configured");
        assert_eq!(t.path, PathBuf::from("/var/log/train.log"));
        assert_eq!(t.preset, vigil_ingest::logtail::Preset::HfTrainer);
        // A flag overrides the file.
        let c = parse(&["--config", &path, "--log-format", "deepspeed"]).expect("valid");
        assert_eq!(
            c.log_tail.map(|t| t.preset),
            Some(vigil_ingest::logtail::Preset::DeepSpeed)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn worker_command_after_dashes() {
        let c = parse(&[
            "--controller",
            "http://x",
            "--node-id",
            "n0",
            "--",
            "python3",
            "train.py",
            "--lr",
            "1",
        ])
        .expect("valid");
        assert_eq!(c.worker, ["python3", "train.py", "--lr", "1"]);
    }
}
