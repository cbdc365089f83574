//! A temporary SQLite database and the real `hive` binary run against it.

use assert_cmd::Command;
use serde_json::Value;

pub struct Db {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl Db {
    pub fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("hive.db").display());
        Db { dir, url }
    }

    pub fn hive(&self) -> Command {
        let mut c = Command::cargo_bin("hive").unwrap();
        c.env("HIVE_DATABASE_URL", &self.url)
            .current_dir(self.dir.path());
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.hive().args(args).output().unwrap())
    }

    /// Runs `hive worker run --role r --exit-when-idle` with `more` arguments (types,
    /// concurrency …) until nothing is left to do; its stdout.
    pub fn work_until_idle(&self, more: &[&str]) -> String {
        self.ok(&Self::until_idle(more))
    }

    /// [`Db::work_until_idle`], returning what the worker logged (stderr).
    pub fn work_until_idle_logged(&self, more: &[&str]) -> String {
        let (ok, _, stderr) = self.run(&Self::until_idle(more));
        assert!(ok, "the worker failed: {stderr}");
        stderr
    }

    fn until_idle<'a>(more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["worker", "run", "--role", "r", "--exit-when-idle"];
        args.extend_from_slice(more);
        args
    }

    /// [`Db::ok`] with `stdin` on the command's standard input.
    pub fn ok_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        succeeded(
            args,
            self.hive().args(args).write_stdin(stdin).output().unwrap(),
        )
    }

    /// Runs a command whatever its outcome: whether it succeeded, its stdout and stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.hive().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Everything that could change: tasks per status, plans, every task's status, and
    /// the row count of every table in the file.
    pub fn snapshot(&self) -> (Value, Value, Value, Vec<(String, i64)>) {
        (
            self.json(&["status"]),
            self.json(&["plan", "list"]),
            self.json(&["task", "list", "--limit", "1000"]),
            self.row_counts(),
        )
    }

    /// Rows per table, read straight from the SQLite file (every table, whatever the
    /// schema holds).
    pub fn row_counts(&self) -> Vec<(String, i64)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let mut counts = Vec::new();
            for t in tables {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM \"{t}\""
                )))
                .fetch_one(&mut conn)
                .await
                .unwrap();
                counts.push((t, n));
            }
            counts
        })
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Db {
    /// Runs a command that must fail: non-zero exit, one `error: ` line on stderr holding
    /// `want`, and the database exactly as `before`. Returns stderr.
    pub fn refused(
        &self,
        cmd: &mut Command,
        what: &str,
        want: &str,
        before: &(Value, Value, Value, Vec<(String, i64)>),
    ) -> String {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "hive {what} should fail");
        assert_eq!(stderr.lines().count(), 1, "one line for {what}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(want),
            "hive {what}: {stderr}"
        );
        assert!(
            !stderr.trim_end().chars().any(char::is_control),
            "hive {what}: control characters in {stderr:?}"
        );
        assert_eq!(&self.snapshot(), before, "hive {what} changed the database");
        stderr
    }
}

/// The stdout of a command that must have succeeded.
fn succeeded(args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "hive {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `hive task create --title TITLE --type TYPE` followed by `more`.
pub fn create_task<'a>(title: &'a str, task_type: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["task", "create", "--title", title, "--type", task_type];
    args.extend_from_slice(more);
    args
}

/// `hive task create` of a task that gets one attempt (`--max-retries 0`), with this payload
/// and these further arguments.
pub fn create_once<'a>(
    title: &'a str,
    task_type: &'a str,
    payload: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = create_task(
        title,
        task_type,
        &["--max-retries", "0", "--payload", payload],
    );
    args.extend_from_slice(more);
    args
}

/// `hive task create` of a shell task titled `t` with this payload.
pub fn create_shell(payload: &str) -> [&str; 8] {
    [
        "task",
        "create",
        "--title",
        "t",
        "--type",
        "shell",
        "--payload",
        payload,
    ]
}
