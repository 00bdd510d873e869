//! Controller configuration: flags, `VIGIL_*` environment variables and an
//! optional TOML file, validated before any socket is bound.

use crate::actions::ActionsConfig;
use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use vigil_core::cluster::ClusterConfig;
use vigil_core::liveness::LivenessConfig;
use vigil_core::rules::{RuleTable, XidOverride};

/// `vigil-controller`: keeps cluster state, detects and localizes faults,
/// records incidents, serves the API and dashboard.
#[derive(Debug, Parser)]
#[command(name = "vigil-controller", version, about, long_about = None)]
pub struct Args {
    /// gRPC address for agents and API clients.
    #[arg(long, env = "VIGIL_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// HTTP address for the dashboard, JSON API, SSE feed and metrics.
    #[arg(long, env = "VIGIL_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Store: sqlite://PATH or postgres://...
    #[arg(long, env = "VIGIL_STORE")]
    pub store: Option<String>,
    /// TOML config file (flags and environment override it).
    #[arg(long, env = "VIGIL_CONTROLLER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Heartbeat period agents are told to use, milliseconds.
    #[arg(long, env = "VIGIL_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u32>,
    /// Heartbeat intervals of silence before a node is suspect.
    #[arg(long, env = "VIGIL_SUSPECT_AFTER")]
    pub suspect_after: Option<f64>,
    /// Heartbeat intervals of silence after which a node is lost whatever
    /// its heartbeat history (the adaptive detector may declare it earlier,
    /// but never before `min_lost_after` intervals).
    #[arg(long, env = "VIGIL_LOST_AFTER")]
    pub lost_after: Option<f64>,
    /// Record what recovery would do, do nothing.
    #[arg(long, env = "VIGIL_SHADOW")]
    pub shadow: bool,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub grpc_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub store: Option<String>,
    pub heartbeat_ms: Option<u32>,
    pub suspect_after: Option<f64>,
    pub lost_after: Option<f64>,
    pub min_lost_after: Option<f64>,
    pub phi_suspect: Option<f64>,
    pub phi_lost: Option<f64>,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub workload: Option<vigil_core::workload::WorkloadConfig>,
    #[serde(default)]
    pub actions: ActionsConfig,
}

/// Operator overrides of the signal rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    #[serde(default)]
    pub xid: Vec<XidOverride>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub store: String,
    pub cluster: ClusterConfig,
    /// Action back-ends and shadow mode.
    pub actions: ActionsConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            store: "sqlite://./vigil-data/vigil.db".to_owned(),
            cluster: ClusterConfig::default(),
            actions: ActionsConfig::default(),
        }
    }
}

impl ControllerConfig {
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
        let mut cfg = ControllerConfig::default();
        if let Some(a) = args.grpc_listen.or(file.grpc_listen) {
            cfg.grpc_listen = a;
        }
        if let Some(a) = args.http_listen.or(file.http_listen) {
            cfg.http_listen = a;
        }
        if let Some(s) = args.store.or(file.store) {
            if !(s.starts_with("sqlite://")
                || s.starts_with("postgres://")
                || s.starts_with("postgresql://"))
            {
                return Err(format!(
                    "--store {s:?}: expected sqlite://PATH or postgres://..."
                ));
            }
            cfg.store = s;
        }
        let mut l = LivenessConfig::default();
        if let Some(ms) = args.heartbeat_ms.or(file.heartbeat_ms) {
            l.heartbeat_ms = ms;
        }
        if let Some(v) = args.suspect_after.or(file.suspect_after) {
            l.suspect_after = v;
        }
        if let Some(v) = args.lost_after.or(file.lost_after) {
            l.lost_after = v;
        }
        if let Some(v) = file.min_lost_after {
            l.min_lost_after = v;
        }
        if let Some(v) = file.phi_suspect {
            l.phi_suspect = v;
        }
        if let Some(v) = file.phi_lost {
            l.phi_lost = v;
        }
        l.validate()?;
        if l.heartbeat_ms > 60_000 {
            return Err("--heartbeat-ms must be at most 60000".to_owned());
        }
        let mut actions = file.actions;
        actions.shadow |= args.shadow;
        actions.validate()?;
        cfg.cluster = ClusterConfig {
            liveness: l,
            rules: RuleTable::with_overrides(&file.rules.xid),
            workload: file.workload.unwrap_or_default(),
            shadow: actions.shadow,
            ..ClusterConfig::default()
        };
        cfg.actions = actions;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ControllerConfig, String> {
        let mut v = vec!["vigil-controller"];
        v.extend_from_slice(args);
        ControllerConfig::from_args(Args::try_parse_from(v).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.grpc_listen.port(), 7070);
        assert!(parse(&["--store", "mysql://x"]).is_err());
        assert!(parse(&["--lost-after", "1.0"]).is_err());
        assert!(parse(&["--grpc-listen", "nowhere"]).is_err());
    }

    #[test]
    fn rule_overrides_from_the_file() {
        let dir = std::env::temp_dir().join(format!("vigil-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[[rules.xid]]\ncode = 13\nclass = \"hardware\"\naction = \"reset_card\"\n",
        )
        .expect("write");
        let c = parse(&["--config", path.to_str().expect("utf8")]).expect("valid");
        let r = c.cluster.rules.classify(vigil_core::model::Signal::Xid(13));
        assert_eq!(r.class, vigil_core::rules::Class::Hardware);
        std::fs::write(
            &path,
            "[[rules.xid]]\ncode = 13\nclass = \"blue\"\naction = \"none\"\n",
        )
        .expect("write");
        assert!(parse(&["--config", path.to_str().expect("utf8")]).is_err());
        std::fs::write(&path, "bogus = 1\n").expect("write");
        assert!(
            parse(&["--config", path.to_str().expect("utf8")]).is_err_and(|e| e.contains("bogus"))
        );
    }
}
