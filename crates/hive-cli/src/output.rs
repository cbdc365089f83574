//! Output: aligned tables for people, JSON for scripts, and errors and hints on stderr.
//! Every line goes through [`write_line`], so a closed stdout (`hive … | head -1`) ends the
//! command quietly instead of panicking the way `println!` does. Text that comes from tasks
//! and commands is escaped ([`escape`]) before it reaches a terminal.

use std::borrow::Cow;
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

/// The status the process exits with when stdout is found closed (see [`write_line`]).
static ON_CLOSED_STDOUT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Has [`write_line`] exit with `code` rather than 0 when stdout is closed: for a command
/// whose exit status is its answer (a wait's).
pub fn exit_on_closed_stdout(code: u8) {
    ON_CLOSED_STDOUT.store(code, std::sync::atomic::Ordering::SeqCst);
}

/// Writes one line on stdout. When stdout is closed (the reader went away) the process
/// exits at once, with status 0 unless [`exit_on_closed_stdout`] said otherwise: whoever
/// stopped reading has what they wanted, as with standard Unix tools.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(i32::from(
                ON_CLOSED_STDOUT.load(std::sync::atomic::Ordering::SeqCst),
            ));
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

/// Prints what a command did: `text` for people, or `value` as JSON with `--json`.
pub fn report(
    as_json: bool,
    value: &serde_json::Value,
    text: std::fmt::Arguments<'_>,
) -> anyhow::Result<()> {
    if as_json {
        json(value)
    } else {
        write_line(text);
        Ok(())
    }
}

/// Prints the id of what a command created: alone on its line, or as
/// `{"id": …, "created": …}`. When an idempotency `key` named a `what` made before
/// (`created` false), a hint on stderr says nothing new was made.
pub fn created(
    as_json: bool,
    what: &str,
    id: impl std::fmt::Display + Serialize,
    created: bool,
    key: Option<&str>,
) -> anyhow::Result<()> {
    report(
        as_json,
        &serde_json::json!({ "id": id, "created": created }),
        format_args!("{id}"),
    )?;
    if let (false, Some(key)) = (created, key) {
        hint(&format!(
            "{what} {id} was made before with idempotency key `{}`: nothing new",
            escape(key)
        ));
    }
    Ok(())
}

/// Reports a failed command on stderr in one line: `error: …`, or `{"error": "…"}` with
/// `--json`.
pub fn error(as_json: bool, message: &str) {
    let line = if as_json {
        serde_json::json!({ "error": message }).to_string()
    } else {
        format!("error: {}", escape(message))
    };
    crate::logging::eprint_line(&line);
}

/// A note on stderr for the person reading a table (stdout stays the data).
pub fn hint(message: &str) {
    crate::logging::eprint_line(&format!("hint: {message}"));
}

/// A list read with one row more than `limit` (ask for `limit + 1`): cut to `limit`, with a
/// hint on stderr when rows were left out.
pub fn cut<T>(mut rows: Vec<T>, limit: u32, what: &str) -> Vec<T> {
    let limit_rows = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit_rows {
        rows.truncate(limit_rows);
        hint(&format!(
            "showing the first {limit} {what}; more match (raise --limit to see them)"
        ));
    }
    rows
}

/// Prints rows under a header, columns aligned, no borders; every cell escaped.
pub fn table<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(header);
    for row in rows {
        t.add_row(row.map(|cell| escape(&cell).into_owned()));
    }
    outln!("{t}");
}

/// Characters that would act on a terminal instead of being shown: control characters
/// (escape sequences, carriage returns, newlines that would break a table's row) and the
/// bidirectional overrides that reorder what follows them.
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text from a task or a command as a terminal should show it: each character that would
/// act on the terminal written as an escape (`\u{1b}`, `\n`), so a title cannot move the
/// cursor, recolour or hide what follows.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_except(s, |_| false)
}

/// One line of a command's log: [`escape`], keeping tabs, which only indent.
pub fn escape_log_line(s: &str) -> Cow<'_, str> {
    escape_except(s, |c| c == '\t')
}

fn escape_except(s: &str, keep: fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| acts_on_terminal(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if acts_on_terminal(c) && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
    use super::{error_cell, escape, escape_log_line};

    #[test]
    fn what_acts_on_a_terminal_is_escaped() {
        assert_eq!(escape("plain ünïcode 🐝"), "plain ünïcode 🐝");
        assert_eq!(escape("red\u{1b}[31m"), "red\\u{1b}[31m");
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape_log_line("col1\tcol2\u{7}"), "col1\tcol2\\u{7}");
    }

    #[test]
    fn an_error_cell_is_its_first_line_shortened() {
        assert_eq!(error_cell(None, 10), "-");
        assert_eq!(error_cell(Some("boom\nstack line"), 10), "boom");
        assert_eq!(error_cell(Some("a very long error"), 6), "a ver…");
    }
}
