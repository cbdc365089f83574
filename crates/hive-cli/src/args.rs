//! Command-line values the CLI parses itself, before connecting: ages (`7d`), times
//! (`--run-at`), statuses, list limits; and help texts that list every status name.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use hive_client::models::Timestamp;
use hive_client::{PlanId, TaskId, TaskStatus};

/// The units an age may use, with their length in seconds.
const UNITS: [(char, u64); 5] = [
    ('s', 1),
    ('m', 60),
    ('h', 3600),
    ('d', 86_400),
    ('w', 604_800),
];

/// A length of time: seconds (`90`, `2.5`) or an age as [`parse_age`] takes it (`15m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|_| {
            format!("`{s}` is not a length of time: seconds must be a finite number, 0 or more")
        }),
        Err(_) => parse_age(s).map_err(|_| {
            format!("`{s}` is not a length of time; write seconds (90) or an age (15m, 1h30m)")
        }),
    }
}

/// An age such as `30s`, `15m`, `12h`, `7d`, `2w`, or several added up (`1d12h`).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{s}` is not an age; write a number and a unit (s, m, h, d, w): 30s, 15m, 12h, \
             7d, 2w, or several added up: 1d12h"
        )
    };
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        let (_, secs) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
        total = n
            .checked_mul(*secs)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(bad)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

/// A point in time for `--run-at`: RFC 3339 (`2025-06-01T12:00:00Z`, or with an offset).
pub fn parse_time(s: &str) -> anyhow::Result<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            anyhow!(
                "`{s}` is not a time ({e}); write it as RFC 3339, e.g. 2025-06-01T12:00:00Z or \
                 2025-06-01T14:00:00+02:00"
            )
        })
}

/// A task id named on the command line.
pub fn task_id(s: &str) -> anyhow::Result<TaskId> {
    s.parse()
        .map_err(|e: hive_client::models::Error| anyhow!(e))
}

/// A plan id named on the command line.
pub fn plan_id(s: &str) -> anyhow::Result<PlanId> {
    s.parse()
        .map_err(|e: hive_client::models::Error| anyhow!(e))
}

/// The error for a task id that names no task.
pub fn task_not_found(id: TaskId) -> anyhow::Error {
    anyhow!("task `{id}` not found")
}

/// A task status named on the command line.
pub fn status(s: &str) -> anyhow::Result<TaskStatus> {
    s.parse()
        .map_err(|e: hive_client::models::Error| anyhow!(e))
}

/// Every task status name, comma-separated.
pub fn status_names() -> String {
    TaskStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A help text followed by every task status name, for arguments that take one.
pub fn with_statuses(help: &str) -> String {
    format!("{help} (one of: {})", status_names())
}

/// A plan status by name; an unknown one is refused naming it.
pub fn plan_status(s: &str) -> anyhow::Result<hive_client::PlanStatus> {
    s.parse()
        .map_err(|e: hive_client::models::Error| anyhow!(e))
}

/// A help text followed by every plan status name, for arguments that take one.
pub fn with_plan_statuses(help: &str) -> String {
    let names: Vec<&str> = hive_client::PlanStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    format!("{help} (one of: {})", names.join(", "))
}

/// A `--limit`: at least 1.
pub fn check_limit(limit: u32) -> anyhow::Result<()> {
    if limit == 0 {
        anyhow::bail!("--limit must be at least 1");
    }
    Ok(())
}

/// `text` without a leading UTF-8 byte-order mark, which editors on Windows write and no
/// JSON or TOML parser takes.
pub fn without_bom(mut text: String) -> String {
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    text
}

/// A `--payload` value: JSON text, `@FILE`, or `-` for standard input.
pub fn read_payload(arg: &str) -> anyhow::Result<serde_json::Value> {
    let (text, from) = if arg == "-" {
        let text = std::io::read_to_string(std::io::stdin())
            .context("cannot read --payload from stdin")?;
        (text, "stdin".to_owned())
    } else if let Some(path) = arg.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --payload file `{path}`"))?;
        (text, format!("`{path}`"))
    } else {
        (arg.to_owned(), "--payload".to_owned())
    };
    serde_json::from_str(&without_bom(text)).with_context(|| format!("{from} is not valid JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_payload_file_may_start_with_a_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, "\u{feff}{\"n\": 1}").unwrap();
        let payload = read_payload(&format!("@{}", file.display())).unwrap();
        assert_eq!(payload, serde_json::json!({"n": 1}));
        assert_eq!(without_bom("plain".into()), "plain");
    }

    #[test]
    fn ages_add_up_their_parts() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_age(" 7d "), parse_age("7d"));
        for bad in [
            "",
            "7",
            "d",
            "7x",
            "1.5h",
            "-1d",
            "7 d",
            "99999999999999999999w",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        assert!(parse_age("3y").unwrap_err().contains("`3y`"));
    }

    #[test]
    fn times_are_rfc_3339() {
        let t = parse_time("2025-06-01T14:00:00+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-06-01T12:00:00+00:00");
        let e = parse_time("tomorrow").unwrap_err().to_string();
        assert!(e.contains("`tomorrow`") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn help_lists_every_status() {
        let help = with_statuses("Only tasks in this status");
        for s in TaskStatus::ALL {
            assert!(help.contains(s.as_str()), "{help}");
        }
    }

    proptest! {
        #[test]
        fn any_sum_of_parts_parses_to_its_seconds(parts in prop::collection::vec((0u64..10_000, 0usize..5), 1..5)) {
            let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
            let secs: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
            prop_assert_eq!(parse_age(&text), Ok(Duration::from_secs(secs)));
        }

        #[test]
        fn no_text_panics_the_parsers(s in "\\PC*") {
            let _ = parse_age(&s);
            let _ = parse_time(&s);
        }
    }
}
