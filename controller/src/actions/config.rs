//! `[actions]` in the controller's configuration file: shadow mode and the
//! exec, Slurm and Kubernetes back-ends.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[actions]` in the controller's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// Record what would be done, do nothing: no worker orders, no
    /// quarantine commands, no back-end calls.
    #[serde(default)]
    pub shadow: bool,
    pub exec: Option<ExecConfig>,
    pub slurm: Option<SlurmConfig>,
    pub kubernetes: Option<KubeConfig>,
}

fn default_timeout() -> u64 {
    30
}

/// A command run for every request, with the request and incident as JSON
/// on stdin and in `VIGIL_*` environment variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_scontrol() -> String {
    "scontrol".to_owned()
}

fn yes() -> bool {
    true
}

/// Slurm: drain quarantined nodes, resume released ones, requeue jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    #[serde(default = "default_scontrol")]
    pub scontrol: String,
    /// Vigil job id -> Slurm job id. A numeric Vigil job id is used as is.
    #[serde(default)]
    pub jobs: BTreeMap<String, String>,
    /// Vigil node id -> Slurm node name (default: the same).
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
    /// `scontrol requeue` jobs that no agent supervises.
    #[serde(default = "yes")]
    pub requeue: bool,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_api() -> String {
    "https://kubernetes.default.svc".to_owned()
}
fn default_token() -> String {
    "/var/run/secrets/kubernetes.io/serviceaccount/token".to_owned()
}
fn default_ca() -> String {
    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".to_owned()
}
fn default_namespace() -> String {
    "default".to_owned()
}
fn default_selector() -> String {
    "vigil.dev/job={job}".to_owned()
}
fn default_taint() -> String {
    "vigil.dev/quarantined".to_owned()
}

/// Kubernetes: cordon and taint quarantined nodes, delete the job's pods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    /// API server; in a pod, the default reaches it.
    #[serde(default = "default_api")]
    pub api: String,
    /// Bearer token file (the pod's service account by default); empty for none.
    #[serde(default = "default_token")]
    pub token_file: String,
    /// CA bundle for the API server's certificate; empty for the system roots.
    #[serde(default = "default_ca")]
    pub ca_file: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Label selector of a job's pods; `{job}` is replaced by the job id.
    #[serde(default = "default_selector")]
    pub pod_selector: String,
    /// Taint key put on quarantined nodes (effect NoSchedule).
    #[serde(default = "default_taint")]
    pub taint_key: String,
    /// Vigil node id -> Kubernetes node name (default: the same).
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

impl ActionsConfig {
    /// Refuses a configuration this build cannot carry out.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(e) = &self.exec
            && e.command.first().is_none_or(|c| c.trim().is_empty())
        {
            return Err("[actions.exec] command must name a program".to_owned());
        }
        if let Some(s) = &self.slurm
            && s.scontrol.trim().is_empty()
        {
            return Err("[actions.slurm] scontrol must name a program".to_owned());
        }
        if let Some(k) = &self.kubernetes {
            if !cfg!(feature = "kubernetes") {
                return Err("[actions.kubernetes]: this vigil-controller was built without Kubernetes support (cargo feature `kubernetes`)".to_owned());
            }
            if !(k.api.starts_with("https://") || k.api.starts_with("http://")) {
                return Err(format!(
                    "[actions.kubernetes] api {:?}: expected an http(s) URL",
                    k.api
                ));
            }
        }
        Ok(())
    }

    pub fn any_backend(&self) -> bool {
        self.exec.is_some() || self.slurm.is_some() || self.kubernetes.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> ActionsConfig {
        toml::from_str(toml_text).expect("valid config")
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert!(cfg("[exec]\ncommand = []\n").validate().is_err());
        assert!(toml::from_str::<ActionsConfig>("[slurm]\nbogus = 1\n").is_err());
        if !cfg!(feature = "kubernetes") {
            let e = cfg("[kubernetes]\n").validate().expect_err("refused");
            assert!(e.contains("cargo feature"), "{e}");
        }
    }
}
