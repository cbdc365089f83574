//! Reading plan files: JSON or TOML, the format chosen by extension (else by content);
//! `-` reads the plan from standard input.

use std::path::Path;

use anyhow::{Context, bail};
use hive_client::NewPlan;

use crate::builtin;

/// Parses and validates a plan file before anything touches the database.
pub fn read(path: &Path, max_payload_bytes: usize) -> anyhow::Result<NewPlan> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the plan from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plan file `{}`", path.display()))?
    };
    let text = crate::args::without_bom(text);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let plan: NewPlan = match ext.as_str() {
        "json" => json_plan(&text)
            .with_context(|| format!("`{}` is not a valid JSON plan", path.display()))?,
        "toml" => toml_plan(&text).map_err(|e| {
            anyhow::anyhow!(
                "`{}` is not a valid TOML plan: {}",
                path.display(),
                toml_error(&text, &e)
            )
        })?,
        _ => match json_plan(&text) {
            Ok(p) => p,
            Err(json_err) => match toml_plan(&text) {
                Ok(p) => p,
                // A JSON plan is an object; anything else was most likely meant as TOML,
                // so the error that helps is the TOML parser's.
                Err(toml_err) if !text.trim_start().starts_with('{') => bail!(
                    "`{}` is neither a JSON nor a TOML plan; as TOML: {}",
                    path.display(),
                    toml_error(&text, &toml_err)
                ),
                Err(_) => bail!(
                    "`{}` is neither a JSON nor a TOML plan; as JSON: {json_err}",
                    path.display()
                ),
            },
        },
    };
    plan.validate(max_payload_bytes)
        .with_context(|| format!("plan file `{}`", path.display()))?;
    Ok(plan)
}

/// [`read`] with the default payload limit, then each subtask's payload checked as
/// `hive worker run`'s built-in handler of its type will read it (see
/// [`builtin::validate_payload`]): a plan it would fail is refused before it is stored.
pub fn read_for_workers(path: &Path) -> anyhow::Result<NewPlan> {
    let plan = read(path, hive_client::models::DEFAULT_MAX_PAYLOAD_BYTES)?;
    for st in &plan.subtasks {
        builtin::validate_payload(&st.task_type, &st.payload).map_err(|e| {
            anyhow::anyhow!(
                "plan file `{}`: subtask `{}`: {e}",
                path.display(),
                st.id.escape_debug()
            )
        })?;
    }
    Ok(plan)
}

/// A TOML plan, its dates and times as the RFC 3339 strings a JSON plan would hold: the
/// toml crate hands a bare date (`deadline = 2025-06-01`) to a JSON value as a one-key
/// object of its own making, which a handler would then receive.
fn toml_plan(text: &str) -> Result<NewPlan, toml::de::Error> {
    let table: toml::Table = toml::from_str(text)?;
    if let Some(at) = table
        .iter()
        .find_map(|(k, v)| non_finite_float(v, k.clone()))
    {
        return Err(serde::de::Error::custom(format!(
            "`{at}` is nan or inf, which JSON cannot hold (it would reach the handler as \
             null): give a number or a string"
        )));
    }
    let mut plan: NewPlan = toml::from_str(text)?;
    dates_as_strings(&mut plan.metadata);
    for st in &mut plan.subtasks {
        dates_as_strings(&mut st.payload);
    }
    Ok(plan)
}

/// Where the first float JSON cannot hold (`nan`, `inf`) is in `v`, found at `at`.
fn non_finite_float(v: &toml::Value, at: String) -> Option<String> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(at),
        toml::Value::Array(items) => {
            (items.iter().enumerate()).find_map(|(i, x)| non_finite_float(x, format!("{at}[{i}]")))
        }
        toml::Value::Table(t) => t
            .iter()
            .find_map(|(k, x)| non_finite_float(x, format!("{at}.{k}"))),
        _ => None,
    }
}

/// The key under which the toml crate passes a date through serde (`toml_datetime`).
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

fn dates_as_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.len() == 1
                && let Some(serde_json::Value::String(date)) = map.get(TOML_DATETIME_KEY)
            {
                *v = serde_json::Value::String(date.clone());
                return;
            }
            map.values_mut().for_each(dates_as_strings);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(dates_as_strings),
        _ => {}
    }
}

/// A JSON plan: an object. serde would also take the struct's fields as an array in
/// order (`["title", "", null, [...], {}]`), which no one means to write.
fn json_plan(text: &str) -> anyhow::Result<NewPlan> {
    let start = text.trim_start().chars().next();
    if start.is_some_and(|c| c != '{') {
        bail!(
            "a plan is a JSON object (`{{\"title\": …, \"subtasks\": […]}}`), and this \
             starts with `{}`",
            start.unwrap_or_default()
        );
    }
    Ok(serde_json::from_str(text)?)
}

/// A TOML error on one line, where it is (as serde_json says it): the parser's own text
/// draws the offending line under a gutter over several lines, which errors printed on one
/// line turn into a row of bars.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) if text.is_char_boundary(span.start) => {
            let before = &text[..span.start];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = before.matches('\n').count() + 1;
            let column = before[line_start..].chars().count() + 1;
            format!("{message} at line {line} column {column}")
        }
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_neither_kind_gets_the_error_of_the_kind_it_looks_like() {
        let dir = tempfile::tempdir().unwrap();
        let error_of = |text: &str| {
            let path = dir.path().join("plan");
            std::fs::write(&path, text).unwrap();
            format!("{:#}", read(&path, 1024).unwrap_err())
        };
        let toml = error_of("title = \"p\"\n[[subtasks]]\nid = \"a\"\n");
        assert!(
            toml.ends_with("is neither a JSON nor a TOML plan; as TOML: missing field `task_type` at line 2 column 1"),
            "{toml}"
        );
        let json = error_of(r#"{"title": "p", "subtasks": [{"id": "a"}]}"#);
        assert!(
            json.contains("is neither a JSON nor a TOML plan; as JSON: missing field `task_type`"),
            "{json}"
        );
    }

    #[test]
    fn a_toml_error_is_one_line_that_says_where() {
        let text = "title = \"p\"\n[[subtasks]]\nid = \"a\"\n";
        let e = toml::from_str::<NewPlan>(text).unwrap_err();
        assert_eq!(
            toml_error(text, &e),
            "missing field `task_type` at line 2 column 1"
        );
    }

    /// A byte-order mark (Windows editors write one) is not taken for the plan's first
    /// character, in JSON and TOML alike.
    #[test]
    fn a_plan_file_may_start_with_a_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            (
                "p.json",
                r#"{"title": "p", "subtasks": [{"id": "a", "task_type": "x"}]}"#,
            ),
            (
                "p.toml",
                "title = \"p\"\n[[subtasks]]\nid = \"a\"\ntask_type = \"x\"\n",
            ),
        ] {
            let file = dir.path().join(name);
            std::fs::write(&file, format!("\u{feff}{text}")).unwrap();
            let plan = read(&file, 1 << 20).unwrap();
            assert_eq!(plan.title, "p", "{name}");
        }
    }

    #[test]
    fn a_json_array_is_not_a_plan() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seq.json");
        let seq = r#"["T", "", null, [{"id": "a", "title": "A", "task_type": "x"}], {}]"#;
        std::fs::write(&file, seq).unwrap();
        let e = format!("{:#}", read(&file, 1 << 20).unwrap_err());
        assert!(
            e.contains("a plan is a JSON object") && e.contains("starts with `[`"),
            "{e}"
        );
    }

    /// `nan` and `inf`, which TOML allows and JSON cannot hold, are refused naming where
    /// they are, rather than reaching the handler as null.
    #[test]
    fn toml_floats_json_cannot_hold_are_refused() {
        for (value, at) in [
            (
                "payload = { threshold = inf }",
                "subtasks[0].payload.threshold",
            ),
            (
                "payload = { xs = [1.0, -nan] }",
                "subtasks[0].payload.xs[1]",
            ),
        ] {
            let text =
                format!("title = \"p\"\n[[subtasks]]\nid = \"a\"\ntask_type = \"x\"\n{value}\n");
            let e = toml_error(&text, &toml_plan(&text).unwrap_err());
            assert!(e.contains(&format!("`{at}` is nan or inf")), "{e}");
        }
        let text = "title = \"p\"\nmetadata = { ratio = nan }\n";
        let e = toml_error(text, &toml_plan(text).unwrap_err());
        assert!(e.contains("`metadata.ratio`"), "{e}");
    }

    /// Dates and times written bare in a TOML plan reach the handler as the strings a JSON
    /// plan would hold, at any depth of a payload or the plan's metadata.
    #[test]
    fn toml_dates_become_strings() {
        let text = "title = \"p\"\nmetadata = { due = 2025-06-01 }\n\
                    [[subtasks]]\nid = \"a\"\ntask_type = \"x\"\n\
                    payload = { deadline = 2025-06-01T12:00:00Z, at = [07:30:00], n = 1 }\n";
        let plan = toml_plan(text).unwrap();
        assert_eq!(plan.metadata, serde_json::json!({ "due": "2025-06-01" }));
        assert_eq!(
            plan.subtasks[0].payload,
            serde_json::json!({ "deadline": "2025-06-01T12:00:00Z", "at": ["07:30:00"], "n": 1 })
        );
    }
}
