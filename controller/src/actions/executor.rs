//! [`Executor`]: carries a request's steps out, each under a timeout, and
//! reports every result for the feed.

use super::config::ActionsConfig;
use super::plan::{Step, plan, verb_name};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use vigil_core::cluster::ActionRequest;
use vigil_core::incident::Incident;

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
    use super::super::config::ExecConfig;
    use super::super::tests::req;
    use super::*;
    use vigil_core::cluster::ActionVerb;

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
