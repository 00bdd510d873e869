//! Log-tail mode end to end: a real agent process follows a Megatron-LM log
//! that is being appended to, and the controller sees the job, its steps,
//! samples and a complete checkpoint.

use std::io::Write;
use std::time::Duration;
use vigil_tests::{Controller, agent, free_port, scratch, wait_until};

const LINE: &str = "[2025-09-07 23:58:47] iteration      STEP/  500000 | consumed samples:        SAMPLES | elapsed time per iteration (ms): 438.3 | learning rate: 5.999998E-05 | global batch size:    32 | lm loss: 6.159759E+00 | loss scale: 131072.0 | grad norm: 1.095 | number of skipped iterations:   0 | number of nan iterations:   0 |\n";

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(text.as_bytes()).expect("append");
}

fn job(c: &Controller) -> Option<serde_json::Value> {
    c.get("/api/v1/jobs")?
        .as_array()?
        .iter()
        .find(|j| j["id"] == "gpt")
        .cloned()
}

#[test]
fn agent_follows_a_megatron_log() {
    let dir = scratch("log-tail");
    let log = dir.join("train.log");
    // History before the agent starts is not reported.
    append(&log, &LINE.replace("STEP", "1").replace("SAMPLES", "32"));
    let c = Controller::start(&dir, 200);
    let log_arg = log.to_string_lossy().into_owned();
    let _a = agent(
        &c,
        "lt0",
        "sim:1",
        free_port(),
        &[
            "--job",
            "gpt",
            "--log-tail",
            &log_arg,
            "--log-format",
            "megatron",
        ],
    );
    wait_until(Duration::from_secs(20), "agent registered", || {
        c.node("lt0").is_some()
    });
    // Give the follower time to reach the end of the file.
    std::thread::sleep(Duration::from_millis(500));
    assert!(job(&c).is_none(), "old log lines were reported");

    for (step, samples) in [(2, 64), (3, 96), (4, 128)] {
        append(
            &log,
            &LINE
                .replace("STEP", &step.to_string())
                .replace("SAMPLES", &samples.to_string()),
        );
    }
    append(
        &log,
        "  successfully saved checkpoint from iteration       4 to /ckpt/gpt [ t 1/1, p 1/1 ]\n",
    );
    wait_until(
        Duration::from_secs(20),
        "job at step 4 with a checkpoint",
        || job(&c).is_some_and(|j| j["step"] == 4 && j["checkpoints"]["4"]["complete"] == true),
    );
    let j = job(&c).expect("job");
    assert_eq!(j["world_size"], 1);
    assert_eq!(j["steps_total"], 3);
    // 32 for the first line seen (the batch size), then the growth of
    // consumed samples.
    assert_eq!(j["samples_total"], 32 + 32 + 32);
    assert_eq!(j["checkpoints"]["4"]["path"], "/ckpt/gpt/iter_0000004");
    assert!(j["ranks"]["0"].is_object(), "{j}");
}
