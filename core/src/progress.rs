//! The progress protocol: JSON records a training process sends its agent.

use crate::ids::JobId;
use serde::{Deserialize, Serialize};

/// Where a rank is within a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The step's compute started.
    Begin,
    /// The rank entered the step's first collective.
    Collective,
    /// The step finished (the default when `phase` is absent).
    #[default]
    End,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Begin => "begin",
            Phase::Collective => "collective",
            Phase::End => "end",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "begin" => Ok(Phase::Begin),
            "collective" => Ok(Phase::Collective),
            "end" | "" => Ok(Phase::End),
            other => Err(format!(
                "unknown phase {other:?} (expected begin, collective or end)"
            )),
        }
    }
}

/// One progress record. Unknown extra fields are ignored so that training
/// code can add its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressRecord {
    Start {
        job: JobId,
        rank: u32,
        world_size: u32,
        #[serde(default)]
        local_rank: Option<u32>,
        #[serde(default)]
        card: Option<u32>,
        #[serde(default)]
        pid: Option<u32>,
    },
    Step {
        job: JobId,
        rank: u32,
        step: u64,
        #[serde(default)]
        phase: Phase,
        #[serde(default)]
        samples: Option<u64>,
        #[serde(default)]
        tokens: Option<u64>,
    },
    Checkpoint {
        job: JobId,
        rank: u32,
        step: u64,
        path: String,
        #[serde(default)]
        bytes: Option<u64>,
        #[serde(default)]
        sha256: Option<String>,
    },
    End {
        job: JobId,
        rank: u32,
        #[serde(default = "ok_status")]
        status: String,
    },
}

fn ok_status() -> String {
    "ok".to_owned()
}

/// The most ranks a job may declare.
pub const MAX_WORLD_SIZE: u32 = 1 << 20;

impl ProgressRecord {
    /// The job the record belongs to.
    pub fn job(&self) -> &JobId {
        match self {
            ProgressRecord::Start { job, .. }
            | ProgressRecord::Step { job, .. }
            | ProgressRecord::Checkpoint { job, .. }
            | ProgressRecord::End { job, .. } => job,
        }
    }

    /// The rank that sent it.
    pub fn rank(&self) -> u32 {
        match self {
            ProgressRecord::Start { rank, .. }
            | ProgressRecord::Step { rank, .. }
            | ProgressRecord::Checkpoint { rank, .. }
            | ProgressRecord::End { rank, .. } => *rank,
        }
    }

    /// Checks the record's values beyond their types.
    pub fn validate(&self) -> Result<(), String> {
        if let ProgressRecord::Start {
            rank, world_size, ..
        } = self
        {
            if *world_size == 0 || *world_size > MAX_WORLD_SIZE {
                return Err(format!(
                    "world_size {world_size} out of range 1..={MAX_WORLD_SIZE}"
                ));
            }
            if rank >= world_size {
                return Err(format!("rank {rank} not below world_size {world_size}"));
            }
        }
        if self.rank() >= MAX_WORLD_SIZE {
            return Err(format!("rank {} out of range", self.rank()));
        }
        if let ProgressRecord::Checkpoint { path, .. } = self
            && path.is_empty()
        {
            return Err("checkpoint path is empty".to_owned());
        }
        Ok(())
    }
}
