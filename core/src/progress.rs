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

/// Why a progress body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ProgressError {
    pub line: usize,
    pub reason: String,
}

/// Parses a body of one JSON object or newline-delimited JSON objects.
/// Blank lines are skipped. The whole body is refused if any line is bad, so
/// a sender never has half a batch accepted without knowing which half.
pub fn parse_body(body: &str) -> Result<Vec<ProgressRecord>, ProgressError> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rec: ProgressRecord = serde_json::from_str(line).map_err(|e| ProgressError {
            line: i + 1,
            reason: e.to_string(),
        })?;
        rec.validate().map_err(|reason| ProgressError {
            line: i + 1,
            reason,
        })?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contract_examples() {
        let body = r#"{"type":"start","job":"J","rank":3,"world_size":4,"local_rank":1,"card":1,"pid":1234}
{"type":"step","job":"J","rank":3,"step":120,"phase":"begin"}
{"type":"step","job":"J","rank":3,"step":120,"phase":"collective"}
{"type":"step","job":"J","rank":3,"step":120,"phase":"end","samples":32,"tokens":65536}
{"type":"checkpoint","job":"J","rank":3,"step":100,"path":"/ckpt/step-100","bytes":123,"sha256":"ab"}
{"type":"end","job":"J","rank":3,"status":"ok"}
"#;
        let recs = parse_body(body).expect("valid");
        assert_eq!(recs.len(), 6);
        assert!(matches!(
            recs[3],
            ProgressRecord::Step {
                step: 120,
                phase: Phase::End,
                tokens: Some(65536),
                ..
            }
        ));
    }

    #[test]
    fn phase_defaults_to_end_and_extra_fields_are_ignored() {
        let recs =
            parse_body(r#"{"type":"step","job":"J","rank":0,"step":1,"loss":2.5}"#).expect("valid");
        assert!(matches!(
            recs[0],
            ProgressRecord::Step {
                phase: Phase::End,
                ..
            }
        ));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let err = parse_body("{\"type\":\"step\",\"job\":\"J\",\"rank\":0,\"step\":1}\nnot json")
            .expect_err("bad");
        assert_eq!(err.line, 2);
        let err = parse_body(r#"{"type":"start","job":"J","rank":4,"world_size":4}"#)
            .expect_err("rank out of range");
        assert!(err.reason.contains("rank 4"), "{err}");
        let err = parse_body(r#"{"type":"step","job":"bad job","rank":0,"step":1}"#)
            .expect_err("bad job id");
        assert_eq!(err.line, 1);
        let err = parse_body(r#"{"type":"step","job":"J","rank":0,"step":1,"phase":"middle"}"#)
            .expect_err("bad phase");
        assert_eq!(err.line, 1);
    }
}
