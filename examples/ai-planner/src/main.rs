//! `ai-planner "GOAL"`: turns a goal into a plan, submits it to Hive
//! (`HIVE_DATABASE_URL`, else `sqlite:hive.db`) and prints the plan id.
//! `ai-planner --run "GOAL"` also works the plan in this process and prints its result.
//!
//! The plan learns its work while it runs. It is submitted as three subtasks: `plan` reads
//! the goal, `integrate` depends on `plan`, `deploy` on `integrate`. When `plan` runs, it
//! splits the goal into features (on "and" and commas) and spawns one design → implement →
//! test chain per feature into the running plan; Hive re-wires `integrate` to wait for every
//! feature's test (the spawned sinks), and `integrate` reads every parent's output through
//! `ctx.inputs()`. The planning is deterministic rules, not an AI service.

use hive_client::{Client, NewPlan, PlanId, SubTask, TaskContext, TaskError};
use serde_json::{Value, json};

/// The task types this app's worker runs.
pub const TASK_TYPES: [&str; 6] = [
    "planning",
    "design",
    "implementation",
    "testing",
    "integration",
    "deployment",
];

/// Lower-case, dash-separated id for a feature name.
fn slug(s: &str) -> String {
    let words: Vec<String> = s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.is_empty() {
        "feature".into()
    } else {
        words.join("-")
    }
}

/// The plan submitted for a goal; `None` when the goal is blank.
pub fn plan_for(goal: &str) -> Option<NewPlan> {
    let goal = goal.trim();
    if goal.is_empty() {
        return None;
    }
    let plan =
        SubTask::new("plan", format!("Plan: {goal}"), "planning").payload(json!({ "goal": goal }));
    let integrate =
        SubTask::new("integrate", "Integrate all features", "integration").depends_on(["plan"]);
    let deploy = SubTask::new("deploy", format!("Deploy: {goal}"), "deployment")
        .depends_on(["integrate"])
        .payload(json!({ "service": slug(goal), "environment": "staging", "version": "1.0.0" }))
        .priority(10);
    let plan = NewPlan::new(goal, vec![plan, integrate, deploy])
        .description("planned at run time by ai-planner")
        .metadata(json!({ "goal": goal, "planner": "ai-planner" }));
    Some(plan)
}

/// The features of a goal, in order.
pub fn features(goal: &str) -> Vec<String> {
    goal.split([',', ';'])
        .flat_map(|part| part.split(" and "))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The subtasks `plan` spawns: design → implement → test per feature, after `plan`.
pub fn feature_subtasks(features: &[String]) -> Vec<SubTask> {
    let mut out = Vec::new();
    for (i, feature) in features.iter().enumerate() {
        let id = format!("{}-{i}", slug(feature));
        let step = |suffix: &str, title: String, task_type: &str, after: &str| {
            SubTask::new(format!("{id}.{suffix}"), title, task_type)
                .depends_on([after])
                .payload(json!({ "feature": feature, "index": i }))
        };
        let design = step("design", format!("Design {feature}"), "design", "plan");
        let implement = step(
            "implement",
            format!("Implement {feature}"),
            "implementation",
            &design.id,
        );
        let test = step("test", format!("Test {feature}"), "testing", &implement.id);
        out.extend([design, implement, test]);
    }
    out
}

/// Runs one subtask of a plan from [`plan_for`]; its return value is its output.
pub async fn handle(ctx: TaskContext) -> Result<Value, TaskError> {
    let payload = &ctx.task.payload;
    match ctx.task.task_type.as_str() {
        "planning" => {
            let goal = payload["goal"].as_str().unwrap_or_default();
            let features = features(goal);
            for subtask in feature_subtasks(&features) {
                ctx.spawn(subtask)?;
            }
            Ok(json!({ "features": features }))
        }
        step @ ("design" | "implementation" | "testing") => Ok(json!({
            "feature": payload["feature"],
            "index": payload["index"],
            "step": step,
            "after": ctx.inputs().keys().collect::<Vec<_>>(),
        })),
        "integration" => {
            // Every parent's output: one tested feature each, besides the plan's own.
            let mut tested: Vec<&Value> = ctx
                .inputs()
                .values()
                .filter(|o| o["step"] == "testing")
                .collect();
            tested.sort_by_key(|o| o["index"].as_u64());
            let features: Vec<&Value> = tested.iter().map(|o| &o["feature"]).collect();
            Ok(json!({ "integrated": features }))
        }
        "deployment" => Ok(json!({
            "deployed": payload["service"],
            "environment": payload["environment"],
            "features": ctx.input("integrate").map(|i| i["integrated"].clone()),
        })),
        other => Err(TaskError::permanent(format!("no handler for `{other}`"))),
    }
}

/// Works until nothing of this app's types is left, then returns the plan's result.
pub async fn work(client: &Client, plan: PlanId) -> Result<Value, hive_client::Error> {
    client
        .worker(hive_client::unique_worker_id("ai-planner"))
        .task_types(TASK_TYPES)
        .concurrency(4)
        .exit_when_idle(true)
        .handle_signals(false)
        .run(handle)
        .await?;
    let results = client.plan_results(plan).await?;
    Ok(results.map_or(
        Value::Null,
        |r| json!({ "status": r.status, "result": r.result }),
    ))
}

const USAGE: &str =
    "usage: ai-planner [--run] [--] \"GOAL\" (e.g. \"user login and billing, audit log\")";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    /// Submit (and with `run`, work) the plan for the goal given.
    Plan {
        run: bool,
        plan: NewPlan,
    },
}

/// Reads the arguments after the program name; an error names what is wrong.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut run = false;
    let mut goal = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--run" => run = true,
            "--" => goal.extend(args.by_ref()),
            // A mistyped flag is not a goal: submitting it would plan "--rnu".
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ => goal.push(a),
        }
    }
    let plan = plan_for(&goal.join(" ")).ok_or("no goal given")?;
    Ok(Command::Plan { run, plan })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let (run, plan) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Ok(Command::Plan { run, plan }) => (run, plan),
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    match submit(plan, run).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn submit(plan: NewPlan, run: bool) -> Result<(), hive_client::Error> {
    let client = Client::from_env().await?;
    let done = async {
        let id = client.submit_plan(plan).await?;
        println!("{id}");
        if run {
            let result = work(&client, id).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
        }
        Ok(())
    }
    .await;
    // Before exiting, also after an error: SQLite's log is folded into the file then.
    client.close().await;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_not_goals() {
        let args = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        assert_eq!(args(&["--help"]), Ok(Command::Help));
        assert_eq!(args(&["login", "-h"]), Ok(Command::Help));
        assert_eq!(
            args(&["--run", "login", "and", "billing"]),
            Ok(Command::Plan {
                run: true,
                plan: plan_for("login and billing").unwrap()
            })
        );
        assert_eq!(
            args(&["--rnu", "login"]),
            Err("unknown option --rnu".into())
        );
        assert_eq!(
            args(&["--", "-x", "login"]),
            Ok(Command::Plan {
                run: false,
                plan: plan_for("-x login").unwrap()
            })
        );
        assert_eq!(args(&[]), Err("no goal given".into()));
        assert_eq!(args(&["--run", " "]), Err("no goal given".into()));
    }

    #[test]
    fn goal_becomes_a_valid_dag_that_grows_valid() {
        let plan = plan_for("user login and billing, audit log").unwrap();
        assert!(plan.validate(1 << 20).is_ok());
        let spawned = feature_subtasks(&features("user login and billing, audit log"));
        assert_eq!(spawned.len(), 3 * 3);
        let growth = hive_client::models::grow(&plan.subtasks, "plan", spawned, 1 << 20).unwrap();
        assert_eq!(
            growth.sinks,
            ["user-login-0.test", "billing-1.test", "audit-log-2.test"]
        );
        assert_eq!(growth.rewired, ["integrate"]);
        assert!(plan_for("   ").is_none());
    }

    #[tokio::test]
    async fn the_plan_fans_out_at_run_time_and_joins() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("hive.db").display());
        let client = Client::connect(&url).await.unwrap();
        let plan = plan_for("login and billing").unwrap();
        let id = client.submit_plan(plan).await.unwrap();
        let out = work(&client, id).await.unwrap();
        assert_eq!(out["status"], "completed");
        assert_eq!(
            out["result"]["deploy"]["features"],
            json!(["login", "billing"]),
            "the join read every feature's test output: {out}"
        );
        let p = client.get_plan(id).await.unwrap().unwrap();
        assert_eq!(p.total_subtasks, 3 + 2 * 3);
    }
}
