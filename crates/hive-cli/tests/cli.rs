//! The real `hive` binary against temporary SQLite files.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use assert_cmd::Command;
use support::db::{Db, create_once, create_shell, create_task};

const PLAN: &str = r#"{"title": "Release 1.2", "description": "optional",
 "subtasks": [
   {"id": "build", "title": "Build", "task_type": "shell", "priority": 5, "payload": {"command": "echo built > build.out"}},
   {"id": "test",  "title": "Test",  "task_type": "shell", "payload": {"command": "test -f build.out && echo tested"}, "dependencies": ["build"]}
 ]}"#;

/// A plan submitted again with the same key, from the file or from `--idempotency-key`, is
/// the first plan: the same id printed, no second plan, no more tasks.
#[test]
fn a_plan_submitted_twice_with_one_key_is_one_plan() {
    let db = Db::new();
    let keyed = db.write(
        "keyed.toml",
        "title = \"Nightly\"\nidempotency_key = \"nightly-2026-12-06\"\n\
         [[subtasks]]\nid = \"a\"\ntitle = \"A\"\ntask_type = \"noop\"\n",
    );
    let first = db.ok(&["plan", "submit", &keyed]).trim().to_owned();
    let (ok, again, stderr) = db.run(&["plan", "submit", &keyed]);
    assert!(ok, "{stderr}");
    assert_eq!(again.trim(), first, "the same id, alone on stdout");
    assert!(
        stderr.contains(&format!(
            "plan {first} was made before with idempotency key `nightly-2026-12-06`"
        )),
        "{stderr}"
    );
    let repeat = db.json(&["plan", "submit", &keyed]);
    assert_eq!(
        (repeat["id"].as_str(), repeat["created"].as_bool()),
        (Some(first.as_str()), Some(false))
    );
    let plain = db.write("plain.json", PLAN);
    let flagged = db.ok(&["plan", "submit", &plain, "--idempotency-key", "release-1.2"]);
    let flagged_again = db.ok(&["plan", "submit", &plain, "--idempotency-key", "release-1.2"]);
    assert_eq!(flagged, flagged_again);
    assert_ne!(flagged.trim(), first);
    let overridden = db.ok(&["plan", "submit", &keyed, "--idempotency-key", "release-1.2"]);
    assert_eq!(overridden, flagged, "the flag replaces the file's key");
    let plans = db.json(&["plan", "list"]);
    assert_eq!(plans.as_array().unwrap().len(), 2, "{plans}");
    let status = db.json(&["plan", "status", &first]);
    assert_eq!(
        status["plan"]["idempotency_key"], "nightly-2026-12-06",
        "{status}"
    );
    let shown = db.ok(&["plan", "status", &first]);
    assert!(
        shown.contains("\nidempotency key: nightly-2026-12-06\n"),
        "{shown}"
    );
    assert_eq!(db.json(&["task", "list"]).as_array().unwrap().len(), 3);

    let before = db.snapshot();
    db.refused(
        db.hive()
            .args(["plan", "submit", &plain, "--idempotency-key", " "]),
        "a blank key",
        "--idempotency-key: must not be empty",
        &before,
    );

    // A key the store would refuse is refused before connecting: no database is created.
    let fresh = Db::new();
    let plain = fresh.write("plain.json", PLAN);
    let long = "k".repeat(2000);
    let (ok, _, stderr) = fresh.run(&["plan", "submit", &plain, "--idempotency-key", &long]);
    assert!(!ok && stderr.contains("--idempotency-key:"), "{stderr}");
    assert!(
        !fresh.dir.path().join("hive.db").exists(),
        "no database created for a refused key"
    );
}

/// A task created again with the same idempotency key is the first task, and the
/// command says so: on stderr, and as `"created": false` with `--json`.
#[test]
fn a_task_created_twice_with_one_key_says_so() {
    let db = Db::new();
    let args = [
        "task",
        "create",
        "--title",
        "Mail",
        "--type",
        "noop",
        "--idempotency-key",
        "mail-7",
    ];
    let (ok, first, stderr) = db.run(&args);
    assert!(ok && stderr.is_empty(), "{stderr}");
    let first = first.trim().to_owned();
    let (ok, again, stderr) = db.run(&args);
    assert!(ok, "{stderr}");
    assert_eq!(again.trim(), first, "the same id, alone on stdout");
    assert!(
        stderr.contains(&format!(
            "task {first} was made before with idempotency key `mail-7`: nothing new"
        )),
        "{stderr}"
    );
    let repeat = db.json(&args);
    assert_eq!(
        (repeat["id"].as_str(), repeat["created"].as_bool()),
        (Some(first.as_str()), Some(false))
    );
    let fresh = db.json(&["task", "create", "--title", "Other", "--type", "noop"]);
    assert_eq!(fresh["created"], true, "{fresh}");
    assert_eq!(db.json(&["task", "list"]).as_array().unwrap().len(), 2);
}

/// A dependency a plan file names twice is one dependency, and is shown once.
#[test]
fn a_dependency_named_twice_is_shown_once() {
    let db = Db::new();
    let file = db.write(
        "twice.json",
        r#"{"title": "t", "subtasks": [{"id": "a", "task_type": "noop"},
            {"id": "b", "task_type": "noop", "dependencies": ["a", "a"]}]}"#,
    );
    let id = db.ok(&["plan", "submit", &file]).trim().to_owned();
    let results = db.json(&["plan", "results", &id]);
    let b = &results["subtasks"][1];
    assert_eq!(b["subtask_id"], "b", "{results}");
    assert_eq!(b["dependencies"], serde_json::json!(["a"]), "{results}");
    let shown = db.ok(&["plan", "status", &id]);
    assert!(!shown.contains("a,a"), "{shown}");
}

#[test]
fn plan_runs_to_completion_with_a_worker_process() {
    let db = Db::new();
    let file = db.write("plan.json", PLAN);
    let plan_id = db.ok(&["plan", "submit", &file]).trim().to_owned();
    assert_eq!(
        db.json(&["plan", "status", &plan_id])["plan"]["status"],
        "pending"
    );
    db.ok(&[
        "worker",
        "run",
        "--role",
        "builder",
        "--concurrency",
        "2",
        "--exit-when-idle",
    ]);
    let status = db.json(&["plan", "status", &plan_id]);
    assert_eq!(status["plan"]["status"], "completed", "{status}");
    assert_eq!(status["progress_percent"], 100.0);
    let tasks = db.json(&["task", "list"]);
    let test = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == "Test")
        .unwrap();
    let runs = db.json(&["task", "runs", test["id"].as_str().unwrap()]);
    assert_eq!(runs[0]["status"], "success");
    assert_eq!(
        runs[0]["output_log"], "tested\n",
        "stdout goes to the run's output log"
    );
    let table = db.ok(&["plan", "status", &plan_id]);
    assert!(table.contains("status: completed"), "{table}");
}

#[test]
fn shell_outputs_flow_to_dependents_and_plan_results_show_them() {
    let db = Db::new();
    let file = db.write(
        "flow.json",
        r#"{"title": "flow", "subtasks": [
   {"id": "produce", "title": "Produce", "task_type": "shell",
    "payload": {"command": "echo starting; echo '{\"n\": 2, \"word\": \"héllo\"}'; echo done"}},
   {"id": "file", "title": "File", "task_type": "shell",
    "payload": {"command": "printf '[1, {\"deep\": null}]' > \"$HIVE_OUTPUT\""}},
   {"id": "consume", "title": "Consume", "task_type": "shell", "dependencies": ["produce", "file"],
    "payload": {"command": "cp \"$HIVE_INPUTS\" inputs.json && cat > stdin.json && echo 'no json'"}},
   {"id": "echo", "task_type": "shell", "dependencies": ["produce"],
    "payload": {"command": "cat \"$HIVE_INPUTS\"; cat; echo '{\"seen\": true}'"}}
 ]}"#,
    );
    let plan_id = db.ok(&["plan", "submit", &file]).trim().to_owned();
    db.work_until_idle(&[]);
    let want =
        serde_json::json!({"produce": {"n": 2, "word": "héllo"}, "file": [1, {"deep": null}]});
    for name in ["inputs.json", "stdin.json"] {
        let text = std::fs::read_to_string(db.dir.path().join(name)).unwrap();
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got, want, "{name}");
        // One line, so `cat` or `read` leaves what the command prints next on a line of its own.
        assert_eq!(text.matches('\n').count(), 1, "{name}: {text:?}");
        assert!(text.ends_with('\n'), "{name}: {text:?}");
    }
    let results = db.json(&["plan", "results", &plan_id]);
    assert_eq!(results["status"], "completed", "{results}");
    assert_eq!(
        results["result"],
        serde_json::json!({"consume": null, "echo": {"seen": true}}),
        "the plan's result is its final subtasks' outputs"
    );
    let produce = results["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subtask_id"] == "produce")
        .unwrap();
    assert_eq!(produce["output"], want["produce"]);
    assert_eq!(produce["attempts"], 1);
    let table = db.ok(&["plan", "results", &plan_id]);
    assert!(table.contains("héllo"), "{table}");
    let status = db.ok(&["plan", "status", &plan_id]);
    for column in [
        "SUBTASK",
        "ATTEMPTS",
        "DURATION",
        "WORKER",
        "DEPS",
        "produce,file",
    ] {
        assert!(status.contains(column), "`{column}` in\n{status}");
    }
}

#[test]
fn shell_tasks_grow_their_plan_through_the_spawn_file() {
    let db = Db::new();
    db.write(
        "split.sh",
        r#"for i in 0 1 2; do
  printf '{"id": "chunk-%s", "title": "Chunk %s", "task_type": "shell", "dependencies": ["split"], "payload": {"command": "sh chunk.sh %s"}}\n' $i $i $i >> "$HIVE_SPAWN"
done
echo '{"chunks": 3}'
"#,
    );
    db.write("chunk.sh", "printf '{\"i\": %s}\\n' \"$1\"\n");
    let file = db.write(
        "grow.json",
        r#"{"title": "grows", "subtasks": [
   {"id": "split", "title": "Split", "task_type": "shell", "payload": {"command": "sh split.sh"}},
   {"id": "join", "title": "Join", "task_type": "shell", "dependencies": ["split"],
    "payload": {"command": "cp \"$HIVE_INPUTS\" join.json"}}
 ]}"#,
    );
    let plan_id = db.ok(&["plan", "submit", &file]).trim().to_owned();
    // A plan of one subtask `id` whose command leaves `spawned` as its spawn file.
    let spawner = |id: &str, spawned: &str| {
        let command = format!("echo '{spawned}' > \"$HIVE_SPAWN\"");
        let plan = serde_json::json!({"title": id, "subtasks": [
            {"id": id, "title": id, "task_type": "shell", "payload": {"command": command}}]});
        let file = db.write(&format!("{id}.json"), &plan.to_string());
        db.ok(&["plan", "submit", &file]).trim().to_owned()
    };
    // A spawn file that is not subtasks fails its task for good and adds nothing.
    let bad_id = spawner("bad", r#"{"id": "x"}"#);
    // So does a spawn the plan refuses as it commits the success: a dependency on a
    // subtask the plan does not have (what the worker cannot know without the plan).
    let dup_id = spawner(
        "dup",
        r#"{"id": "x", "title": "D", "task_type": "noop", "dependencies": ["nope"]}"#,
    );
    // So does one written by a task of no plan.
    let lone = db.ok(&create_shell(
        r#"{"command": "echo '{\"id\": \"x\", \"title\": \"X\", \"task_type\": \"noop\"}' > \"$HIVE_SPAWN\""}"#,
    ));
    let worker_log = db.work_until_idle_logged(&[]);

    let results = db.json(&["plan", "results", &plan_id]);
    assert_eq!(results["status"], "completed", "{results}");
    let ids: Vec<&str> = results["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subtask_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let inputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(db.dir.path().join("join.json")).unwrap())
            .unwrap();
    assert_eq!(
        inputs,
        serde_json::json!({"split": {"chunks": 3}, "chunk-0": {"i": 0}, "chunk-1": {"i": 1},
            "chunk-2": {"i": 2}}),
        "the join waited for every spawned chunk and got their outputs"
    );

    let bad = db.json(&["plan", "results", &bad_id]);
    assert_eq!(bad["status"], "failed", "{bad}");
    assert_eq!(
        bad["subtasks"].as_array().unwrap().len(),
        1,
        "nothing added"
    );
    let error = bad["subtasks"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("HIVE_SPAWN") && error.contains("line 1"),
        "{error}"
    );
    assert_eq!(bad["subtasks"][0]["attempts"], 1, "not retried");
    let lone = db.json(&["task", "get", lone.trim()]);
    assert_eq!(lone["status"], "failed", "{lone}");
    assert!(
        lone["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("belongs to no plan")),
        "{lone}"
    );
    // The store refused it as it committed the handler's success: logged all the same.
    let dup = db.json(&["plan", "results", &dup_id]);
    assert_eq!(dup["status"], "failed", "{dup}");
    let task = dup["subtasks"][0]["task_id"].as_str().unwrap();
    let logged = format!("task {task} failed as its outcome was committed: cannot spawn");
    assert!(
        worker_log.lines().any(|l| l.contains(&logged)),
        "{worker_log}"
    );
}

#[test]
fn task_timeouts_stop_the_handler_and_delays_hold_the_task() {
    let db = Db::new();
    let create = |title: &str, task_type: &str, more: &[&str]| {
        let mut args = vec!["task", "create", "--title", title, "--type", task_type];
        args.extend_from_slice(more);
        db.ok(&args)
    };
    let sleep = r#"{"command": "sleep 30"}"#;
    let slow = create(
        "slow",
        "shell",
        &["--payload", sleep, "--timeout", "1", "--max-retries", "0"],
    );
    let later = create("later", "other", &["--delay", "3600"]);
    let started = std::time::Instant::now();
    db.work_until_idle(&["--type", "shell"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "the sleep was cut short"
    );
    let task = db.json(&["task", "get", slow.trim()]);
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(
        task["last_error"],
        "timed out after 1s; the handler stopped"
    );
    let runs = db.json(&["task", "runs", slow.trim()]);
    assert_eq!(runs[0]["status"], "timeout", "{runs}");
    // The worker's default applies to a task without its own timeout.
    let quiet = create(
        "quiet",
        "shell",
        &["--payload", sleep, "--max-retries", "0"],
    );
    db.work_until_idle(&["--task-timeout", "0.5"]);
    let task = db.json(&["task", "get", quiet.trim()]);
    assert_eq!(
        task["last_error"],
        "timed out after 0.5s; the handler stopped"
    );
    let later = db.json(&["task", "get", later.trim()]);
    assert_eq!(later["delay_secs"], 3600);
    assert!(later["run_at"].is_string(), "{later}");
    for bad in [["--timeout", "0"], ["--delay", "99999999999"]] {
        let mut args = vec!["task", "create", "--title", "x", "--type", "other"];
        args.extend(bad);
        let out = db.hive().args(&args).output().unwrap();
        assert!(!out.status.success(), "{bad:?} is refused");
    }
}

#[test]
fn payloads_and_plans_from_files_and_stdin() {
    let db = Db::new();
    let file = db.write("payload.json", r#"{"command": "echo from-file"}"#);
    let from_file = db.ok(&create_shell(&format!("@{file}")));
    let task = db.json(&["task", "get", from_file.trim()]);
    assert_eq!(task["payload"]["command"], "echo from-file");
    let id = db.ok_with_stdin(&create_shell("-"), r#"{"command": "echo from-stdin"}"#);
    let task = db.json(&["task", "get", id.trim()]);
    assert_eq!(task["payload"]["command"], "echo from-stdin");
    let plan = db.ok_with_stdin(&["plan", "submit", "-"], PLAN);
    let status = db.json(&["plan", "status", plan.trim()]);
    assert_eq!(status["plan"]["total_subtasks"], 2);
    assert_eq!(status["plan"]["metadata"], serde_json::json!({}));
    let tagged = PLAN.replacen('{', r#"{"metadata": {"requested_by": "ana"}, "#, 1);
    let plan = db.ok_with_stdin(&["plan", "submit", "-"], &tagged);
    let status = db.json(&["plan", "status", plan.trim()]);
    assert_eq!(status["plan"]["metadata"]["requested_by"], "ana");
    let listed = PLAN.replacen('{', r#"{"metadata": ["not", "an", "object"], "#, 1);
    let refused = db
        .hive()
        .args(["plan", "submit", "-"])
        .write_stdin(listed)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("must be a JSON object"), "{stderr}");
    let missing = db.hive().args(create_shell("@nope.json")).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.json"));
}

#[test]
fn toml_plans_and_failing_commands() {
    let db = Db::new();
    let file = db.write(
        "plan.toml",
        r#"title = "toml plan"
metadata = { ticket = "OPS-7", owners = ["ops"] }
[[subtasks]]
id = "fails"
title = "Fails"
task_type = "shell"
max_retries = 0
payload = { command = "echo oops >&2; exit 3" }
[[subtasks]]
id = "after"
task_type = "shell"
dependencies = ["fails"]
payload = { command = "true" }
"#,
    );
    let plan_id = db.ok(&["plan", "submit", &file]).trim().to_owned();
    db.work_until_idle(&[]);
    let status = db.json(&["plan", "status", &plan_id]);
    assert_eq!(status["plan"]["status"], "failed");
    assert_eq!(
        status["plan"]["metadata"],
        serde_json::json!({"ticket": "OPS-7", "owners": ["ops"]})
    );
    assert_eq!(status["task_counts"]["failed"], 1);
    assert_eq!(
        status["task_counts"]["cancelled"], 1,
        "the dependent is cancelled"
    );
    let failed = db.json(&["task", "list", "--status", "failed"]);
    let runs = db.json(&["task", "runs", failed[0]["id"].as_str().unwrap()]);
    assert_eq!(
        runs[0]["error_message"], "command exited with status 3: oops",
        "the error ends with the last line on stderr"
    );
    assert_eq!(runs[0]["output_log"], "oops\n");
    // A subtask without a title is titled by its id.
    let cancelled = db.json(&["task", "list", "--status", "cancelled"]);
    assert_eq!(cancelled[0]["title"], "after", "{cancelled}");
    // A broken TOML plan is named with the line and column of the fault, on one line.
    let broken = db.write(
        "broken.toml",
        "title = \"p\"\n[[subtasks]]\nid = \"a\"\ntask_type = 3\n",
    );
    let refused = db
        .hive()
        .args(["plan", "submit", &broken])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("broken.toml` is not a valid TOML plan: invalid type: integer `3`, expected a string at line 4 column 13"),
        "{stderr}"
    );
}

#[test]
fn task_commands() {
    let db = Db::new();
    let id = db.ok(&[
        "task",
        "create",
        "--title",
        "T",
        "--type",
        "shell",
        "--payload",
        r#"{"command":"true"}"#,
        "--priority",
        "7",
    ]);
    let id = id.trim();
    let task = db.json(&["task", "get", id]);
    assert_eq!(
        (task["priority"].as_i64(), task["status"].as_str()),
        (Some(7), Some("queued"))
    );
    db.ok(&["task", "update", id, "in_progress"]);
    db.ok(&["task", "update", id, "review_pending"]);
    assert_eq!(db.json(&["task", "get", id])["status"], "review_pending");
    let said = db.ok(&["task", "cancel", id, "--reason", "superseded by 1.3"]);
    assert_eq!(
        said.trim(),
        format!("task {id} cancelled: superseded by 1.3")
    );
    assert_eq!(
        db.json(&["task", "get", id])["last_error"],
        "superseded by 1.3"
    );
    assert_eq!(
        db.json(&["task", "list", "--status", "cancelled"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    db.ok(&["task", "delete", id]);
    assert!(db.json(&["task", "list"]).as_array().unwrap().is_empty());
    assert!(db.ok(&["worker", "list"]).contains("ID"));
    assert!(
        db.json(&["worker", "list", "--role", "x"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bad_input_is_one_line_nonzero_and_changes_nothing() {
    let db = Db::new();
    let file = db.write("plan.json", PLAN);
    db.ok(&["plan", "submit", &file]);
    let known = db.json(&["task", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cyclic = db.write(
        "cyclic.json",
        r#"{"title": "c", "subtasks": [
            {"id": "a", "title": "A", "task_type": "shell", "dependencies": ["b"]},
            {"id": "b", "title": "B", "task_type": "shell", "dependencies": ["a"]}]}"#,
    );
    let malformed = db.write("bad.json", r#"{"title": "x", "subtasks": [ {"id": "a""#);
    // An argument cannot carry a payload over the limit (Linux caps one at 128 KiB), a plan
    // file can.
    let oversized = db.write(
        "big.json",
        &serde_json::json!({"title": "big", "subtasks": [
            {"id": "a", "title": "A", "task_type": "shell", "payload": {"blob": "x".repeat(1024 * 1024 + 1)}}
        ]})
        .to_string(),
    );
    let unknown_dependency = db.write(
        "ghost.json",
        r#"{"title": "g", "subtasks": [
            {"id": "a", "title": "A", "task_type": "shell", "dependencies": ["ghost"]}]}"#,
    );
    let self_dependency = db.write(
        "self.json",
        r#"{"title": "s", "subtasks": [
            {"id": "a", "title": "A", "task_type": "shell", "dependencies": ["a"]}]}"#,
    );
    let before = db.snapshot();
    let ghost = "01a20c17-0000-7000-8000-000000000000";
    let with_payload = |p: &'static str| {
        vec![
            "task",
            "create",
            "--title",
            "t",
            "--type",
            "x",
            "--payload",
            p,
        ]
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (with_payload("{nope"), "not valid JSON"),
        (
            vec!["task", "create", "--title", "", "--type", "x"],
            "`title`",
        ),
        (
            vec!["task", "update", &known, "runing"],
            "unknown task status `runing`",
        ),
        (
            vec!["task", "update", &known, "approved"],
            "illegal task status transition",
        ),
        (vec!["task", "update", ghost, "completed"], "not found"),
        (vec!["task", "get", ghost], "not found"),
        (vec!["task", "get", "not-a-uuid"], "invalid task id"),
        (vec!["task", "cancel", ghost], "not found"),
        (vec!["task", "delete", ghost], "not found"),
        (vec!["task", "runs", ghost], "not found"),
        (
            vec!["task", "list", "--status", "bogus"],
            "unknown task status",
        ),
        (vec!["plan", "status", ghost], "not found"),
        (vec!["plan", "cancel", ghost], "not found"),
        (vec!["plan", "submit", &cyclic], "dependency cycle"),
        (vec!["plan", "submit", &malformed], "not a valid JSON plan"),
        (
            vec!["plan", "submit", "missing.json"],
            "cannot read plan file `missing.json`",
        ),
        (
            with_payload(r#"{"a": "\u0000"}"#),
            "`payload`: must not contain a NUL character",
        ),
        (
            vec!["plan", "submit", &oversized],
            "over the limit of 1048576 bytes",
        ),
        (vec!["plan", "submit", &unknown_dependency], "`ghost`"),
        (
            vec!["plan", "submit", &self_dependency],
            "`a` depends on itself",
        ),
        (
            vec!["task", "list", "--status", "in_progres"],
            "unknown task status `in_progres`",
        ),
        (vec!["task", "runs", "not-a-uuid"], "invalid task id"),
    ];
    for (args, want) in cases {
        db.refused(db.hive().args(&args), &format!("{args:?}"), want, &before);
    }
    let counts = &before.3;
    for table in ["plans", "runs", "task_dependencies", "tasks", "workers"] {
        assert!(
            counts.iter().any(|(t, _)| t == table),
            "{table} in {counts:?}"
        );
    }
    assert!(
        counts
            .iter()
            .any(|(t, n)| t == "task_dependencies" && *n == 1)
    );

    // Unusable database URLs, on a command that would write: one line, no password.
    for (url, want) in [
        (
            "mysql://u:sentinel-pw@db.example/x",
            "unsupported database url",
        ),
        ("sqlite:", "unsupported database url"),
        (
            "sqlite:/nonexistent-hive-dir/sub/hive.db",
            "cannot use the database at /nonexistent-hive-dir/sub/hive.db",
        ),
        (
            "postgres://u:sentinel-pw@127.0.0.1:1/x",
            "database unavailable at 127.0.0.1:1",
        ),
    ] {
        let mut cmd = db.hive();
        cmd.env("HIVE_DATABASE_URL", url)
            .args(["task", "create", "--title", "t", "--type", "x"]);
        let stderr = db.refused(&mut cmd, url, want, &before);
        assert!(!stderr.contains("sentinel-pw"), "{stderr}");
    }
}

#[test]
fn demo_completes_on_a_fresh_file() {
    let db = Db::new();
    let out = Command::cargo_bin("hive")
        .unwrap()
        .env_remove("HIVE_DATABASE_URL")
        .current_dir(db.dir.path())
        .args(["demo", "--subtasks", "60", "--workers", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("60 tasks in"), "{stdout}");
    assert!(stdout.trim_end().ends_with("completed"), "{stdout}");
    assert!(
        !Path::new(&db.dir.path().join("hive.db")).exists(),
        "the demo uses its own temporary file"
    );
}

/// `task create` takes a task's own retry policy (refusing one that contradicts itself);
/// a running run's progress shows in `task get` and `task runs`.
#[test]
fn retry_flags_and_progress_show_in_task_commands() {
    let db = Db::new();
    let create = |extra: &[&str]| {
        let mut args = vec!["task", "create", "--title", "long", "--type", "x"];
        args.extend_from_slice(extra);
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let flags = create(&[
        "--max-retries",
        "5",
        "--retry-base",
        "2",
        "--retry-max",
        "60",
        "--no-jitter",
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let id = db.ok(&flags).trim().to_owned();
    let task = db.json(&["task", "get", &id]);
    assert_eq!(task["max_retries"], 5);
    assert_eq!(
        task["retry_policy"],
        serde_json::json!({"base": 2000, "max": 60000, "jitter": "none"})
    );
    let before = db.snapshot();
    let bad = create(&["--retry-base", "10", "--retry-max", "1"]);
    db.refused(
        db.hive().args(&bad),
        "task create --retry-base 10 --retry-max 1",
        "below the base",
        &before,
    );

    // A worker of this test's own reports progress on the running run.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(hive_client::Client::connect(&db.url))
        .unwrap();
    runtime.block_on(async {
        let worker = hive_client::WorkerId::parse("w").unwrap();
        let claim = client
            .claim_next_task(&worker, &[], std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .expect("the task is claimable");
        client
            .record_progress(claim.run.id, 0.42, Some("copying files".into()))
            .await
            .unwrap();
    });
    let runs = db.ok(&["task", "runs", &id]);
    assert!(
        runs.contains("PROGRESS") && runs.contains("42% copying files"),
        "{runs}"
    );
    let shown = db.ok(&["task", "get", &id]);
    assert!(shown.contains("42% copying files"), "{shown}");
    let json = db.json(&["task", "runs", &id]);
    assert_eq!(json[0]["progress"]["fraction"], 0.42, "{json}");
}

/// A shell task's output is its last JSON line however much it printed before it; one
/// over the output limit fails the task naming it and its size, and one too long to be read
/// at all fails it saying so: neither is dropped in silence.
#[test]
fn shell_outputs_after_long_logs_and_over_the_limit() {
    let db = Db::new();
    let logs = r#"{"command": "head -c 3145728 /dev/zero | tr '\\0' . | fold -w 1023; echo; echo '{\"after\": \"3 MiB of logs\"}'"}"#;
    let over = r#"{"command": "printf '{\"a\": \"'; head -c 1100000 /dev/zero | tr '\\0' x; printf '\"}\\n'"}"#;
    let unread = r#"{"command": "printf '{\"a\": \"'; head -c 3000000 /dev/zero | tr '\\0' x; printf '\"}\\n'"}"#;
    let id = |payload: &str| {
        let args = create_once("t", "shell", payload, &[]);
        db.ok(&args).trim().to_owned()
    };
    let (logs, over, unread) = (id(logs), id(over), id(unread));
    let worker_log = db.work_until_idle_logged(&[]);

    let task = db.json(&["task", "get", &logs]);
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(
        task["result"],
        serde_json::json!({"after": "3 MiB of logs"})
    );
    let runs = db.json(&["task", "runs", &logs]);
    let log = runs[0]["output_log"].as_str().unwrap();
    assert!(
        log.contains(" bytes not kept]\n"),
        "the log keeps both ends"
    );
    assert!(log.ends_with("{\"after\": \"3 MiB of logs\"}\n"));

    let task = db.json(&["task", "get", &over]);
    assert_eq!(task["status"], "failed", "{task}");
    let error = task["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "output of 1100008 bytes, over the limit of 1048576 bytes, from task {over}"
        )),
        "{error}"
    );
    // Decided after the handler returned normally: logged all the same.
    assert!(
        worker_log.contains(&format!(
            "task {over} failed: output of 1100008 bytes, over the limit"
        )),
        "{worker_log}"
    );

    let task = db.json(&["task", "get", &unread]);
    assert_eq!(task["status"], "failed", "{task}");
    let error = task["last_error"].as_str().unwrap();
    assert!(
        error.contains("is longer than the 2 MiB read for an output"),
        "{error}"
    );
}

/// `hive plan cancel` of a failed plan cancels what is still open in it (what did not
/// depend on the failure) and says the plan stays failed; with nothing open, it refuses.
#[test]
fn a_failed_plans_open_subtasks_are_cancelled_by_plan_cancel() {
    let db = Db::new();
    let file = db.write(
        "two.json",
        r#"{"title": "two", "subtasks": [{"id": "bad", "title": "bad", "task_type": "x"},
            {"id": "other", "title": "other", "task_type": "x"}]}"#,
    );
    let plan = db.ok(&["plan", "submit", &file]).trim().to_owned();
    let status = |db: &Db| db.json(&["plan", "status", &plan]);
    let subtasks = status(&db)["subtasks"].clone();
    let task_of = |name: &str| {
        let mut s = subtasks.as_array().unwrap().iter();
        let found = s.find(|s| s["subtask_id"] == name).unwrap();
        found["task_id"].as_str().unwrap().to_owned()
    };
    db.ok(&["task", "update", &task_of("bad"), "failed"]);
    assert_eq!(status(&db)["plan"]["status"], "failed");
    assert_eq!(
        db.ok(&["plan", "cancel", &plan]).trim(),
        format!("plan {plan} stays failed; its subtasks still open are cancelled")
    );
    let other = db.json(&["task", "get", &task_of("other")]);
    assert_eq!(other["status"], "cancelled", "{other}");
    assert_eq!(status(&db)["plan"]["status"], "failed");
    let (ok, _, err) = db.run(&["plan", "cancel", &plan]);
    assert!(!ok && err.contains("is already failed"), "{err}");
}

#[test]
fn a_failed_plan_retried_runs_only_what_did_not_complete() {
    let db = Db::new();
    let file = db.write(
        "retry.toml",
        r#"title = "retry me"
[[subtasks]]
id = "fetch"
title = "Fetch"
task_type = "shell"
payload = { command = "echo run >> fetch.runs; echo '{\"rows\": 3}'" }
[[subtasks]]
id = "flaky"
title = "Flaky"
task_type = "shell"
max_retries = 0
payload = { command = "echo $HIVE_ATTEMPT-$HIVE_RUN_NUMBER >> flaky.runs; test -f fixed || { echo 'upstream down' >&2; exit 1; }" }
[[subtasks]]
id = "report"
title = "Report"
task_type = "shell"
dependencies = ["fetch", "flaky"]
payload = { command = "cp \"$HIVE_INPUTS\" report.inputs" }
"#,
    );
    let plan_id = db.ok(&["plan", "submit", &file]).trim().to_owned();
    let before = db.snapshot();
    db.refused(
        db.hive().args(["plan", "retry", &plan_id]),
        "plan retry of a pending plan",
        "`pending` plans cannot be retried: it is still running",
        &before,
    );
    db.refused(
        db.hive()
            .args(["plan", "retry", "00000000-0000-0000-0000-000000000000"]),
        "plan retry of an unknown plan",
        "not found",
        &before,
    );
    db.work_until_idle(&[]);
    let status = db.json(&["plan", "status", &plan_id]);
    assert_eq!(status["plan"]["status"], "failed", "{status}");
    assert_eq!(
        status["task_counts"]["cancelled"], 1,
        "report was cancelled"
    );
    let failed = db.json(&["plan", "list", "--status", "failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(failed[0]["id"], plan_id.as_str());
    assert_eq!(
        db.json(&["plan", "list", "--status", "completed"]),
        serde_json::json!([])
    );
    let (ok, _, err) = db.run(&["plan", "list", "--status", "broken"]);
    assert!(!ok && err.contains("unknown plan status `broken`"), "{err}");

    std::fs::write(db.dir.path().join("fixed"), "").unwrap();
    let retried = db.json(&["plan", "retry", &plan_id]);
    assert_eq!(retried["status"], "in_progress", "{retried}");
    assert_eq!(
        retried["requeued"].as_array().unwrap().len(),
        2,
        "{retried}"
    );
    db.work_until_idle(&[]);
    let status = db.json(&["plan", "status", &plan_id]);
    assert_eq!(status["plan"]["status"], "completed", "{status}");
    let results = db.json(&["plan", "results", &plan_id]);
    let mut flaky = results["subtasks"].as_array().unwrap().iter();
    let flaky = flaky.find(|s| s["subtask_id"] == "flaky").unwrap();
    assert_eq!(
        (&flaky["status"], &flaky["error"]),
        (&serde_json::json!("completed"), &serde_json::Value::Null),
        "a retry that succeeded shows no error: {results}"
    );
    let table = db.ok(&["plan", "status", &plan_id]);
    assert!(!table.contains("upstream down"), "{table}");
    let runs = std::fs::read_to_string(db.dir.path().join("fetch.runs")).unwrap();
    assert_eq!(
        runs, "run\n",
        "fetch completed before the retry and ran once"
    );
    let flaky = std::fs::read_to_string(db.dir.path().join("flaky.runs")).unwrap();
    assert_eq!(
        flaky, "1-1\n1-2\n",
        "a fresh retry budget; run numbers go on"
    );
    let inputs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(db.dir.path().join("report.inputs")).unwrap(),
    )
    .unwrap();
    assert_eq!(inputs["fetch"], serde_json::json!({"rows": 3}));

    let done = db.snapshot();
    db.refused(
        db.hive().args(["plan", "retry", &plan_id]),
        "plan retry of a completed plan",
        "`completed` plans cannot be retried: every subtask completed",
        &done,
    );
    let text = {
        let failed = db.write("fails.json", r#"{"title": "t", "subtasks": [{"id": "x", "title": "X", "task_type": "shell", "max_retries": 0, "payload": {"command": "exit 2"}}]}"#);
        let id = db.ok(&["plan", "submit", &failed]).trim().to_owned();
        db.work_until_idle(&[]);
        db.ok(&["plan", "retry", &id])
    };
    assert!(
        text.contains("is in_progress again: 1 subtask queued again"),
        "{text}"
    );
}

#[test]
fn finished_plans_are_pruned_with_their_subtasks() {
    let db = Db::new();
    let file = db.write("plan.json", PLAN);
    db.ok(&["plan", "submit", &file]);
    db.ok(&["plan", "submit", &file]);
    db.work_until_idle(&[]);
    let loose = db.ok(&create_task("loose", "other", &[])).trim().to_owned();
    let before = db.snapshot();
    db.refused(
        db.hive().args([
            "plan",
            "prune",
            "--older-than",
            "1s",
            "--status",
            "in_progress",
        ]),
        "plan prune of running plans",
        "only finished plans can be pruned, not `in_progress`",
        &before,
    );
    db.refused(
        db.hive()
            .args(["plan", "prune", "--older-than", "1s", "--status", "done"]),
        "plan prune with an unknown status",
        "unknown plan status `done`",
        &before,
    );
    let young = db.json(&["plan", "prune", "--older-than", "1h"]);
    assert_eq!(young, serde_json::json!({"plans": 0, "tasks": 0}));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        db.json(&["task", "prune", "--older-than", "1s"])["pruned"],
        0,
        "a plan's subtasks go with their plan, not with the tasks"
    );
    let text = db.ok(&["plan", "prune", "--older-than", "1s"]);
    assert_eq!(text.trim(), "2 plan(s) pruned, with 4 task(s)");
    assert_eq!(db.json(&["plan", "list"]), serde_json::json!([]));
    let left = db.json(&["task", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["id"], loose.as_str());
}

#[test]
fn plan_and_task_wait_end_with_the_work_and_say_how_in_the_exit_status() {
    let db = Db::new();
    let file = db.write(
        "plan.json",
        r#"{"title": "w", "subtasks": [
            {"id": "a", "task_type": "shell", "payload": {"command": "true"}},
            {"id": "b", "task_type": "shell", "dependencies": ["a"], "max_retries": 0,
             "payload": {"command": "echo broke >&2; exit 3"}}]}"#,
    );
    let plan = db.ok(&["plan", "submit", &file]).trim().to_owned();
    let task = db
        .ok(&create_shell(r#"{"command": "true"}"#))
        .trim()
        .to_owned();
    let waited = |args: &[&str]| {
        let out = db.hive().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Nothing runs them yet: the time runs out (124), and the wait says what it saw.
    let (code, out) = waited(&["plan", "wait", &plan, "--timeout", "0.2"]);
    assert_eq!(code, Some(124), "{out}");
    assert!(
        out.contains(&format!(
            "plan {plan} still pending after 200ms: 0 of 2 subtasks completed"
        )),
        "{out}"
    );
    let (code, out) = waited(&["task", "wait", &task, "--timeout", "0.2"]);
    assert_eq!(code, Some(124), "{out}");
    // Waits started before a worker in another process runs the work end with it.
    let spawn_wait = |args: &[&str]| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("hive"))
            .env("HIVE_DATABASE_URL", &db.url)
            .args(args)
            .args(["--timeout", "60"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let plan_wait = spawn_wait(&["plan", "wait", &plan]);
    let task_wait = spawn_wait(&["--json", "task", "wait", &task]);
    db.work_until_idle(&[]);
    let out = plan_wait.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failed plan: {stdout}");
    assert!(
        stdout.contains(&format!(
            "plan {plan} failed: 1 of 2 subtasks completed, 1 failed, 0 cancelled"
        )),
        "{stdout}"
    );
    let out = task_wait.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"], "completed", "{json}");
    // The failed subtask's wait names its error.
    let failed = db.json(&["task", "list", "--status", "failed"]);
    let failed_id = failed[0]["id"].as_str().unwrap();
    let (code, out) = waited(&["task", "wait", failed_id]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&format!(
            "task {failed_id} failed after 1 attempt: command exited with status 3"
        )),
        "{out}"
    );
    // A reader gone before the answer (stdout a pipe whose reading end is closed) does
    // not turn the failure into a success.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = std::process::Command::new(assert_cmd::cargo::cargo_bin("hive"))
        .env("HIVE_DATABASE_URL", &db.url)
        .args(["task", "wait", failed_id])
        .stdout(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "{status}");
    // Bad input: refused, nothing waited for.
    for (args, want) in [
        (
            &["plan", "wait", &plan, "--timeout", "soon"][..],
            "`soon` is not a length of time",
        ),
        (
            &["plan", "wait", "01a20c17-0000-7000-8000-000000000000"][..],
            "plan `01a20c17-0000-7000-8000-000000000000` not found",
        ),
        (&["task", "wait", "nope"][..], "invalid task id `nope`"),
    ] {
        let (ok, _, stderr) = db.run(args);
        assert!(!ok && stderr.contains(want), "{args:?}: {stderr}");
    }
    // Not the failed work's 1: a script rerunning failed work must not rerun a typo.
    let (code, _) = waited(&["task", "wait", "01a20c17-0000-7000-8000-000000000000"]);
    assert_eq!(code, Some(125));
    // A time longer than the clock holds is no time limit, not a panic.
    let (code, _) = waited(&["task", "wait", failed_id, "--timeout", "1e19"]);
    assert_eq!(code, Some(1));
}
