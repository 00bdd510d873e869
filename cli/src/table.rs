//! Plain text tables that fit a terminal.

/// Renders rows under headers, columns padded to their widest cell. Cells
/// longer than `max_cell` characters are cut with an ellipsis.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    const MAX_CELL: usize = 60;
    let cut = |s: &str| -> String {
        if s.chars().count() > MAX_CELL {
            let mut t: String = s.chars().take(MAX_CELL - 1).collect();
            t.push('…');
            t
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["NODE", "STATE"],
            &[
                vec!["n0".into(), "alive".into()],
                vec!["node-17".into(), "lost".into()],
            ],
        );
        assert_eq!(t, "NODE     STATE\nn0       alive\nnode-17  lost\n");
    }
}
