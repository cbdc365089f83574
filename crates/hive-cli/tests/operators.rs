//! What operators need from the CLI, through the real binary: retrying one task or every
//! task in a status, pruning, lists that filter by plan, type and readiness, say when they
//! are cut and show errors, text from tasks escaped for the terminal, and bad input
//! refused before anything changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::db::{Db, create_task};

/// Creates a task of `task_type` titled `title` and returns its id.
fn create(db: &Db, title: &str, task_type: &str, more: &[&str]) -> String {
    db.ok(&create_task(title, task_type, more))
        .trim()
        .to_owned()
}

fn status_of(db: &Db, id: &str) -> String {
    db.json(&["task", "get", id])["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The ids in a JSON list of tasks.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A plan `first → second` of tasks of type `x`; returns the plan id.
fn two_step_plan(db: &Db, title: &str) -> String {
    let file = db.write(
        "plan.json",
        &serde_json::json!({"title": title, "subtasks": [
            {"id": "first", "title": "First", "task_type": "x"},
            {"id": "second", "title": "Second", "task_type": "x", "dependencies": ["first"]}
        ]})
        .to_string(),
    );
    db.ok(&["plan", "submit", &file]).trim().to_owned()
}

/// The plan's task for a subtask id.
fn plan_task(db: &Db, plan: &str, subtask: &str) -> String {
    let tasks = db.json(&["task", "list", "--plan", plan]);
    let found = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["plan_subtask_id"] == subtask);
    found.unwrap()["id"].as_str().unwrap().to_owned()
}

#[test]
fn retry_one_task_or_every_task_in_a_status_and_prune() {
    let db = Db::new();
    let a: Vec<String> = (0..3)
        .map(|i| create(&db, &format!("a{i}"), "a", &[]))
        .collect();
    let b: Vec<String> = (0..2)
        .map(|i| create(&db, &format!("b{i}"), "b", &[]))
        .collect();
    for id in a.iter().chain(&b) {
        db.ok(&["task", "update", id, "failed"]);
    }
    let out = db.ok(&["task", "retry", "--status", "failed", "--type", "a"]);
    assert_eq!(out.trim(), "3 task(s) queued again");
    for id in &a {
        assert_eq!(status_of(&db, id), "queued");
    }
    let report = db.json(&["task", "retry", "--status", "failed", "--limit", "1"]);
    assert_eq!(
        report,
        serde_json::json!({"retried": 1, "skipped": 0, "in_finished_plans": 0, "refused": 0})
    );
    let left: Vec<&String> = b
        .iter()
        .filter(|id| status_of(&db, id) == "failed")
        .collect();
    assert_eq!(left.len(), 1, "the limit retried one of the two");
    let out = db.ok(&["task", "retry", left[0]]);
    assert_eq!(out.trim(), format!("task {} queued again", left[0]));

    // By plan: nothing outside the plan; the subtasks of a failed plan are left to the
    // plan's retry, which runs them with what depends on them.
    let plan = two_step_plan(&db, "p");
    let (first, second) = (
        plan_task(&db, &plan, "first"),
        plan_task(&db, &plan, "second"),
    );
    let outside = create(&db, "outside", "x", &[]);
    db.ok(&["task", "cancel", &outside]);
    db.ok(&["task", "update", &first, "failed"]);
    assert_eq!(status_of(&db, &second), "cancelled");
    let report = db.json(&["task", "retry", "--status", "cancelled", "--plan", &plan]);
    assert_eq!(
        (&report["retried"], &report["in_finished_plans"]),
        (&0.into(), &1.into())
    );
    let out = db.ok(&["task", "retry", "--status", "failed", "--plan", &plan]);
    assert!(out.contains("1 left to their plans"), "{out}");
    let (retried, _, err) = db.run(&["task", "retry", &first]);
    assert!(!retried);
    assert!(
        err.contains(&format!("plan `{plan}`, which is failed")) && err.contains("hive plan retry"),
        "{err}"
    );
    assert_eq!(status_of(&db, &first), "failed");
    assert_eq!(status_of(&db, &outside), "cancelled");

    // Prune: finished tasks older than an age, only the statuses asked for.
    assert_eq!(
        db.json(&["task", "prune", "--older-than", "7d"])["pruned"],
        0
    );
    let out = db.ok(&[
        "task",
        "prune",
        "--older-than",
        "0s",
        "--status",
        "cancelled",
    ]);
    assert_eq!(out.trim(), "1 task(s) pruned");
    let (ok, _, stderr) = db.run(&["task", "get", &outside]);
    assert!(!ok && stderr.contains("not found"), "{stderr}");
    assert_eq!(
        status_of(&db, &first),
        "failed",
        "a failed task is not pruned"
    );
    db.ok(&["plan", "retry", &plan]);
    assert_eq!(status_of(&db, &first), "queued");
    assert_eq!(status_of(&db, &second), "queued");
}

#[test]
fn bad_operator_input_is_refused_before_anything_changes() {
    let db = Db::new();
    let id = create(&db, "t", "x", &[]);
    db.ok(&["task", "update", &id, "failed"]);
    let before = db.snapshot();
    let ghost = "01a20c17-0000-7000-8000-000000000000";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["task", "retry", "--status", "queued"],
            "`queued` tasks cannot be retried",
        ),
        (
            vec!["task", "retry", "--status", "in_progress"],
            "a worker holds them",
        ),
        (
            vec!["task", "retry", "--status", "bogus"],
            "unknown task status `bogus`",
        ),
        (
            vec!["task", "retry", "--status", "failed", "--limit", "0"],
            "--limit must be at least 1",
        ),
        (vec!["task", "retry", "not-a-uuid"], "invalid task id"),
        (vec!["task", "retry", ghost], "not found"),
        (
            vec!["task", "retry", "--status", "failed", "--plan", "p"],
            "invalid plan id `p`",
        ),
        (
            vec!["task", "prune", "--older-than", "1d", "--status", "queued"],
            "only terminal tasks can be pruned, not `queued`",
        ),
        (
            vec!["task", "list", "--plan", "nope"],
            "invalid plan id `nope`",
        ),
        (
            vec!["task", "list", "--limit", "0"],
            "--limit must be at least 1",
        ),
        (
            vec!["plan", "list", "--limit", "0"],
            "--limit must be at least 1",
        ),
        (
            create_task("t", "x", &["--run-at", "tomorrow"]),
            "is not a time",
        ),
        (
            create_task("t", "x", &["--idempotency-key", " "]),
            "`idempotency_key`",
        ),
        (
            vec!["worker", "unregister", "ghost"],
            "worker `ghost` not found",
        ),
    ];
    for (args, want) in cases {
        db.refused(db.hive().args(&args), &format!("{args:?}"), want, &before);
    }
    // Values clap parses: refused with clap's usage message, nothing changed either.
    for (args, want) in [
        (
            &["task", "prune", "--older-than", "7x"][..],
            "`7x` is not an age",
        ),
        (&["task", "retry"], "required"),
        (
            &["task", "retry", &id, "--status", "failed"],
            "cannot be used with",
        ),
    ] {
        let (ok, _, stderr) = db.run(args);
        assert!(!ok && stderr.contains(want), "{args:?}: {stderr}");
    }
    assert_eq!(db.snapshot(), before);
}

#[test]
fn lists_filter_show_readiness_and_errors_and_say_when_cut() {
    let db = Db::new();
    let plan = two_step_plan(&db, "p");
    let (first, second) = (
        plan_task(&db, &plan, "first"),
        plan_task(&db, &plan, "second"),
    );
    let later = create(&db, "later", "y", &["--run-at", "2100-01-01T00:00:00Z"]);
    let failing = create(
        &db,
        "failing",
        "shell",
        &[
            "--payload",
            r#"{"command": "echo oops >&2; exit 3"}"#,
            "--max-retries",
            "0",
        ],
    );
    db.work_until_idle(&[]);

    let table = db.ok(&["task", "list"]);
    let row = |id: &str| table.lines().find(|l| l.contains(id)).unwrap().to_owned();
    assert!(table.lines().next().unwrap().contains("READY"), "{table}");
    assert!(row(&first).contains("ready"), "{table}");
    assert!(row(&second).contains("blocked: 1 dep"), "{table}");
    assert!(
        row(&later).contains("blocked: until 2100-01-01 00:00:00"),
        "{table}"
    );
    let failed = row(&failing);
    assert!(
        failed.contains("failed") && failed.contains("command exited with status 3: oops"),
        "{table}"
    );

    assert_eq!(
        ids(&db.json(&["task", "list", "--ready"])),
        vec![first.clone()]
    );
    let in_plan = ids(&db.json(&["task", "list", "--plan", &plan, "--type", "x"]));
    assert_eq!(in_plan, vec![first.clone(), second]);
    assert!(ids(&db.json(&["task", "list", "--plan", &plan, "--type", "y"])).is_empty());

    // A list cut at its limit says so on stderr; stdout stays the data.
    let (ok, stdout, stderr) = db.run(&["--json", "task", "list", "--limit", "2"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        stderr.contains("hint: showing the first 2 tasks; more match"),
        "{stderr}"
    );
    let (_, _, stderr) = db.run(&["task", "list", "--limit", "4"]);
    assert!(stderr.is_empty(), "nothing was cut: {stderr}");
    two_step_plan(&db, "q");
    let (_, stdout, stderr) = db.run(&["plan", "list", "--limit", "1"]);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stderr.contains("hint: showing the first 1 plans"),
        "{stderr}"
    );

    // Repeating a create with its idempotency key creates nothing.
    let keyed = create(&db, "keyed", "x", &["--idempotency-key", "deploy-42"]);
    assert_eq!(
        create(&db, "again", "x", &["--idempotency-key", "deploy-42"]),
        keyed
    );
}

#[test]
fn text_from_tasks_cannot_drive_the_terminal() {
    let db = Db::new();
    let evil = "evil\u{1b}[2J\u{1b}]0;owned\u{7}\rcover\u{202e}up";
    let id = create(&db, evil, "x", &[]);
    let file = db.write(
        "evil.json",
        &serde_json::json!({"title": evil, "subtasks": [
            {"id": "a", "title": evil, "task_type": "x"}
        ]})
        .to_string(),
    );
    let plan = db.ok(&["plan", "submit", &file]).trim().to_owned();
    for args in [
        &["task", "list"][..],
        &["task", "get", &id],
        &["plan", "list"],
        &["plan", "status", &plan],
        &["plan", "results", &plan],
    ] {
        let out = db.ok(args);
        assert!(
            !out.chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{args:?} printed a raw control character: {out:?}"
        );
        assert!(out.contains("evil\\u{1b}[2J"), "{args:?}: {out}");
    }
    // JSON keeps the text exactly, escaped by JSON itself.
    assert_eq!(db.json(&["task", "get", &id])["title"], evil);
}

#[test]
fn every_command_speaks_json_errors_included() {
    let db = Db::new();
    assert!(
        db.json(&["migrate"])["migrated"]
            .as_str()
            .unwrap()
            .starts_with("sqlite:")
    );
    let id = db.json(&support::db::create_shell(r#"{"command": "exit 4"}"#))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = db.write(
        "plan.json",
        r#"{"title": "p", "subtasks": [{"id": "a", "title": "A", "task_type": "x"}]}"#,
    );
    let plan = db.json(&["plan", "submit", &file])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = db.json(&[
        "worker",
        "run",
        "--role",
        "r",
        "--id",
        "w",
        "--exit-when-idle",
    ]);
    assert_eq!(report["worker"], "w");
    assert_eq!(report["retried"], 3, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    assert_eq!(db.json(&["task", "get", &id])["status"], "failed");
    assert_eq!(db.json(&["task", "runs", &id]).as_array().unwrap().len(), 4);
    assert_eq!(db.json(&["task", "retry", &id])["status"], "queued");
    assert_eq!(
        db.json(&["task", "update", &id, "cancelled"])["status"],
        "cancelled"
    );
    assert_eq!(
        db.json(&["task", "retry", "--status", "cancelled"])["retried"],
        1
    );
    assert_eq!(db.json(&["task", "cancel", &id])["status"], "cancelled");
    assert_eq!(
        db.json(&["task", "prune", "--older-than", "1w"])["pruned"],
        0
    );
    assert_eq!(db.json(&["task", "delete", &id])["deleted"], true);
    assert_eq!(db.json(&["task", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(
        db.json(&["plan", "status", &plan])["plan"]["id"],
        plan.as_str()
    );
    assert_eq!(
        db.json(&["plan", "results", &plan])["plan_id"],
        plan.as_str()
    );
    let listed = db.json(&["plan", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // A listing shows each plan's header, never its subtasks (a plan may have 100,000).
    assert_eq!(listed[0]["id"], plan.as_str());
    assert!(
        listed[0]["total_subtasks"].as_u64().unwrap() > 0,
        "{listed}"
    );
    for heavy in ["subtasks", "subtask_ids", "dependency_graph"] {
        assert!(listed[0].get(heavy).is_none(), "{heavy} in {listed}");
    }
    assert_eq!(db.json(&["plan", "cancel", &plan])["status"], "cancelled");
    assert!(db.json(&["worker", "list"]).as_array().unwrap().is_empty());
    assert_eq!(db.json(&["status"])["plans_in_progress"], 0);

    // Errors: one JSON object on stderr, nothing on stdout.
    let ghost = "01a20c17-0000-7000-8000-000000000000";
    for (args, code, want) in [
        (
            &["--json", "task", "get", ghost][..],
            1,
            format!("task `{ghost}` not found"),
        ),
        (
            &["task", "list", "--json", "--bogus"],
            2,
            "unexpected argument '--bogus' found".into(),
        ),
        (
            &["--json", "task", "list", "--status", "x"],
            1,
            "unknown task status `x`".into(),
        ),
    ] {
        let out = db.hive().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let error: Value = serde_json::from_str(&stderr).unwrap();
        assert!(
            error["error"].as_str().unwrap().starts_with(&want),
            "{args:?}: {error}"
        );
    }
    // An argument that is not UTF-8 (a Latin-1 title from an old script) is a usage
    // error like any other, not a crash.
    use std::os::unix::ffi::OsStrExt;
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = db
        .hive()
        .args(["--json", "task", "create", "--type", "x", "--title"])
        .arg(latin1)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Value = serde_json::from_str(stderr.trim()).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("UTF-8"),
        "{error}"
    );
}

/// A plan of `noops` no-op subtasks, plus `bad` (a command that fails, not retried) and
/// `after`, which waits for it.
fn large_plan(db: &Db, noops: usize) -> String {
    let mut subtasks = vec![
        serde_json::json!({"id": "bad", "title": "bad", "task_type": "shell", "max_retries": 0,
            "payload": {"command": "echo 'disk on fire' >&2; exit 3"}}),
        serde_json::json!({"id": "after", "title": "after", "task_type": "shell",
            "dependencies": ["bad"], "payload": {"command": "true"}}),
    ];
    subtasks.extend((0..noops).map(|i| {
        serde_json::json!({"id": format!("n{i}"), "title": "n", "task_type": "noop", "payload": {}})
    }));
    let file = db.write(
        "large.json",
        &serde_json::json!({"title": "large", "subtasks": subtasks}).to_string(),
    );
    db.ok(&["plan", "submit", &file]).trim().to_owned()
}

/// The subtask ids of a `hive plan status` table, in its order.
fn table_subtasks(table: &str) -> Vec<String> {
    table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("SUBTASK"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn a_large_plans_status_shows_what_went_wrong_first_and_reads_only_that() {
    let db = Db::new();
    let plan = large_plan(&db, 1_200);

    // Before any worker: 1,202 subtasks are more than a terminal takes whole.
    let (ok, table, stderr) = db.run(&["plan", "status", &plan]);
    assert!(ok, "{stderr}");
    assert!(
        table.contains("progress: 0.0% (0 of 1202 completed"),
        "{table}"
    );
    assert_eq!(table_subtasks(&table).len(), 200, "{table}");
    assert!(
        stderr.contains("showing 200 of the plan's 1202 subtasks, failed and running first"),
        "{stderr}"
    );
    // Waiting: `after` waits for `bad`, by name, and for one of its one dependency.
    let after = table
        .lines()
        .find(|l| l.trim_start().starts_with("after "))
        .unwrap();
    assert!(
        after.contains(" bad ") && after.contains("1 of 1"),
        "{table}"
    );

    db.work_until_idle(&["--type", "shell", "--type", "noop", "--concurrency", "8"]);
    let table = db.ok(&["plan", "status", &plan]);
    assert!(table.contains("status: failed"), "{table}");
    let shown = table_subtasks(&table);
    assert_eq!(shown.len(), 200);
    assert_eq!(
        &shown[..2],
        ["bad", "after"],
        "failed first, then cancelled:\n{table}"
    );
    assert!(
        table.contains("disk on fire"),
        "the error's first line:\n{table}"
    );
    assert!(table.contains("DURATION"), "{table}");
    let header = table.lines().find(|l| l.contains("DURATION")).unwrap();
    let column = header.find("DURATION").unwrap();
    let bad = table
        .lines()
        .find(|l| l.trim_start().starts_with("bad "))
        .unwrap();
    assert!(
        bad[column..]
            .trim_start()
            .starts_with(|c: char| c.is_ascii_digit()),
        "a finished run's duration:\n{table}"
    );

    let failed = db.json(&["plan", "status", &plan, "--status", "failed"]);
    assert_eq!(failed["plan"]["failed_subtasks"], 1, "{failed}");
    assert_eq!(failed["more"], false);
    let rows = failed["subtasks"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["plan_subtask_id"], "bad");
    assert_eq!(rows[0]["status"], "failed");
    let cancelled = db.json(&["plan", "status", &plan, "--status", "cancelled"]);
    assert_eq!(
        cancelled["subtasks"][0]["depends_on"],
        serde_json::json!(["bad"]),
        "{cancelled}"
    );
    // Its latest run's timing, read for the rows shown only.
    assert!(rows[0]["started_at"].is_string(), "{failed}");
    assert!(
        rows[0]["duration_secs"].as_f64().unwrap() >= 0.0,
        "{failed}"
    );

    let (ok, three, stderr) = db.run(&[
        "plan",
        "status",
        &plan,
        "--status",
        "completed",
        "--limit",
        "3",
    ]);
    assert!(ok, "{stderr}");
    let three = table_subtasks(&three);
    assert_eq!(three.len(), 3);
    assert!(three.iter().all(|s| s.starts_with('n')), "{three:?}");
    assert!(stderr.contains("--limit N for more"), "{stderr}");

    // Past one page of the store (500 rows), the pages are followed.
    let many = db.json(&["plan", "status", &plan, "--limit", "1100"]);
    let many = many["subtasks"].as_array().unwrap();
    assert_eq!(many.len(), 1_100);
    let distinct: std::collections::HashSet<&str> =
        many.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 1_100, "no subtask twice across pages");

    // Every subtask, when asked for: the table with durations, and `--json` as always.
    let all = db.ok(&["plan", "status", &plan, "--all"]);
    assert!(all.contains("DURATION"), "{all}");
    assert_eq!(table_subtasks(&all).len(), 1_202);
    let whole = db.json(&["plan", "status", &plan]);
    assert_eq!(whole["subtasks"].as_array().unwrap().len(), 1_202);
    assert_eq!(whole["plan"]["status"], "failed");

    for (args, says) in [
        (vec!["--status", "sideways"], "sideways"),
        (vec!["--limit", "0"], "--limit must be at least 1"),
        (vec!["--all", "--status", "failed"], "cannot be used with"),
    ] {
        let mut a = vec!["plan", "status", plan.as_str()];
        a.extend(args);
        let (ok, _, stderr) = db.run(&a);
        assert!(!ok && stderr.contains(says), "{a:?}: {stderr}");
    }
}
