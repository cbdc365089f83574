//! `ai-deployer [--exit-when-idle]`: a worker (role `deployer`) that runs `deployment`
//! tasks from Hive (`HIVE_DATABASE_URL`, else `sqlite:hive.db`) until Ctrl-C.
//!
//! A deployment's payload is `{"service": "...", "environment": "staging"|"production",
//! "version": "..."}`; the deployment itself is simulated (checks, rollout steps), so the
//! example runs anywhere.

use std::time::Duration;

use hive_client::{Client, TaskContext, TaskError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deployment {
    service: String,
    environment: String,
    #[serde(default = "latest")]
    version: String,
}

fn latest() -> String {
    "latest".into()
}

/// The rollout steps for a deployment, or a permanent error for a payload no retry can fix.
fn rollout(payload: &serde_json::Value) -> Result<(Deployment, Vec<String>), TaskError> {
    let d: Deployment = serde_json::from_value(payload.clone())
        .map_err(|e| TaskError::permanent(format!("invalid deployment payload: {e}")))?;
    if d.service.trim().is_empty() {
        return Err(TaskError::permanent("`service` must not be empty"));
    }
    let steps = match d.environment.as_str() {
        "staging" => vec!["build image", "push image", "roll out", "smoke test"],
        "production" => vec![
            "build image",
            "push image",
            "canary 5%",
            "canary 50%",
            "roll out",
            "smoke test",
        ],
        other => {
            return Err(TaskError::permanent(format!(
                "unknown environment `{other}`; expected staging or production"
            )));
        }
    };
    let steps = steps
        .into_iter()
        .map(|s| format!("{s}: {} {}", d.service, d.version))
        .collect();
    Ok((d, steps))
}

async fn deploy(ctx: TaskContext) -> Result<serde_json::Value, TaskError> {
    let (d, steps) = rollout(&ctx.task.payload)?;
    for _ in &steps {
        // Stands in for real rollout work.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(
        serde_json::json!({ "service": d.service, "environment": d.environment, "version": d.version, "steps": steps }),
    )
}

const USAGE: &str = "usage: ai-deployer [--exit-when-idle]";

/// Whether the arguments ask to exit once idle; `None` for help. Anything else is an error
/// rather than a worker started on a typo.
fn exit_when_idle(args: impl IntoIterator<Item = String>) -> Result<Option<bool>, String> {
    let mut exit = false;
    for a in args {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--exit-when-idle" => exit = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(exit))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let exit_when_idle = match exit_when_idle(std::env::args().skip(1)) {
        Ok(Some(exit)) => exit,
        Ok(None) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = async {
        let client = Client::from_env().await?;
        let report = client
            .worker(hive_client::unique_worker_id("deployer"))
            .role("deployer")
            .capabilities(["deployment"])
            .task_types(["deployment"])
            .concurrency(2)
            .exit_when_idle(exit_when_idle)
            .run(deploy)
            .await;
        // Before exiting: on SQLite the log is folded into the file then.
        client.close().await;
        report
    }
    .await;
    match result {
        Ok(report) => {
            eprintln!(
                "deployer stopped: {} deployed, {} failed",
                report.completed, report.failed
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_flag_is_taken() {
        let args = |a: &[&str]| exit_when_idle(a.iter().map(|s| s.to_string()));
        assert_eq!(args(&[]), Ok(Some(false)));
        assert_eq!(args(&["--exit-when-idle"]), Ok(Some(true)));
        assert_eq!(args(&["--help"]), Ok(None));
        assert_eq!(
            args(&["--exit-when-idel"]),
            Err("unknown argument --exit-when-idel".into())
        );
    }

    #[test]
    fn payloads_are_checked() {
        let (_, steps) = rollout(
            &serde_json::json!({"service": "api", "environment": "production", "version": "2"}),
        )
        .unwrap();
        assert_eq!(steps.len(), 6);
        let e = rollout(&serde_json::json!({"service": "api", "environment": "moon"})).unwrap_err();
        assert!(!e.retryable && e.message.contains("unknown environment `moon`"));
        assert!(rollout(&serde_json::json!({"environment": "staging"})).is_err());
    }
}
