//! Flow control on SQLite: rules, and the claim's reads of flow-controlled tasks. Every
//! claim holds the write lock from its first statement, so what it reads of the scopes'
//! use stays true until it commits.

use std::collections::HashMap;
use std::time::Duration;

use hive_models::{FlowRule, Rate, RunId, Scope, Usage};
use sqlx::sqlite::SqliteRow;

use super::db::{self, Cols, Conn, R, json_list, to_json};
use crate::ClaimParams;
use crate::flow::{self, FlowCandidate, FlowClaim};

fn rule_from_row(row: &SqliteRow) -> R<FlowRule> {
    let c = Cols::new(row, "flow_rules");
    let kind: String = c.get("kind")?;
    let scope = Scope::from_parts(&kind, c.get::<String>("name")?)
        .map_err(|e| db::corrupt("flow_rules", e.to_string()))?;
    let rate = match (
        c.get::<Option<i64>>("rate_max")?,
        c.get::<Option<i64>>("rate_per_us")?,
    ) {
        (Some(max), Some(per)) => Some(Rate {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            per: Duration::from_micros(per.max(1).unsigned_abs()),
        }),
        _ => None,
    };
    Ok(FlowRule {
        scope,
        max_running: c
            .get::<Option<i64>>("max_running")?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        rate,
        paused: c.get("paused")?,
        updated_at: c.ts("updated_at")?,
    })
}

pub(super) async fn list(c: &mut Conn) -> R<Vec<FlowRule>> {
    let rows = sqlx::query(
        "SELECT kind, name, max_running, rate_max, rate_per_us, paused, updated_at \
         FROM flow_rules ORDER BY kind = 'key', name",
    )
    .fetch_all(&mut *c)
    .await?;
    rows.iter().map(rule_from_row).collect()
}

pub(super) async fn put(c: &mut Conn, r: &FlowRule) -> R<()> {
    sqlx::query(
        "INSERT INTO flow_rules (kind, name, max_running, rate_max, rate_per_us, paused, \
         updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (kind, name) DO UPDATE SET max_running = excluded.max_running, \
         rate_max = excluded.rate_max, rate_per_us = excluded.rate_per_us, \
         paused = excluded.paused, updated_at = excluded.updated_at",
    )
    .bind(r.scope.kind())
    .bind(r.scope.name())
    .bind(r.max_running.map(i64::from))
    .bind(r.rate.map(|x| i64::from(x.max)))
    .bind(r.rate.map(|x| db::dur_us(x.per)))
    .bind(r.paused)
    .bind(db::us(r.updated_at))
    .execute(&mut *c)
    .await?;
    Ok(())
}

pub(super) async fn delete(c: &mut Conn, scope: &Scope) -> R<bool> {
    let gone = sqlx::query("DELETE FROM flow_rules WHERE kind = ?1 AND name = ?2")
        .bind(scope.kind())
        .bind(scope.name())
        .execute(&mut *c)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM flow_starts WHERE kind = ?1 AND name = ?2")
        .bind(scope.kind())
        .bind(scope.name())
        .execute(&mut *c)
        .await?;
    Ok(gone > 0)
}

/// Applies `edit` to the scope's rule inside the writer's transaction, which no other
/// writer of any process interleaves with.
pub(super) async fn edit(
    c: &mut Conn,
    scope: &Scope,
    edit: hive_models::FlowEdit,
) -> R<(Option<FlowRule>, bool)> {
    let stored = sqlx::query(
        "SELECT kind, name, max_running, rate_max, rate_per_us, paused, updated_at \
         FROM flow_rules WHERE kind = ?1 AND name = ?2",
    )
    .bind(scope.kind())
    .bind(scope.name())
    .fetch_optional(&mut *c)
    .await?
    .as_ref()
    .map(rule_from_row)
    .transpose()?;
    let now = db::ts("clock", db::db_now(c).await?)?;
    let (rule, changed) = edit.apply(scope, stored, now);
    match &rule {
        Some(r) => put(c, r).await?,
        None => {
            delete(c, scope).await?;
        }
    }
    Ok((rule, changed))
}

/// Ready and not delayed, of the types asked for (`?1`, a JSON list; empty: any).
macro_rules! ready {
    () => {
        concat!(
            "t.status = 'queued' AND t.pending_deps = 0 AND (t.run_at IS NULL OR t.run_at <= ",
            now_us!(),
            ") AND (json_array_length(?1) = 0 OR t.task_type IN (SELECT value FROM json_each(?1)))"
        )
    };
}

/// How many more tasks of `t.concurrency_key` may start now, for a task of limit
/// `t.concurrency_limit`: none when the key is paused, else what its running cap (a stored
/// rule's, else the task's own) and its rate leave.
macro_rules! key_room {
    () => {
        concat!(
            "(SELECT ",
            room!(
                "t.concurrency_limit",
                "(SELECT count(*) FROM tasks r INDEXED BY tasks_running_key \
                  WHERE r.concurrency_key = t.concurrency_key AND r.status = 'in_progress')",
                concat!(
                    "(SELECT count(*) FROM flow_starts s WHERE s.kind = 'key' \
                      AND s.name = t.concurrency_key AND s.started_at > ",
                    now_us!(),
                    " - f.rate_per_us)"
                )
            ),
            " FROM (SELECT 1) one LEFT JOIN flow_rules f \
                 ON f.kind = 'key' AND f.name = t.concurrency_key)"
        )
    };
}

/// The rule of [`key_room`] for a key whose rule is `f` (absent: no rule), for a task of
/// limit `$limit`, with `$running` of its tasks running and `$starts` starts in its rate
/// window.
macro_rules! room {
    ($limit:expr, $running:expr, $starts:expr) => {
        concat!(
            "CASE WHEN coalesce(f.paused, 0) THEN 0 ELSE max(0, min( \
                 coalesce(f.max_running, ",
            $limit,
            ", 1) - ",
            $running,
            ", CASE WHEN f.rate_max IS NULL THEN 2147483647 ELSE f.rate_max - ",
            $starts,
            " END)) END"
        )
    };
}

/// The task's key, if any, has room ([`key_room`]).
macro_rules! key_has_room {
    () => {
        concat!("(t.concurrency_key IS NULL OR ", key_room!(), " > 0)")
    };
}

/// The first [`flow::KEYED_SCAN`] ready keyed tasks in queue order, of any type, delayed
/// ones included, so that reading them stays bounded whatever a claim filters out.
macro_rules! keyed_head {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM tasks t INDEXED BY tasks_ready_keyed WHERE t.status = 'queued' \
             AND t.pending_deps = 0 AND t.concurrency_key IS NOT NULL \
             ORDER BY t.priority DESC, t.seq LIMIT ",
            crate::flow::keyed_scan!()
        )
    };
}

/// The first `?3` keyed tasks with room ([`key_has_room`]) among [`keyed_head`], of the
/// types asked for (`?1`) and not blocked (`?2`), judged in queue order until `?3` pass
/// (the head is a co-routine yielding in its order, so a claim among many keys with room
/// judges few; the caller sorts what it admits); the last row (no `id`) counts the keyed
/// tasks read, for [`flow::walk_keys`].
const KEYED_HEADS: &str = concat!(
    "SELECT * FROM (SELECT t.id, t.task_type, t.concurrency_key, t.concurrency_limit, \
         t.priority, t.seq, NULL AS scanned FROM (",
    keyed_head!(
        "t.id, t.task_type, t.concurrency_key, t.concurrency_limit, t.priority, t.seq, \
         t.run_at, t.status, t.pending_deps"
    ),
    ") t WHERE ",
    ready!(),
    " AND t.task_type NOT IN (SELECT value FROM json_each(?2)) AND ",
    key_has_room!(),
    limit!("?3"),
    ") UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, count(*) FROM (",
    keyed_head!("1"),
    ")"
);

/// `keys(k)`, a recursive table of the keys with ready tasks: a loose walk of
/// `tasks_ready_by_key` finds each in one probe, so a busy key's backlog costs one probe,
/// not a row per task.
macro_rules! key_walk {
    () => {
        "keys(k) AS ( \
             SELECT min(concurrency_key) FROM tasks INDEXED BY tasks_ready_by_key \
             WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL \
             UNION ALL SELECT (SELECT min(n.concurrency_key) FROM tasks n \
                 INDEXED BY tasks_ready_by_key WHERE n.status = 'queued' \
                   AND n.pending_deps = 0 AND n.concurrency_key IS NOT NULL \
                   AND n.concurrency_key > keys.k) \
             FROM keys WHERE keys.k IS NOT NULL)"
    };
}

/// The keys of [`key_walk`] with room (`k`, and how many more may start: `room`). A key
/// whose tasks carry different limits is judged by its first task's (the admission then
/// judges each task by its own).
macro_rules! open_keys {
    () => {
        concat!(
            "SELECT * FROM (SELECT t.concurrency_key AS k, ",
            key_room!(),
            " AS room FROM (SELECT keys.k AS concurrency_key, ( \
                 SELECT h.concurrency_limit FROM tasks h INDEXED BY tasks_ready_by_key \
                 WHERE h.concurrency_key = keys.k AND h.status = 'queued' \
                   AND h.pending_deps = 0 ORDER BY h.priority DESC, h.seq LIMIT 1 \
                 ) AS concurrency_limit FROM keys WHERE keys.k IS NOT NULL) t) o \
             WHERE o.room > 0"
        )
    };
}

/// The first `?3` keyed tasks in queue order whose keys have room ([`open_keys`]); each
/// key's heads are the first of the types asked for (`?1`) and not blocked (`?2`), at most
/// as many as it has room for.
const KEY_HEADS: &str = concat!(
    "WITH RECURSIVE ",
    key_walk!(),
    ", open AS (",
    open_keys!(),
    ") \
     SELECT id, task_type, concurrency_key, concurrency_limit, priority, seq FROM ( \
         SELECT x.id, x.task_type, x.concurrency_key, x.concurrency_limit, x.priority, x.seq, \
             open.room, row_number() OVER (PARTITION BY x.concurrency_key \
                 ORDER BY x.priority DESC, x.seq) AS nth \
         FROM open JOIN tasks x ON x.id IN ( \
             SELECT t.id FROM tasks t INDEXED BY tasks_ready_by_key \
             WHERE t.concurrency_key = open.k AND ",
    ready!(),
    " AND t.task_type NOT IN (SELECT value FROM json_each(?2)) \
             ORDER BY t.priority DESC, t.seq",
    limit!("?3"),
    ")) WHERE nth <= room ORDER BY priority DESC, seq",
    limit!("?3")
);

fn candidate(row: &SqliteRow) -> R<FlowCandidate> {
    let c = Cols::new(row, "tasks");
    Ok(FlowCandidate {
        id: c.parse("id")?,
        task_type: c.get("task_type")?,
        key: c.get("concurrency_key")?,
        key_limit: c
            .get::<Option<i64>>("concurrency_limit")?
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        priority: c.get("priority")?,
        seq: c.get("seq")?,
    })
}

/// Admitted flow-controlled tasks, in queue order; their starts are recorded with
/// [`record_starts`] once claimed.
#[derive(Default)]
pub(super) struct Admitted {
    claim: FlowClaim,
    pub tasks: Vec<FlowCandidate>,
}

/// Whether a keyed task of a key with room is ready (among the first
/// [`flow::KEYED_SCAN`] in queue order, else by [`open_keys`]) and whether any flow rule
/// exists: a claim that sees neither takes no flow-controlled task, so a claim behind a full
/// key's backlog reads nothing more. The claim appends it to its select, as the text's last
/// row ([`Probe::from_last`]).
macro_rules! flow_probe {
    () => {
        concat!(
            "WITH RECURSIVE head AS MATERIALIZED ( \
                 SELECT concurrency_key, concurrency_limit FROM tasks INDEXED BY tasks_ready_keyed \
                 WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL \
                 ORDER BY priority DESC, seq LIMIT ",
            crate::flow::keyed_scan!(),
            "), ",
            key_walk!(),
            " SELECT (EXISTS (SELECT 1 FROM (SELECT * FROM (",
            keyed_head!("t.concurrency_key, t.concurrency_limit"),
            ") LIMIT 16) t WHERE ",
            key_has_room!(),
            ") OR EXISTS (SELECT 1 FROM (SELECT DISTINCT * FROM head) t WHERE ",
            key_has_room!(),
            ") OR ((SELECT count(*) FROM head) >= ",
            crate::flow::keyed_scan!(),
            " AND EXISTS (",
            open_keys!(),
            "))) AS keyed_ready, EXISTS (SELECT 1 FROM flow_rules) AS has_rules"
        )
    };
}
// The probe expands where the claim is written, so what it names is exported with it.
pub(super) use {flow_probe, key_has_room, key_room, key_walk, keyed_head, open_keys, room};

/// What [`flow_probe`] found.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    keyed_ready: bool,
    has_rules: bool,
}

impl Probe {
    /// Takes the probe's row off the end of `rows` (a text whose last statement is
    /// [`flow_probe`], which always returns one row).
    pub fn from_last(rows: &mut Vec<SqliteRow>) -> R<Probe> {
        let row = rows
            .pop()
            .ok_or_else(|| db::corrupt("tasks", "the flow probe returned no row"))?;
        let c = Cols::new(&row, "tasks");
        Ok(Probe {
            keyed_ready: c.get("keyed_ready")?,
            has_rules: c.get("has_rules")?,
        })
    }
}

/// The flow-controlled tasks this claim may take, in queue order (none when no rule
/// applies and no keyed task is ready), ahead of the plain queue's heads the claim read
/// (`plain`, in queue order) within its limit.
pub(super) async fn admitted(
    c: &mut Conn,
    p: &ClaimParams,
    probe: Probe,
    plain: &[SqliteRow],
) -> R<Admitted> {
    let Probe {
        keyed_ready,
        has_rules,
    } = probe;
    if !keyed_ready && !has_rules {
        return Ok(Admitted::default());
    }
    let fc = FlowClaim::new(list(c).await?);
    if !fc.needed(p, keyed_ready) {
        return Ok(Admitted::default());
    }
    let types = json_list(&p.task_types);
    let window = flow::window(p.limit);
    let ruled = fc.ruled_types(p);
    let ruled_scopes: Vec<Scope> = ruled.iter().cloned().map(Scope::Type).collect();
    let type_usage = usage(c, &fc, &ruled_scopes).await?;
    let blocked = fc.blocked_types(&ruled, &type_usage);
    let mut candidates = Vec::new();
    for t in ruled.iter().filter(|t| !blocked.contains(t)) {
        let rows = sqlx::query(concat!(
            "SELECT t.id, t.task_type, t.concurrency_key, t.concurrency_limit, t.priority, \
             t.seq FROM tasks t INDEXED BY tasks_ready_type WHERE t.task_type = ?2 AND ",
            ready!(),
            " AND ",
            key_has_room!(),
            " ORDER BY t.priority DESC, t.seq",
            limit!("?3")
        ))
        .bind(&types)
        .bind(t)
        .bind(window)
        .fetch_all(&mut *c)
        .await?;
        for row in &rows {
            candidates.push(candidate(row)?);
        }
    }
    if keyed_ready {
        let blocked = json_list(&blocked);
        let window = flow::keyed_window(p.limit);
        let mut rows = sqlx::query(KEYED_HEADS)
            .bind(&types)
            .bind(&blocked)
            .bind(window)
            .fetch_all(&mut *c)
            .await?;
        let scanned = rows
            .pop()
            .map(|r| Cols::new(&r, "tasks").get::<i64>("scanned"))
            .transpose()?
            .unwrap_or(0);
        let keyed = rows.iter().map(candidate).collect::<R<Vec<_>>>()?;
        if flow::walk_keys(p.limit, scanned, fc.places(&keyed)) {
            rows.extend(
                sqlx::query(KEY_HEADS)
                    .bind(&types)
                    .bind(&blocked)
                    .bind(window)
                    .fetch_all(&mut *c)
                    .await?,
            );
        }
        for row in &rows {
            candidates.push(candidate(row)?);
        }
    }
    let keys: Vec<Scope> = flow::keys_of(&candidates)
        .into_iter()
        .map(Scope::Key)
        .collect();
    let mut all = type_usage;
    all.extend(usage(c, &fc, &keys).await?);
    let plain = plain
        .iter()
        .map(|r| {
            let cols = Cols::new(r, "tasks");
            Ok((cols.get("priority")?, cols.get("seq")?))
        })
        .collect::<R<Vec<(i32, i64)>>>()?;
    let tasks = fc.admit(candidates, all, p.limit as usize, &plain);
    Ok(Admitted { claim: fc, tasks })
}

/// Running tasks and recent starts of each scope.
async fn usage(c: &mut Conn, fc: &FlowClaim, scopes: &[Scope]) -> R<HashMap<Scope, Usage>> {
    let mut out: HashMap<Scope, Usage> = HashMap::new();
    if scopes.is_empty() {
        return Ok(out);
    }
    let (types, keys): (Vec<&Scope>, Vec<&Scope>) =
        scopes.iter().partition(|s| matches!(s, Scope::Type(_)));
    let names = |v: &[&Scope]| json_list(v.iter().map(|s| s.name()));
    let rows = sqlx::query(
        "SELECT 'type' AS kind, task_type AS name, count(*) AS n FROM tasks \
         WHERE status = 'in_progress' AND task_type IN (SELECT value FROM json_each(?1)) \
         GROUP BY task_type \
         UNION ALL SELECT 'key', concurrency_key, count(*) FROM tasks INDEXED BY tasks_running_key \
         WHERE status = 'in_progress' AND concurrency_key IN (SELECT value FROM json_each(?2)) \
           AND concurrency_key IS NOT NULL \
         GROUP BY concurrency_key",
    )
    .bind(names(&types))
    .bind(names(&keys))
    .fetch_all(&mut *c)
    .await?;
    for row in &rows {
        let (scope, n) = counted(row)?;
        out.entry(scope).or_default().running = n;
    }
    let windows: Vec<serde_json::Value> = fc
        .rate_windows(scopes)
        .into_iter()
        .map(|(s, us)| serde_json::json!([s.kind(), s.name(), us]))
        .collect();
    if !windows.is_empty() {
        let rows = sqlx::query(concat!(
            "SELECT s.kind, s.name, count(*) AS n FROM jsonb_each(?1) w \
             JOIN flow_starts s ON s.kind = w.value ->> 0 AND s.name = w.value ->> 1 \
              AND s.started_at > ",
            now_us!(),
            " - (w.value ->> 2) GROUP BY s.kind, s.name"
        ))
        .bind(to_json("flow_starts", &windows)?)
        .fetch_all(&mut *c)
        .await?;
        for row in &rows {
            let (scope, n) = counted(row)?;
            out.entry(scope).or_default().recent_starts = n;
        }
    }
    Ok(out)
}

fn counted(row: &SqliteRow) -> R<(Scope, u64)> {
    let c = Cols::new(row, "flow_starts");
    let kind: String = c.get("kind")?;
    let scope = Scope::from_parts(&kind, c.get::<String>("name")?)
        .map_err(|e| db::corrupt("flow_starts", e.to_string()))?;
    Ok((scope, c.get::<i64>("n")?.max(0).unsigned_abs()))
}

/// Takes the start each of `runs` counted at its claim (one row per scope of its task, at
/// the run's start) out of the rate windows: the runs were given back before their
/// handlers started. Runs claimed together share a start time, so each scope loses as many
/// rows of that time as runs were given back, no more.
pub(super) async fn forget_starts(c: &mut Conn, runs: &[RunId]) -> R<()> {
    if runs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH scoped AS ( \
             SELECT 'type' AS kind, t.task_type AS name, r.started_at FROM jsonb_each(?1) j \
             JOIN runs r ON r.id = j.value JOIN tasks t ON t.id = r.task_id \
             UNION ALL SELECT 'key', t.concurrency_key, r.started_at FROM jsonb_each(?1) j \
             JOIN runs r ON r.id = j.value JOIN tasks t ON t.id = r.task_id \
             WHERE t.concurrency_key IS NOT NULL \
         ), gone AS ( \
             SELECT kind, name, started_at, count(*) AS n FROM scoped \
             GROUP BY kind, name, started_at \
         ) \
         DELETE FROM flow_starts WHERE rowid IN ( \
             SELECT id FROM ( \
                 SELECT s.rowid AS id, g.n, row_number() OVER ( \
                     PARTITION BY s.kind, s.name, s.started_at) AS k \
                 FROM gone g JOIN flow_starts s ON s.kind = g.kind AND s.name = g.name \
                  AND s.started_at = g.started_at \
             ) WHERE k <= n \
         )",
    )
    .bind(json_list(runs))
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Records the starts of the admitted tasks claimed at `at` (the runs' start, so windows
/// are measured on the runs' own clock) against their rate-limited scopes, and forgets the
/// starts of those scopes that left their window.
pub(super) async fn record_starts(c: &mut Conn, admitted: &Admitted, at: i64) -> R<()> {
    let fc = &admitted.claim;
    let starts = fc.starts(&admitted.tasks);
    if starts.is_empty() {
        return Ok(());
    }
    let windows: Vec<serde_json::Value> = fc
        .rate_windows(&starts)
        .into_iter()
        .map(|(s, us)| serde_json::json!([s.kind(), s.name(), us]))
        .collect();
    sqlx::query(
        "DELETE FROM flow_starts WHERE rowid IN (SELECT s.rowid FROM jsonb_each(?1) w \
         JOIN flow_starts s ON s.kind = w.value ->> 0 AND s.name = w.value ->> 1 \
          AND s.started_at <= ?2 - (w.value ->> 2))",
    )
    .bind(to_json("flow_starts", &windows)?)
    .bind(at)
    .execute(&mut *c)
    .await?;
    let rows: Vec<serde_json::Value> = starts
        .iter()
        .map(|s| serde_json::json!([s.kind(), s.name()]))
        .collect();
    sqlx::query(
        "INSERT INTO flow_starts (kind, name, started_at) \
         SELECT j.value ->> 0, j.value ->> 1, ?2 FROM jsonb_each(?1) j",
    )
    .bind(to_json("flow_starts", &rows)?)
    .bind(at)
    .execute(&mut *c)
    .await?;
    Ok(())
}
