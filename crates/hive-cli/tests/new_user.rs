//! What a new user hit, each reproduced through the real binary: read commands that made
//! any database a Hive database, a demo that wrote into the configured database, a broken
//! pipe that panicked, a plan broken by deleting one of its tasks, workers started with a
//! type they cannot run or timings that contradict each other, a missing directory retried
//! forever, a read-only file that could not be read, shell payloads accepted that the
//! handler then refused, and an idle worker that exited saying nothing of the tasks it left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use support::db::{Db, create_shell};

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Tables in an SQLite file, read without Hive.
fn sqlite_tables(path: &Path) -> Vec<String> {
    block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut c)
            .await
            .unwrap()
    })
}

fn stderr_of(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn read_commands_never_create_or_adopt_a_database() {
    let db = Db::new();
    let typo = db.dir.path().join("hvie.db");
    let typo_url = format!("sqlite:{}", typo.display());
    for args in [
        &["status"][..],
        &["task", "list"],
        &["plan", "list"],
        &["worker", "list"],
    ] {
        let (ok, stderr) = stderr_of(db.hive().env("HIVE_DATABASE_URL", &typo_url).args(args));
        assert!(!ok, "{args:?} on a missing file");
        assert!(stderr.contains("does not exist"), "{args:?}: {stderr}");
        assert!(!typo.exists(), "{args:?} created the file");
    }

    // An app's own SQLite file: refused by reads and by commands that create work.
    let app = db.dir.path().join("app.db");
    block_on(hive_store::testing::fixtures::foreign_sqlite(&app));
    let app_url = format!("sqlite:{}", app.display());
    let (ok, stderr) = stderr_of(db.hive().env("HIVE_DATABASE_URL", &app_url).arg("status"));
    assert!(!ok && stderr.contains("not a Hive database"), "{stderr}");
    let (ok, stderr) = stderr_of(
        db.hive()
            .env("HIVE_DATABASE_URL", &app_url)
            .args(create_shell(r#"{"command":"true"}"#)),
    );
    assert!(!ok && stderr.contains("hive migrate"), "{stderr}");
    assert_eq!(sqlite_tables(&app), vec!["customers".to_owned()]);

    // The same on Postgres, in a schema of its own holding one app table.
    let Ok(server) = std::env::var(hive_store::testing::POSTGRES_URL_ENV) else {
        hive_store::testing::report_skip("new_user::read_commands (postgres part)");
        return;
    };
    let schema = format!("hive_app_{}", uuid::Uuid::new_v4().simple());
    let admin = |sql: String| {
        block_on(async {
            use sqlx::{Connection, Executor};
            let mut c = sqlx::PgConnection::connect(&server).await.unwrap();
            c.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
        })
    };
    admin(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.customers (id int)"
    ));
    let mut url = url::Url::parse(&server).unwrap();
    url.query_pairs_mut()
        .append_pair("options", &format!("-c search_path={schema}"));
    let (ok, stderr) = stderr_of(
        db.hive()
            .env("HIVE_DATABASE_URL", url.as_str())
            .arg("status"),
    );
    let tables: Vec<String> = block_on(async {
        let pool = sqlx::PgPool::connect(&server).await.unwrap();
        sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
        )
        .bind(&schema)
        .fetch_all(&pool)
        .await
        .unwrap()
    });
    admin(format!("DROP SCHEMA {schema} CASCADE"));
    assert!(!ok && stderr.contains("not a Hive database"), "{stderr}");
    assert_eq!(tables, vec!["customers".to_owned()]);
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let db = Db::new();
    let plan = db.write(
        "plan.json",
        r#"{"title": "p", "subtasks": [{"id": "a", "title": "A", "task_type": "shell",
            "payload": {"command": "true"}}]}"#,
    );
    let id = db.ok(&["plan", "submit", &plan]).trim().to_owned();
    for args in [&["plan", "status", &id][..], &["task", "list"], &["status"]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hive"))
            .env("HIVE_DATABASE_URL", &db.url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command prints (as `| head -0` would).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }
}

#[test]
fn the_demo_never_writes_into_the_configured_database() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let before = db.snapshot();
    db.ok(&["demo", "--subtasks", "5", "--workers", "1"]);
    assert_eq!(
        db.snapshot(),
        before,
        "the demo wrote into HIVE_DATABASE_URL"
    );
    // Given explicitly on the command line, the database is used.
    let own = db.dir.path().join("demo-here.db");
    let own_url = format!("sqlite:{}", own.display());
    let demo_here = [
        "demo",
        "--subtasks",
        "5",
        "--workers",
        "1",
        "--database-url",
        &own_url,
    ];
    db.ok(&demo_here);
    assert!(sqlite_tables(&own).contains(&"tasks".to_owned()));
}

#[test]
fn deleting_part_of_an_unfinished_plan_is_refused() {
    let db = Db::new();
    let plan = db.write(
        "chain.json",
        r#"{"title": "chain", "subtasks": [
            {"id": "a", "title": "A", "task_type": "shell", "payload": {"command": "true"}},
            {"id": "b", "title": "B", "task_type": "shell", "payload": {"command": "true"}, "dependencies": ["a"]},
            {"id": "c", "title": "C", "task_type": "shell", "payload": {"command": "true"}, "dependencies": ["b"]}]}"#,
    );
    let plan_id = db.ok(&["plan", "submit", &plan]).trim().to_owned();
    let tasks = db.json(&["task", "list"]);
    let b = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == "B")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = db.snapshot();
    db.refused(
        db.hive().args(["task", "delete", &b]),
        "task delete B",
        &format!("belongs to plan `{plan_id}`"),
        &before,
    );
    // The plan still runs to its end, in order.
    db.work_until_idle(&[]);
    assert_eq!(
        db.json(&["plan", "status", &plan_id])["plan"]["status"],
        "completed"
    );
    // Finished, its tasks may go.
    db.ok(&["task", "delete", &b]);
}

#[test]
fn a_worker_refuses_what_it_cannot_do_at_start() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let before = db.snapshot();
    let quick = Duration::from_secs(30);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["worker", "run", "--role", "r", "--type", "deployment"],
            "no handler for task type `deployment`",
        ),
        (
            vec![
                "worker",
                "run",
                "--role",
                "r",
                "--heartbeat-ms",
                "60000",
                "--lease-secs",
                "3",
            ],
            "not well under --lease-secs 3",
        ),
        (
            vec![
                "worker",
                "run",
                "--heartbeat-ms",
                "20000",
                "--lease-secs",
                "300",
            ],
            "marked offline: at most 15000 ms",
        ),
        (
            vec!["worker", "run", "--poll-ms", "0"],
            "--poll-ms must be at least 1",
        ),
        (
            vec!["worker", "run", "--concurrency", "0"],
            "--concurrency must be at least 1",
        ),
        (
            vec!["worker", "run", "--lease-secs", "0"],
            "--lease-secs must be at least 1",
        ),
        (
            vec!["worker", "run", "--task-timeout", "0"],
            "--task-timeout must be at least 1",
        ),
    ];
    for (args, want) in cases {
        db.refused(
            db.hive().args(&args).timeout(quick),
            &format!("{args:?}"),
            want,
            &before,
        );
    }
    // A path whose directory does not exist is a configuration error: no retrying.
    let started = Instant::now();
    let (ok, stderr) = stderr_of(
        db.hive()
            .env(
                "HIVE_DATABASE_URL",
                "sqlite:/nonexistent-hive-dir/sub/hive.db",
            )
            .args(["worker", "run", "--role", "r"])
            .timeout(quick),
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("does not exist") && !stderr.contains("retrying"),
        "{stderr}"
    );
    assert!(started.elapsed() < quick, "the worker kept retrying");
}

#[test]
fn a_read_only_database_can_be_read() {
    let db = Db::new();
    let dir = db.dir.path().join("ro");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("hive.db");
    let url = format!("sqlite:{}", file.display());
    let created = db
        .hive()
        .env("HIVE_DATABASE_URL", &url)
        .args(["task", "create", "--title", "kept", "--type", "shell"])
        .args(["--payload", r#"{"command":"true"}"#])
        .output()
        .unwrap();
    assert!(created.status.success());
    // The command closed its connections before it exited: the write-ahead log is folded
    // into the file, which other users can then read on its own.
    let log = std::fs::metadata(dir.join("hive.db-wal")).map_or(0, |m| m.len());
    assert_eq!(log, 0, "hive task create left its write-ahead log");
    use std::os::unix::fs::PermissionsExt;
    let chmod = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    // Reachable by another user (a temporary directory is private), not writable by it.
    chmod(db.dir.path(), 0o755).unwrap();
    chmod(&file, 0o444).unwrap();
    chmod(&dir, 0o555).unwrap();
    let hive = env!("CARGO_BIN_EXE_hive");
    // Root writes anything: run as an unprivileged user, as the user who hit this was.
    let as_user = |args: &[&str]| {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(hive);
            c
        } else {
            std::process::Command::new(hive)
        };
        cmd.env("HIVE_DATABASE_URL", &url).args(args);
        // A worker that cannot write must say so and stop, not wait.
        let out = Command::from_std(cmd)
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = as_user(&["task", "list"]);
    let (ok2, _, stderr2) = as_user(&create_shell(r#"{"command":"true"}"#));
    let (ok3, status, _) = as_user(&["--json", "status"]);
    let (ok5, _, stderr5) = as_user(&["worker", "run", "--role", "r"]);
    // Checkpointed, with no log or shared-memory file left beside it to use.
    chmod(&dir, 0o755).unwrap();
    chmod(&file, 0o644).unwrap();
    block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    for extra in ["hive.db-wal", "hive.db-shm"] {
        let _ = std::fs::remove_file(dir.join(extra));
    }
    chmod(&file, 0o444).unwrap();
    chmod(&dir, 0o555).unwrap();
    let (ok4, stdout4, stderr4) = as_user(&["task", "list"]);
    chmod(&dir, 0o755).unwrap();
    chmod(&file, 0o644).unwrap();
    assert!(ok4 && stdout4.contains("kept"), "{stdout4}{stderr4}");
    assert!(!ok5, "a worker on a read-only database stops");
    let problems = stderr5.lines().filter(|l| !l.contains(" INFO ")).count();
    assert_eq!(
        problems, 1,
        "one clear line after the start line: {stderr5}"
    );
    assert!(stderr5.contains("read-only"), "{stderr5}");
    assert!(ok && stdout.contains("kept"), "{stdout}{stderr}");
    assert!(
        !ok2 && stderr2.contains("read-only"),
        "a write says why it fails: {stderr2}"
    );
    assert!(ok3 && status.contains("\"queued\": 1"), "{status}");
}

#[test]
fn shell_payloads_the_handler_refuses_are_refused_at_creation() {
    let db = Db::new();
    db.ok(&["migrate"]);
    let missing = db.write(
        "missing.json",
        r#"{"title": "p", "subtasks": [{"id": "a", "title": "A", "task_type": "shell",
            "payload": {"cmd": "true"}}]}"#,
    );
    let before = db.snapshot();
    db.refused(
        db.hive().args(create_shell(r#"{"cmd": "true"}"#)),
        "an unknown field",
        "unknown field `cmd`",
        &before,
    );
    db.refused(
        db.hive()
            .args(["task", "create", "--title", "t", "--type", "shell"]),
        "no command",
        "missing field `command`",
        &before,
    );
    db.refused(
        db.hive().args(["plan", "submit", &missing]),
        "a plan's subtask",
        "subtask `a`: invalid shell payload",
        &before,
    );
}

#[test]
fn an_idle_worker_says_why_it_left_queued_tasks() {
    let db = Db::new();
    let noop = r#"{"command": "true"}"#;
    db.ok(&["task", "create", "--title", "typo", "--type", "sh"]);
    db.ok(&["task", "create", "--title", "other", "--type", "noop"]);
    let (ok, stdout, stderr) = db.run(&["--json", "worker", "run", "--exit-when-idle"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["left_queued"],
        serde_json::json!([
            {"task_type": "noop", "queued": 1, "why": "other_type"},
            {"task_type": "sh", "queued": 1, "why": "other_type"},
        ]),
        "{stdout}"
    );
    for note in [
        "1 queued task of type `sh` left: `hive worker run` runs only shell, noop, sleep tasks",
        "1 queued task of type `noop` left: this worker takes shell (`--type noop` to take them",
    ] {
        assert!(
            stderr.contains(&format!("note: {note}")),
            "{note}: {stderr}"
        );
    }
    // Queued tasks of its own types keep such a worker waiting; stopped, it says why.
    db.ok(&[
        "task",
        "create",
        "--title",
        "later",
        "--type",
        "shell",
        "--payload",
        noop,
        "--delay",
        "3600",
    ]);
    db.ok(&[
        "task",
        "create",
        "--title",
        "held",
        "--type",
        "sleep",
        "--payload",
        r#"{"ms": 1}"#,
    ]);
    db.ok(&["queue", "pause", "sleep"]);
    let mut worker = KillOnDrop::spawn(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("hive"))
            .env("HIVE_DATABASE_URL", &db.url)
            .args(["worker", "run", "--exit-when-idle", "--id", "waits"])
            .args(["--type", "shell", "--type", "sleep"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    // Idle for a while yet still there, the queued tasks holding it; after five seconds it
    // says what it waits for (the first of its types' tasks it finds).
    worker.wait_for("s, still waiting for queued task ", Duration::from_secs(60));
    let said = worker.stderr();
    assert!(
        said.contains("idle for ") && said.contains("of type `shell`, not ready: until "),
        "{said}"
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker exited"
    );
    let pid = worker.child.id().to_string();
    let term = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let (status, stderr) = worker.wait();
    assert!(status.success(), "{stderr}");
    for note in [
        "1 queued task of type `shell` left, not started: waiting for their dependencies, \
         their start time or room under a limit (`hive task list --type shell --status \
         queued`, `hive limit list`)",
        "1 queued task of type `sleep` left: the queue is paused (`hive queue resume sleep`)",
    ] {
        assert!(
            stderr.contains(&format!("note: {note}")),
            "{note}: {stderr}"
        );
    }
    // Nothing left, nothing said.
    let db = Db::new();
    db.ok(&create_shell(noop));
    let stderr = db.work_until_idle_logged(&[]);
    assert!(!stderr.contains("note:"), "{stderr}");
}

/// A worker started for a test: killed if the test ends first, its stderr read as it comes.
struct KillOnDrop {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl KillOnDrop {
    fn spawn(cmd: &mut std::process::Command) -> KillOnDrop {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let into = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
                let Ok(line) = line else { break };
                let mut all = into.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        KillOnDrop {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `text`.
    fn wait_for(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no {text:?} on stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the child to exit; its status and all it wrote to stderr.
    fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.stderr())
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
