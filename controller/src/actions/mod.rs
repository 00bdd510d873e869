//! Action back-ends: what the controller asks the world to do when the core
//! quarantines a node or card, releases one, or restarts a job no agent
//! supervises.
//!
//! [`plan`] turns one `ActionRequest` into concrete [`Step`]s for every
//! configured back-end: the exec hook, Slurm (`scontrol`) and Kubernetes
//! (API calls; carried out only in builds with the `kubernetes` feature).
//! It is a pure function and tested as one. [`Executor`] carries the steps
//! out off the state task, each under a timeout, and reports every result
//! on the live feed (`action_done`, `action_failed`). In shadow mode the
//! steps are only published (`action_shadow`).

mod config;
mod executor;
mod plan;

pub use config::{ActionsConfig, ExecConfig, KubeConfig, SlurmConfig};
pub use executor::{Executor, Report};
pub use plan::{Step, plan};

#[cfg(test)]
mod tests {
    use vigil_core::cluster::{ActionRequest, ActionVerb};
    use vigil_core::incident::CheckpointRef;
    use vigil_core::{IncidentId, JobId, NodeId};

    /// A request about incident 7 of job `pretrain` on node `n2`.
    pub(super) fn req(verb: ActionVerb, card: Option<u32>) -> ActionRequest {
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
}
