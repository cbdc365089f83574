//! `ai-planner "GOAL"`: turns a goal into a plan and submits it to Hive
//! (`HIVE_DATABASE_URL`, else `sqlite:hive.db`), printing the plan id.
//!
//! The planning is deterministic rules, not an AI service: the goal is split into
//! features on "and" and commas; each feature is designed, implemented and tested; the
//! tested features are integrated, and the integration is deployed.

use hive_client::{Client, NewPlan, SubTask};

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

/// The plan for a goal; `None` when the goal is blank.
pub fn plan_for(goal: &str) -> Option<NewPlan> {
    let goal = goal.trim();
    if goal.is_empty() {
        return None;
    }
    let features: Vec<&str> = goal
        .split([',', ';'])
        .flat_map(|part| part.split(" and "))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    let mut subtasks = Vec::new();
    let mut tested = Vec::new();
    for (i, feature) in features.iter().enumerate() {
        let id = format!("{}-{i}", slug(feature));
        let design = SubTask::new(
            format!("{id}.design"),
            format!("Design {feature}"),
            "design",
        );
        let implement = SubTask::new(
            format!("{id}.implement"),
            format!("Implement {feature}"),
            "implementation",
        )
        .depends_on([design.id.clone()]);
        let test = SubTask::new(format!("{id}.test"), format!("Test {feature}"), "testing")
            .depends_on([implement.id.clone()]);
        tested.push(test.id.clone());
        subtasks.extend([design, implement, test]);
    }
    let integrate =
        SubTask::new("integrate", "Integrate all features", "integration").depends_on(tested);
    let mut deploy =
        SubTask::new("deploy", format!("Deploy: {goal}"), "deployment").depends_on(["integrate"]);
    deploy.payload =
        serde_json::json!({ "service": slug(goal), "environment": "staging", "version": "1.0.0" });
    deploy.priority = 10;
    subtasks.extend([integrate, deploy]);
    Some(NewPlan {
        title: goal.to_owned(),
        description: format!("{} features, planned by ai-planner", features.len()),
        parent_task_id: None,
        subtasks,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let goal = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let Some(plan) = plan_for(&goal) else {
        eprintln!("usage: ai-planner \"GOAL\" (e.g. \"user login and billing, audit log\")");
        return std::process::ExitCode::from(2);
    };
    match submit(plan).await {
        Ok(id) => println!("{id}"),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Submits the plan to the database `HIVE_DATABASE_URL` names.
async fn submit(plan: NewPlan) -> Result<hive_client::PlanId, hive_client::Error> {
    let client = Client::from_env().await?;
    Ok(client.submit_plan(plan).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goal_becomes_a_valid_dag() {
        let plan = plan_for("user login and billing, audit log").unwrap();
        assert!(plan.validate(1 << 20).is_ok());
        assert_eq!(plan.subtasks.len(), 3 * 3 + 2);
        let deploy = plan.subtasks.iter().find(|s| s.id == "deploy").unwrap();
        assert_eq!(deploy.task_type, "deployment");
        assert_eq!(deploy.dependencies, ["integrate"]);
        let integrate = plan.subtasks.iter().find(|s| s.id == "integrate").unwrap();
        assert_eq!(
            integrate.dependencies,
            ["user-login-0.test", "billing-1.test", "audit-log-2.test"]
        );
        assert!(plan_for("   ").is_none());
    }
}
