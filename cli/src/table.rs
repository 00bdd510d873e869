//! Plain text tables that fit a terminal.

use std::io::IsTerminal;

/// How tables are drawn: the width to fit and whether to color cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// Columns available; `None` means no limit.
    pub width: Option<usize>,
    /// ANSI colors on state words.
    pub color: bool,
}

impl Style {
    /// No width limit, no colors (files, pipes, tests).
    pub fn plain() -> Style {
        Style::default()
    }

    /// For standard output: the terminal's width (or `COLUMNS` when
    /// standard output is not a terminal), and colors only on a terminal
    /// unless `NO_COLOR` is set. `CLICOLOR_FORCE=1` forces colors off a
    /// terminal; `NO_COLOR` still wins.
    pub fn detect() -> Style {
        let tty = std::io::stdout().is_terminal();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let width = if tty {
            terminal_size::terminal_size().map(|(w, _)| usize::from(w.0))
        } else {
            None
        }
        .or_else(|| env("COLUMNS").and_then(|c| c.trim().parse().ok()))
        .filter(|w| *w >= 20);
        let no_color = env("NO_COLOR").is_some() || env("TERM").as_deref() == Some("dumb");
        let forced = env("CLICOLOR_FORCE").is_some_and(|v| v != "0");
        Style {
            width,
            color: !no_color && (tty || forced),
        }
    }
}

/// The ANSI color for a state word, if it has one.
fn color_of(cell: &str) -> Option<&'static str> {
    match cell {
        "alive" | "healthy" | "resolved" | "running" | "finished" | "ok" | "localized"
        | "correctly ignored" => Some("32"),
        "suspect" | "open" | "waiting" | "hung" | "not scored" => Some("33"),
        "lost" | "failed" | "MISSED" | "FALSE ALARM" => Some("31"),
        "quarantined" | "cordoned" => Some("35"),
        _ => None,
    }
}

/// Cuts `s` to `max` characters, ending with an ellipsis when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s.to_owned()
    }
}

/// Renders rows under headers, columns padded to their widest cell. Cells
/// longer than 60 characters are cut with an ellipsis.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    render_with(headers, rows, Style::plain())
}

/// Like [`render`], fitted to `style.width`: when the table is wider, the
/// widest columns give up characters first (cells cut with an ellipsis),
/// down to 4 characters. State words are colored when
/// `style.color` is set.
pub fn render_with(headers: &[&str], rows: &[Vec<String>], style: Style) -> String {
    const MAX_CELL: usize = 60;
    const GAP: usize = 2;
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cut(c, MAX_CELL)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    if let Some(limit) = style.width {
        // A column gives up to 4 characters (or keeps its natural width
        // when that is less); headers are cut too on a narrow terminal.
        let floor: Vec<usize> = widths.iter().map(|w| (*w).min(4)).collect();
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
        while total(&widths) > limit {
            // The widest column that can still give.
            let Some((i, _)) = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| **w > floor[*i])
                .max_by_key(|(_, w)| **w)
            else {
                break;
            };
            widths[i] -= 1;
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], header: bool, out: &mut String| {
        let mut l = String::new();
        let n = cells.len().min(widths.len());
        for (i, c) in cells.iter().take(n).enumerate() {
            let c = cut(c, widths[i]);
            let len = c.chars().count();
            match color_of(&c).filter(|_| style.color && !header) {
                Some(code) => {
                    l.push_str("\x1b[");
                    l.push_str(code);
                    l.push('m');
                    l.push_str(&c);
                    l.push_str("\x1b[0m");
                }
                None if style.color && header => {
                    l.push_str("\x1b[1m");
                    l.push_str(&c);
                    l.push_str("\x1b[0m");
                }
                None => l.push_str(&c),
            }
            if i + 1 < n {
                l.push_str(&" ".repeat(widths[i] - len + GAP));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    let head: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    line(&head, true, &mut out);
    for r in &rows {
        line(r, false, &mut out);
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

    #[test]
    fn fits_the_width_by_cutting_the_widest_column() {
        let rows = vec![vec![
            "n0".to_owned(),
            "alive".to_owned(),
            "a very long piece of evidence that does not fit".to_owned(),
        ]];
        let style = Style {
            width: Some(30),
            color: false,
        };
        let t = render_with(&["NODE", "STATE", "EVIDENCE"], &rows, style);
        for l in t.lines() {
            assert!(l.chars().count() <= 30, "{l:?} is wider than 30");
        }
        assert!(t.contains("n0    alive  a very long piec…"), "{t}");
    }

    #[test]
    fn colors_state_words_only_when_asked() {
        let rows = vec![vec!["n0".to_owned(), "lost".to_owned()]];
        let plain = render_with(&["NODE", "STATE"], &rows, Style::plain());
        assert!(!plain.contains('\x1b'));
        let colored = render_with(
            &["NODE", "STATE"],
            &rows,
            Style {
                width: None,
                color: true,
            },
        );
        assert!(colored.contains("\x1b[31mlost\x1b[0m"), "{colored:?}");
        // Padding is computed on the visible text, so columns still align.
        assert!(colored.contains("n0    \x1b[31mlost"), "{colored:?}");
    }
}
