//! Output: aligned tables for people, JSON for scripts. Every line goes through
//! [`write_line`], so a closed stdout (`hive … | head -1`) ends the command quietly instead
//! of panicking the way `println!` does.

use std::io::{self, Write};

use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

/// Prints a formatted line on stdout (see [`write_line`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes one line on stdout. When stdout is closed (the reader went away) the process
/// exits at once with status 0: whoever stopped reading has what they wanted, as with
/// standard Unix tools.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Any other failure to print (a full disk behind a redirect) is the command's
        // failure, reported on stderr without a panic.
        crate::logging::eprint_line(&format!("error: cannot write to stdout: {e}"));
        std::process::exit(1);
    }
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints the id of what a command created: alone on its line, or as `{"id": …}`.
pub fn created(as_json: bool, id: impl std::fmt::Display + Serialize) -> anyhow::Result<()> {
    if as_json {
        json(&serde_json::json!({ "id": id }))
    } else {
        outln!("{id}");
        Ok(())
    }
}

/// Prints rows under a header, columns aligned, no borders.
pub fn table<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header);
    for row in rows {
        t.add_row(row);
    }
    outln!("{t}");
}

/// Formats an optional value, `-` when absent.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Seconds for a table cell (`1.250s`), `-` when absent.
pub fn seconds(secs: Option<f64>) -> String {
    opt(secs.map(|s| format!("{s:.3}s")))
}

/// An error for a table cell: its first line, shortened; `-` when there is none. A
/// multi-line error (a command's output) would otherwise break the table's rows.
pub fn error_cell(error: Option<&str>, max: usize) -> String {
    error.map_or_else(
        || "-".into(),
        |e| clip(e.lines().next().unwrap_or_default(), max),
    )
}

/// A run's progress for a table cell (`42% copying`, shortened); `-` when none was reported.
pub fn progress_cell(progress: Option<&hive_client::Progress>) -> String {
    progress.map_or_else(|| "-".into(), |p| clip(&p.display(), 40))
}

/// Shortens long text for a table cell.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::error_cell;

    #[test]
    fn an_error_cell_is_its_first_line_shortened() {
        assert_eq!(error_cell(None, 10), "-");
        assert_eq!(error_cell(Some("boom\nstack line"), 10), "boom");
        assert_eq!(error_cell(Some("a very long error"), 6), "a ver…");
    }
}
