//! The two text formats: OpenMetrics, and the classic Prometheus text.

/// Drops the empty label braces (`name{} 1`) of unlabelled samples.
pub(super) fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if !line.starts_with('#')
            && let Some(i) = line.find("{} ")
        {
            out.push_str(&line[..i]);
            out.push_str(&line[i + 2..]);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// OpenMetrics text to the classic Prometheus text format: a counter's
/// family is named with its `_total` suffix, and there is no `# EOF` or
/// `# UNIT` line.
pub(super) fn classic(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in tidy(text).lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(p);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
