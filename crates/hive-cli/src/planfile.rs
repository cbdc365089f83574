//! Reading plan files: JSON or TOML, the format chosen by extension (else by content);
//! `-` reads the plan from standard input.

use std::path::Path;

use anyhow::{Context, bail};
use hive_client::NewPlan;

/// Parses and validates a plan file before anything touches the database.
pub fn read(path: &Path, max_payload_bytes: usize) -> anyhow::Result<NewPlan> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the plan from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plan file `{}`", path.display()))?
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let plan: NewPlan = match ext.as_str() {
        "json" => serde_json::from_str(&text)
            .with_context(|| format!("`{}` is not a valid JSON plan", path.display()))?,
        "toml" => toml::from_str(&text)
            .with_context(|| format!("`{}` is not a valid TOML plan", path.display()))?,
        _ => match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(json_err) => match toml::from_str(&text) {
                Ok(p) => p,
                Err(_) => bail!(
                    "`{}` is neither a JSON nor a TOML plan: {json_err}",
                    path.display()
                ),
            },
        },
    };
    plan.validate(max_payload_bytes)
        .with_context(|| format!("plan file `{}`", path.display()))?;
    Ok(plan)
}
