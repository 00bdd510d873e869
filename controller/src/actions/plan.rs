//! [`plan`]: the pure part of the back-ends, the [`Step`]s every configured
//! back-end takes for one action request.

use super::config::{ActionsConfig, ExecConfig, KubeConfig, SlurmConfig};
use serde::Serialize;
use serde_json::json;
use vigil_core::cluster::{ActionRequest, ActionVerb};
use vigil_core::incident::Incident;

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

pub(super) fn verb_name(v: ActionVerb) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::super::tests::req;
    use super::*;

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
        let doc: serde_json::Value =
            serde_json::from_str(stdin.as_deref().unwrap_or("")).expect("json");
        assert_eq!(doc["action"], "restart");
        assert_eq!(doc["request"]["checkpoint"]["step"], 100);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("VIGIL_INCIDENT"), Some("inc-7"));
        assert_eq!(get("VIGIL_CHECKPOINT"), Some("/ckpt/step-100"));
        assert_eq!(get("VIGIL_ACTION"), Some("restart"));
    }
}
