//! Action back-ends: what the controller asks the world to do when the core
//! quarantines a node or card, releases one, or restarts a job no agent
//! supervises.
//!
//! [`plan`] turns one [`ActionRequest`] into concrete [`Step`]s for every
//! configured back-end: the exec hook, Slurm (`scontrol`) and Kubernetes
//! (API calls; carried out only in builds with the `kubernetes` feature).
//! It is a pure function and tested as one. [`Executor`] carries the steps
//! out off the state task, each under a timeout, and reports every result
//! on the live feed (`action_done`, `action_failed`). In shadow mode the
//! steps are only published (`action_shadow`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use vigil_core::cluster::{ActionRequest, ActionVerb};
use vigil_core::incident::Incident;

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

/// One thing a back-end does for a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// Run a program.
    Exec {
        backend: &'static str,
        argv: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stdin: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
        timeout_s: u64,
    },
    /// Mark a Kubernetes node (un)schedulable and add or remove Vigil's taint.
    KubeNode {
        node: String,
        cordon: bool,
        taint: Option<String>,
    },
    /// Delete pods matching a selector (and a node, if given).
    KubeDeletePods {
        namespace: String,
        selector: String,
        node: Option<String>,
    },
    /// A back-end that has nothing to do, and why.
    Skip { backend: &'static str, why: String },
}

impl Step {
    pub fn backend(&self) -> &'static str {
        match self {
            Step::Exec { backend, .. } | Step::Skip { backend, .. } => backend,
            Step::KubeNode { .. } | Step::KubeDeletePods { .. } => "kubernetes",
        }
    }
}

fn verb_name(v: ActionVerb) -> &'static str {
    match v {
        ActionVerb::Quarantine => "quarantine",
        ActionVerb::Release => "release",
        ActionVerb::Restart => "restart",
    }
}

/// The steps every configured back-end takes for a request.
pub fn plan(cfg: &ActionsConfig, req: &ActionRequest, incident: Option<&Incident>) -> Vec<Step> {
    let mut out = Vec::new();
    if let Some(e) = &cfg.exec {
        out.push(exec_step(e, req, incident));
    }
    if let Some(s) = &cfg.slurm {
        out.extend(slurm_steps(s, req));
    }
    if let Some(k) = &cfg.kubernetes {
        out.extend(kube_steps(k, req));
    }
    out
}

fn exec_step(e: &ExecConfig, req: &ActionRequest, incident: Option<&Incident>) -> Step {
    let doc = json!({ "action": verb_name(req.verb), "request": req, "incident": incident });
    let mut env = vec![
        ("VIGIL_ACTION".to_owned(), verb_name(req.verb).to_owned()),
        ("VIGIL_REASON".to_owned(), req.reason.clone()),
    ];
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            env.push((k.to_owned(), v));
        }
    };
    put("VIGIL_INCIDENT", req.incident.map(|i| i.to_string()));
    put("VIGIL_JOB", req.job.as_ref().map(|j| j.to_string()));
    put("VIGIL_NODE", req.node.as_ref().map(|n| n.to_string()));
    put("VIGIL_CARD", req.card.map(|c| c.to_string()));
    put(
        "VIGIL_CHECKPOINT",
        req.checkpoint.as_ref().map(|c| c.path.clone()),
    );
    put(
        "VIGIL_CHECKPOINT_STEP",
        req.checkpoint.as_ref().map(|c| c.step.to_string()),
    );
    Step::Exec {
        backend: "exec",
        argv: e.command.clone(),
        stdin: Some(doc.to_string()),
        env,
        timeout_s: e.timeout_s,
    }
}

/// Slurm reasons are one line; quotes and newlines are dropped.
fn slurm_reason(req: &ActionRequest) -> String {
    let mut r = format!(
        "vigil {}: {}",
        req.incident
            .map_or_else(|| "operator".to_owned(), |i| i.to_string()),
        req.reason
    );
    if let Some(c) = req.card {
        r.push_str(&format!(" (card {c})"));
    }
    r.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\'')
        .take(200)
        .collect()
}

fn slurm_steps(s: &SlurmConfig, req: &ActionRequest) -> Vec<Step> {
    let exec = |args: Vec<String>| {
        let mut argv = vec![s.scontrol.clone()];
        argv.extend(args);
        Step::Exec {
            backend: "slurm",
            argv,
            stdin: None,
            env: Vec::new(),
            timeout_s: s.timeout_s,
        }
    };
    let node_name = req.node.as_ref().map(|n| {
        s.nodes
            .get(n.as_str())
            .cloned()
            .unwrap_or_else(|| n.to_string())
    });
    match req.verb {
        // Slurm schedules nodes, not single cards: a bad card drains its node.
        ActionVerb::Quarantine => match node_name {
            Some(n) => vec![exec(vec![
                "update".into(),
                format!("nodename={n}"),
                "state=drain".into(),
                format!("reason={}", slurm_reason(req)),
            ])],
            None => Vec::new(),
        },
        ActionVerb::Release => match (node_name, req.card) {
            (Some(n), None) => vec![exec(vec![
                "update".into(),
                format!("nodename={n}"),
                "state=resume".into(),
            ])],
            // One card back does not resume a node drained for another.
            _ => vec![Step::Skip {
                backend: "slurm",
                why: "a card release leaves the node's drain to the operator".to_owned(),
            }],
        },
        ActionVerb::Restart => {
            let Some(job) = &req.job else {
                return Vec::new();
            };
            if !s.requeue {
                return vec![Step::Skip {
                    backend: "slurm",
                    why: "requeue is off".to_owned(),
                }];
            }
            let id = s.jobs.get(job.as_str()).cloned().or_else(|| {
                job.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'_')
                    .then(|| job.to_string())
            });
            match id {
                Some(id) => vec![exec(vec!["requeue".into(), id])],
                None => vec![Step::Skip {
                    backend: "slurm",
                    why: format!("no Slurm job id for {job} (map it under [actions.slurm.jobs])"),
                }],
            }
        }
    }
}

fn kube_steps(k: &KubeConfig, req: &ActionRequest) -> Vec<Step> {
    let node = req.node.as_ref().map(|n| {
        k.nodes
            .get(n.as_str())
            .cloned()
            .unwrap_or_else(|| n.to_string())
    });
    let selector = |job: &vigil_core::JobId| k.pod_selector.replace("{job}", job.as_str());
    match req.verb {
        ActionVerb::Quarantine => {
            let Some(node) = node else { return Vec::new() };
            let mut out = vec![Step::KubeNode {
                node: node.clone(),
                cordon: true,
                taint: Some(
                    req.incident
                        .map_or_else(|| "operator".to_owned(), |i| i.to_string()),
                ),
            }];
            if let Some(job) = &req.job {
                out.push(Step::KubeDeletePods {
                    namespace: k.namespace.clone(),
                    selector: selector(job),
                    node: Some(node),
                });
            }
            out
        }
        ActionVerb::Release => match (node, req.card) {
            (Some(node), None) => vec![Step::KubeNode {
                node,
                cordon: false,
                taint: None,
            }],
            _ => vec![Step::Skip {
                backend: "kubernetes",
                why: "a card release leaves the node's cordon to the operator".to_owned(),
            }],
        },
        ActionVerb::Restart => match &req.job {
            Some(job) => vec![Step::KubeDeletePods {
                namespace: k.namespace.clone(),
                selector: selector(job),
                node: None,
            }],
            None => Vec::new(),
        },
    }
}

/// Carries out steps and reports each result.
#[derive(Debug, Clone)]
pub struct Executor {
    cfg: ActionsConfig,
}

/// The outcome of one step, for the feed.
pub type Report = (&'static str, Value);

impl Executor {
    pub fn new(cfg: ActionsConfig) -> Self {
        Executor { cfg }
    }

    /// Runs a request's steps in order; every result is a feed event.
    pub async fn run(&self, req: ActionRequest, incident: Option<Incident>) -> Vec<Report> {
        let steps = plan(&self.cfg, &req, incident.as_ref());
        let mut out = Vec::new();
        for step in steps {
            let base = json!({
                "action": verb_name(req.verb),
                "backend": step.backend(),
                "incident": req.incident,
                "node": req.node,
                "card": req.card,
                "job": req.job,
                "step": step,
            });
            if self.cfg.shadow {
                out.push(("action_shadow", base));
                continue;
            }
            let result = match &step {
                Step::Skip { .. } => Ok("skipped".to_owned()),
                Step::Exec {
                    argv,
                    stdin,
                    env,
                    timeout_s,
                    ..
                } => run_exec(argv, stdin.as_deref(), env, *timeout_s).await,
                Step::KubeNode { .. } | Step::KubeDeletePods { .. } => self.run_kube(&step).await,
            };
            let mut data = base;
            match result {
                Ok(detail) => {
                    data["detail"] = Value::String(detail);
                    out.push(("action_done", data));
                }
                Err(e) => {
                    tracing::warn!(backend = step.backend(), error = %e, "action failed");
                    data["error"] = Value::String(e);
                    out.push(("action_failed", data));
                }
            }
        }
        out
    }

    #[cfg(feature = "kubernetes")]
    async fn run_kube(&self, step: &Step) -> Result<String, String> {
        match &self.cfg.kubernetes {
            Some(k) => crate::kube::run(k, step).await,
            None => Err("no [actions.kubernetes] configured".to_owned()),
        }
    }

    #[cfg(not(feature = "kubernetes"))]
    async fn run_kube(&self, _step: &Step) -> Result<String, String> {
        Err("this build has no Kubernetes support (cargo feature `kubernetes`)".to_owned())
    }
}

/// Runs a program with a timeout; its output is kept short for the feed.
async fn run_exec(
    argv: &[String],
    stdin: Option<&str>,
    env: &[(String, String)],
    timeout_s: u64,
) -> Result<String, String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".to_owned());
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A hook that ignores its input must not fail the action.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(timeout_s), child.wait_with_output())
        .await
        .map_err(|_| format!("{prog} did not finish within {timeout_s} s; killed"))?
        .map_err(|e| format!("{prog}: {e}"))?;
    let short = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        s.trim().chars().take(500).collect::<String>()
    };
    if out.status.success() {
        Ok(short(&out.stdout))
    } else {
        Err(format!(
            "{prog} failed ({}): {}",
            out.status,
            short(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::incident::CheckpointRef;
    use vigil_core::{IncidentId, JobId, NodeId};

    fn req(verb: ActionVerb, card: Option<u32>) -> ActionRequest {
        ActionRequest {
            verb,
            incident: Some(IncidentId(7)),
            job: Some(JobId::new("pretrain").expect("valid")),
            node: Some(NodeId::new("n2").expect("valid")),
            card,
            reason: "xid:79".to_owned(),
            checkpoint: Some(CheckpointRef {
                step: 100,
                path: "/ckpt/step-100".to_owned(),
            }),
        }
    }

    fn cfg(toml_text: &str) -> ActionsConfig {
        toml::from_str(toml_text).expect("valid config")
    }

    fn argvs(steps: &[Step]) -> Vec<Vec<String>> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Exec { argv, .. } => Some(argv.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn slurm_drains_resumes_and_requeues() {
        let c = cfg("[slurm]\nnodes = { n2 = \"gpu-002\" }\njobs = { pretrain = \"4242\" }\n");
        let q = plan(&c, &req(ActionVerb::Quarantine, Some(5)), None);
        assert_eq!(
            argvs(&q),
            [vec![
                "scontrol".to_owned(),
                "update".into(),
                "nodename=gpu-002".into(),
                "state=drain".into(),
                "reason=vigil inc-7: xid:79 (card 5)".into()
            ]]
        );
        let mut r = req(ActionVerb::Release, None);
        r.incident = None;
        assert_eq!(
            argvs(&plan(&c, &r, None))[0][1..],
            ["update", "nodename=gpu-002", "state=resume"]
        );
        let rq = plan(&c, &req(ActionVerb::Restart, None), None);
        assert_eq!(
            argvs(&rq),
            [vec!["scontrol".to_owned(), "requeue".into(), "4242".into()]]
        );
        // An unmapped, non-numeric job is skipped with a reason.
        let c = cfg("[slurm]\n");
        let rq = plan(&c, &req(ActionVerb::Restart, None), None);
        assert!(matches!(&rq[0], Step::Skip { why, .. } if why.contains("no Slurm job id")));
    }

    #[test]
    fn kubernetes_cordons_taints_and_deletes_the_jobs_pods() {
        let c = cfg("[kubernetes]\nnamespace = \"train\"\n");
        let q = plan(&c, &req(ActionVerb::Quarantine, Some(5)), None);
        assert_eq!(
            q,
            [
                Step::KubeNode {
                    node: "n2".into(),
                    cordon: true,
                    taint: Some("inc-7".into())
                },
                Step::KubeDeletePods {
                    namespace: "train".into(),
                    selector: "vigil.dev/job=pretrain".into(),
                    node: Some("n2".into())
                }
            ]
        );
        let rs = plan(&c, &req(ActionVerb::Restart, None), None);
        assert_eq!(
            rs,
            [Step::KubeDeletePods {
                namespace: "train".into(),
                selector: "vigil.dev/job=pretrain".into(),
                node: None
            }]
        );
    }

    #[test]
    fn the_exec_hook_gets_json_and_environment() {
        let c = cfg("[exec]\ncommand = [\"/usr/local/bin/hook\", \"--x\"]\n");
        let s = plan(&c, &req(ActionVerb::Restart, None), None);
        let Step::Exec {
            argv, stdin, env, ..
        } = &s[0]
        else {
            panic!("exec step expected: {s:?}");
        };
        assert_eq!(argv[0], "/usr/local/bin/hook");
        let doc: Value = serde_json::from_str(stdin.as_deref().unwrap_or("")).expect("json");
        assert_eq!(doc["action"], "restart");
        assert_eq!(doc["request"]["checkpoint"]["step"], 100);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("VIGIL_INCIDENT"), Some("inc-7"));
        assert_eq!(get("VIGIL_CHECKPOINT"), Some("/ckpt/step-100"));
        assert_eq!(get("VIGIL_ACTION"), Some("restart"));
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

    #[tokio::test]
    async fn steps_run_time_out_and_report() {
        let dir = std::env::temp_dir().join(format!("vigil-actions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = dir.join("hook.out");
        let hook = dir.join("hook.sh");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\n{{ echo \"$VIGIL_ACTION $VIGIL_NODE\"; cat; }} > {}\necho done\n",
                out.display()
            ),
        )
        .expect("write");
        let c = ActionsConfig {
            exec: Some(ExecConfig {
                command: vec!["sh".into(), hook.display().to_string()],
                timeout_s: 10,
            }),
            ..Default::default()
        };
        let reports = Executor::new(c.clone())
            .run(req(ActionVerb::Quarantine, Some(5)), None)
            .await;
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].0, "action_done", "{:?}", reports[0].1);
        assert_eq!(reports[0].1["detail"], "done");
        let written = std::fs::read_to_string(&out).expect("hook ran");
        assert!(written.starts_with("quarantine n2\n{"), "{written}");
        // Shadow mode: the same request only reports what it would run.
        let _ = std::fs::remove_file(&out);
        let shadow = Executor::new(ActionsConfig { shadow: true, ..c });
        let reports = shadow.run(req(ActionVerb::Quarantine, Some(5)), None).await;
        assert_eq!(reports[0].0, "action_shadow");
        assert!(!out.exists(), "shadow mode ran the hook");
        // A hook that hangs is killed at its timeout; one that fails says so.
        let slow = Executor::new(ActionsConfig {
            exec: Some(ExecConfig {
                command: vec!["sleep".into(), "30".into()],
                timeout_s: 1,
            }),
            ..Default::default()
        });
        let r = slow.run(req(ActionVerb::Restart, None), None).await;
        assert_eq!(r[0].0, "action_failed");
        assert!(
            r[0].1["error"]
                .as_str()
                .is_some_and(|e| e.contains("within 1 s"))
        );
        let failing = Executor::new(ActionsConfig {
            exec: Some(ExecConfig {
                command: vec!["sh".into(), "-c".into(), "echo nope >&2; exit 3".into()],
                timeout_s: 5,
            }),
            ..Default::default()
        });
        let r = failing.run(req(ActionVerb::Restart, None), None).await;
        assert!(
            r[0].1["error"].as_str().is_some_and(|e| e.contains("nope")),
            "{:?}",
            r[0].1
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
