//! The progress body parser: one JSON object or newline-delimited JSON
//! objects, as a training process posts them to its agent. The record types
//! live in `vigil_core::progress` because the controller reads them too.

use vigil_core::progress::ProgressRecord;

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
    use vigil_core::progress::Phase;

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
