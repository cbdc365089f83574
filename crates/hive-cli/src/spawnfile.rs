//! The `HIVE_SPAWN` file of a `shell` task: subtasks the command adds to its plan, the way
//! a Rust handler calls `ctx.spawn`. Written as one JSON array of subtasks, or as one
//! subtask object per line (what `echo '{…}' >> "$HIVE_SPAWN"` in a loop writes); each takes
//! the fields of a plan file's subtask. Read only when the command succeeds; what it names
//! is committed together with the task's success, or not at all.

use std::path::Path;

use hive_client::SubTask;

use crate::{builtin, leftfile};

/// A larger file is refused without being read: a plan's growth is subtask definitions,
/// not data (outputs carry the data).
const SPAWN_FILE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The subtasks the command wrote to its spawn file (none when it wrote no file), each
/// payload checked as its built-in handler will read it; or what is wrong with the file,
/// naming the line or entry and the subtask.
pub fn read(file: &Path) -> Result<Vec<SubTask>, String> {
    let limit = format!(
        "at most {} MiB of subtasks may be spawned at once",
        SPAWN_FILE_MAX_BYTES / (1024 * 1024)
    );
    let Some(bytes) = leftfile::read(file, "HIVE_SPAWN", SPAWN_FILE_MAX_BYTES, &limit)? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("the HIVE_SPAWN file is not UTF-8 text: {e}"))?;
    // As in plan files and the HIVE_OUTPUT file, a byte-order mark is not JSON.
    let text = crate::args::without_bom(text);
    let subtasks = parse(&text)?;
    for s in &subtasks {
        builtin::validate_payload(&s.task_type, &s.payload).map_err(|e| {
            format!(
                "the HIVE_SPAWN file: subtask `{}`: {e}",
                s.id.escape_debug()
            )
        })?;
    }
    Ok(subtasks)
}

/// A JSON array of subtasks, or one subtask object per non-blank line.
fn parse(text: &str) -> Result<Vec<SubTask>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text)
            .map_err(|e| format!("the HIVE_SPAWN file is not a JSON array of subtasks: {e}"));
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                format!(
                    "the HIVE_SPAWN file, line {}: not a subtask object: {e}",
                    i + 1
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spawn.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn no_file_spawns_nothing_and_both_forms_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("absent")).unwrap().is_empty());
        let one =
            r#"{"id": "c1", "title": "Chunk 1", "task_type": "noop", "dependencies": ["split"]}"#;
        let two = r#"{"id": "c2", "title": "Chunk 2", "task_type": "sleep", "payload": {"ms": 1}, "priority": 3}"#;
        let (_d, lines) = written(&format!("{one}\n\n{two}\n"));
        let (_e, array) = written(&format!("  [{one}, {two}]"));
        let from_lines = read(&lines).unwrap();
        assert_eq!(from_lines, read(&array).unwrap());
        // A byte-order mark before either form is skipped.
        let (_g, marked) = written(&format!("\u{feff}{one}\n{two}\n"));
        assert_eq!(read(&marked).unwrap(), from_lines);
        let (_h, marked) = written(&format!("\u{feff}[{one}, {two}]"));
        assert_eq!(read(&marked).unwrap(), from_lines);
        assert_eq!(from_lines.len(), 2);
        assert_eq!(from_lines[0].dependencies, ["split"]);
        assert_eq!(from_lines[1].priority, 3);
        let (_f, empty) = written("\n  \n");
        assert!(
            read(&empty).unwrap().is_empty(),
            "an empty file spawns nothing"
        );
    }

    #[test]
    fn a_bad_entry_is_refused_naming_its_line_or_subtask() {
        let (_d, path) = written(
            "{\"id\": \"a\", \"title\": \"A\", \"task_type\": \"noop\"}\n{\"id\": \"b\"}\n",
        );
        let e = read(&path).unwrap_err();
        assert!(e.contains("line 2") && e.contains("task_type"), "{e}");
        let (_e, path) = written(r#"[{"id": "a", "title": "A", "task_type": "noop"}, 3]"#);
        let e = read(&path).unwrap_err();
        assert!(e.contains("JSON array of subtasks"), "{e}");
        let (_f, path) = written(
            r#"{"id": "s", "title": "S", "task_type": "shell", "payload": {"cmd": "true"}}"#,
        );
        let e = read(&path).unwrap_err();
        assert!(
            e.contains("subtask `s`") && e.contains("invalid shell payload"),
            "{e}"
        );
    }
}
