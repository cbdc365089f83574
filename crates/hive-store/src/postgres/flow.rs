//! Flow control on Postgres: rules, and the claim's reads of flow-controlled tasks.
//!
//! Claimers of one scope take turns on a transaction-scoped advisory lock per scope, and
//! read the scope's use only once they hold it: what they read stays true until they
//! commit, since only claims add to it. Limited types' locks are waited for, in hash
//! order, first; keys' are taken as their tasks are read, without waiting (a claimer
//! passes over keys another holds, so two claimers read disjoint keys rather than take
//! turns on the same ones), and waited for only by a claimer that got none and so holds
//! none: two claimers never wait on each other in a cycle. Tasks no rule concerns are
//! only read here as the plain queue's heads, which the admitted tasks are merged with in
//! queue order; their own claim skips flow-controlled tasks. Rule edits take turns on the
//! same locks (a claim admits with the rules it read before taking them).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hive_models::{FlowRule, Rate, Scope, TaskId, Usage};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};
use uuid::Uuid;

use super::rows;
use crate::ClaimParams;
use crate::flow::{self, FlowCandidate, FlowClaim};
use crate::sql::R;

macro_rules! rule_columns {
    () => {
        "kind, name, max_running, rate_max, rate_per_us, paused, updated_at"
    };
}

fn rule(row: &PgRow) -> R<FlowRule> {
    const T: &str = "flow_rules";
    let kind: String = rows::get(row, "kind", T)?;
    let scope = Scope::from_parts(&kind, rows::get::<String>(row, "name", T)?)
        .map_err(|e| rows::corrupt(T, e.to_string()))?;
    let rate = match (
        rows::get::<Option<i32>>(row, "rate_max", T)?,
        rows::get::<Option<i64>>(row, "rate_per_us", T)?,
    ) {
        (Some(max), Some(per)) => Some(Rate {
            max: max.max(1).unsigned_abs(),
            per: Duration::from_micros(per.max(1).unsigned_abs()),
        }),
        _ => None,
    };
    Ok(FlowRule {
        scope,
        max_running: rows::get::<Option<i32>>(row, "max_running", T)?
            .map(|n| n.max(1).unsigned_abs()),
        rate,
        paused: rows::get(row, "paused", T)?,
        updated_at: rows::get(row, "updated_at", T)?,
    })
}

mod rules;
mod starts;
pub(super) use starts::{forget_starts, record_starts};

/// Ready, not delayed, of the types asked for (`$1`).
macro_rules! ready {
    () => {
        "t.status = 'queued' AND t.pending_deps = 0 \
         AND (t.run_at IS NULL OR t.run_at <= statement_timestamp()) \
         AND (cardinality($1::text[]) = 0 OR t.task_type = ANY($1::text[]))"
    };
}

/// How many more tasks of `t.concurrency_key` may start now, for a task of limit
/// `t.concurrency_limit`: none when the key is paused, else what its running cap (a stored
/// rule's, else the task's own) and its rate leave. Read before the key's lock is held, so
/// it only keeps full keys from filling the candidates; the admission decides.
macro_rules! key_room {
    () => {
        concat!(
            "(SELECT ",
            room!(
                "t.concurrency_limit",
                "(SELECT count(*) FROM tasks r \
                  WHERE r.concurrency_key = t.concurrency_key AND r.status = 'in_progress')",
                "(SELECT count(*) FROM flow_starts s WHERE s.kind = 'key' \
                  AND s.name = t.concurrency_key AND s.started_at > \
                    statement_timestamp() - f.rate_per_us * interval '1 microsecond')"
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
    ($limit:literal, $running:literal, $starts:literal) => {
        concat!(
            "CASE WHEN coalesce(f.paused, false) THEN 0 ELSE greatest(0, least( \
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

/// Takes the lock of `$row`'s `concurrency_key` if no other claimer holds it, without waiting.
/// The claim's last judgement of a keyed task (inside a `CASE`, so nothing cheaper is
/// judged after it): a key whose lock was taken and whose task then failed another test
/// would be held for nothing.
macro_rules! key_taken {
    ($row:literal) => {
        concat!(
            "pg_try_advisory_xact_lock(hashtextextended('hive.flow.key:' || ",
            $row,
            ".concurrency_key, 0))"
        )
    };
}

/// The keys with ready tasks and room (`k`, and how many more may start: `room`), found by
/// a loose walk of `tasks_ready_by_key`: one probe per key, so a busy key's backlog costs
/// one probe, not a row per task. A key whose tasks carry different limits is judged by its
/// first task's (the admission then judges each task by its own). Read without the keys'
/// locks: room can only be underestimated.
macro_rules! open_keys {
    () => {
        concat!(
            "WITH RECURSIVE keys(k) AS ( \
                 SELECT min(concurrency_key) FROM tasks \
                 WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL \
                 UNION ALL SELECT (SELECT min(n.concurrency_key) FROM tasks n \
                     WHERE n.status = 'queued' AND n.pending_deps = 0 \
                       AND n.concurrency_key IS NOT NULL AND n.concurrency_key > keys.k) \
                 FROM keys WHERE keys.k IS NOT NULL \
             ) \
             SELECT * FROM (SELECT t.concurrency_key AS k, ",
            key_room!(),
            " AS room FROM (SELECT keys.k AS concurrency_key, ( \
                 SELECT h.concurrency_limit FROM tasks h \
                 WHERE h.concurrency_key = keys.k AND h.status = 'queued' \
                   AND h.pending_deps = 0 ORDER BY h.priority DESC, h.seq LIMIT 1 \
                 ) AS concurrency_limit FROM keys WHERE keys.k IS NOT NULL) t) o \
             WHERE o.room > 0"
        )
    };
}

/// What a claim learned before choosing its path: the rules, the limited types worth
/// locking, and whether keyed tasks are ready.
pub(super) struct Probe {
    claim: FlowClaim,
    open_types: Vec<String>,
    keyed_ready: bool,
}

/// The rules, and without any lock, which limited types have ready tasks and room and
/// whether keyed tasks of a key with room wait, in one round trip; `None` when no
/// flow-controlled task this claim could take is ready. Room read without the lock can only
/// be underestimated (only claims add to a scope's use), so a type or key passed over here
/// merely waits for a later claim. A claim that finds every ready keyed task's key full (a
/// busy key's backlog) so takes the plain path alone. The first keyed tasks are judged one
/// by one (many keys with room: the first answers), then each key of the bounded head once
/// (a busy key: one judgement, not one a task).
pub(super) async fn probe(conn: &mut PgConnection, p: &ClaimParams) -> R<Option<Probe>> {
    let found = sqlx::query(concat!(
        "WITH head AS MATERIALIZED (SELECT concurrency_key, concurrency_limit FROM tasks \
             WHERE status = 'queued' AND pending_deps = 0 AND concurrency_key IS NOT NULL \
             ORDER BY priority DESC, seq LIMIT ",
        flow::keyed_scan!(),
        ") \
         SELECT f.*, (EXISTS (SELECT 1 FROM (SELECT * FROM head LIMIT 16) t WHERE ",
        key_has_room!(),
        ") OR EXISTS (SELECT 1 FROM (SELECT DISTINCT * FROM head) t WHERE ",
        key_has_room!(),
        ") OR ((SELECT count(*) FROM head) >= ",
        flow::keyed_scan!(),
        " AND EXISTS (",
        open_keys!(),
        "))) AS keyed_ready \
         FROM (SELECT 1) one LEFT JOIN (SELECT ",
        rule_columns!(),
        // A scalar `LIMIT 1`, not EXISTS: an EXISTS may be planned as one hashed pass over
        // every ready task of every type.
        ", f.kind = 'type' AND (SELECT true FROM tasks t WHERE t.task_type = f.name \
               AND t.status = 'queued' AND t.pending_deps = 0 \
               AND (t.run_at IS NULL OR t.run_at <= statement_timestamp()) LIMIT 1) \
               IS NOT NULL AS ready, \
           CASE WHEN f.kind = 'type' AND f.max_running IS NOT NULL THEN (SELECT count(*) \
               FROM tasks t WHERE t.status = 'in_progress' AND t.task_type = f.name) \
               ELSE 0 END AS running, \
           CASE WHEN f.rate_max IS NOT NULL THEN (SELECT count(*) FROM flow_starts s \
               WHERE s.kind = f.kind AND s.name = f.name AND s.started_at > \
                 statement_timestamp() - f.rate_per_us * interval '1 microsecond') \
               ELSE 0 END AS starts \
         FROM flow_rules f) f ON true"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut keyed_ready = false;
    let mut rules = Vec::new();
    let mut ready = HashSet::new();
    let mut seen: HashMap<Scope, Usage> = HashMap::new();
    for row in &found {
        keyed_ready = rows::get(row, "keyed_ready", "tasks")?;
        if row.try_get::<Option<String>, _>("kind")?.is_none() {
            continue;
        }
        let r = rule(row)?;
        if rows::get::<bool>(row, "ready", "flow_rules")? {
            ready.insert(r.scope.name().to_owned());
        }
        let count = |col| -> R<u64> {
            Ok(rows::get::<i64>(row, col, "flow_rules")?
                .max(0)
                .unsigned_abs())
        };
        seen.insert(
            r.scope.clone(),
            Usage {
                running: count("running")?,
                recent_starts: count("starts")?,
            },
        );
        rules.push(r);
    }
    let claim = FlowClaim::new(rules);
    let ruled: Vec<String> = claim
        .ruled_types(p)
        .into_iter()
        .filter(|t| ready.contains(t))
        .collect();
    let blocked = claim.blocked_types(&ruled, &seen);
    let waiting = !ruled.is_empty();
    let open_types: Vec<String> = ruled.into_iter().filter(|t| !blocked.contains(t)).collect();
    Ok((keyed_ready || waiting).then_some(Probe {
        claim,
        open_types,
        keyed_ready,
    }))
}

impl Probe {
    /// Whether a claim now could admit anything (a limited type with room, or keyed
    /// tasks); when not, flow-controlled tasks wait but are there.
    pub fn has_room(&self) -> bool {
        self.keyed_ready || !self.open_types.is_empty()
    }
}

/// The first [`flow::KEYED_SCAN`] ready keyed tasks in queue order, of any type, delayed
/// ones included, so that reading them stays bounded whatever a claim filters out.
macro_rules! keyed_head {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM tasks t WHERE $5 AND t.status = 'queued' AND t.pending_deps = 0 \
             AND t.concurrency_key IS NOT NULL ORDER BY t.priority DESC, t.seq LIMIT ",
            flow::keyed_scan!()
        )
    };
}

/// The heads of the limited types' queues (`$2`), `$3` per queue, then, when `$5`, the first
/// `$6` keyed tasks with room ([`key_has_room`]) among [`keyed_head`], of the types asked
/// for (`$1`) and not blocked (`$4`), marked `keyed`. The keyed tasks are judged in queue
/// order until `$6` pass, so a claim among many keys with room judges few; when `$7`, each
/// passes only if its key's lock is free, and is taken then ([`key_taken`]). The last row
/// (no `id`) counts the keyed tasks read, for [`flow::walk_keys`].
const CANDIDATES: &str = concat!(
    "SELECT x.*, false AS keyed, NULL::bigint AS scanned FROM unnest($2::text[]) ty(name) \
     CROSS JOIN LATERAL ( \
         SELECT t.id, t.task_type, t.concurrency_key, t.concurrency_limit, t.priority, t.seq \
         FROM tasks t WHERE t.task_type = ty.name AND ",
    ready!(),
    " AND ",
    key_has_room!(),
    " ORDER BY t.priority DESC, t.seq LIMIT $3) x \
     UNION ALL (SELECT t.id, t.task_type, t.concurrency_key, t.concurrency_limit, t.priority, \
         t.seq, true, NULL FROM (",
    keyed_head!(
        "t.id, t.task_type, t.concurrency_key, t.concurrency_limit, t.priority, t.seq, \
         t.run_at, t.status, t.pending_deps"
    ),
    ") t WHERE CASE WHEN ",
    ready!(),
    " AND NOT (t.task_type = ANY($4::text[])) AND ",
    key_has_room!(),
    " THEN NOT $7 OR ",
    key_taken!("t"),
    " ELSE false END ORDER BY t.priority DESC, t.seq LIMIT $6) \
     UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(*) FROM (",
    keyed_head!("1"),
    ") h"
);

/// The first `$3` keyed tasks in queue order whose keys have room ([`open_keys`]), of the
/// types asked for (`$1`) and not blocked (`$2`), at most as many a key as it has room for.
const KEY_HEADS: &str = concat!(
    "WITH open AS (",
    open_keys!(),
    ") SELECT x.* FROM open CROSS JOIN LATERAL ( \
         SELECT t.id, t.task_type, t.concurrency_key, t.concurrency_limit, t.priority, t.seq \
         FROM tasks t WHERE t.concurrency_key = open.k AND ",
    ready!(),
    " AND NOT (t.task_type = ANY($2::text[])) \
         ORDER BY t.priority DESC, t.seq LIMIT least($3, open.room)) x \
     ORDER BY x.priority DESC, x.seq LIMIT $3"
);

/// The first `$2` heads of the plain queue, as priority and seq: the ready tasks of the
/// types asked for (`$1`) that no rule concerns and no other claim holds, and the
/// dependents the finish before this claim freed (`$3`, locked by it, not yet counted
/// down). What the admitted tasks are merged with in queue order; the ones another claim
/// holds are skipped, as this claim's plain part will skip them. Read in index order up to
/// the limit (a filter on "ahead of the admitted" would walk the whole ready index when few
/// are), and only by a claim that admitted something.
const PLAIN_HEADS: &str = concat!(
    "WITH ready AS ( \
         SELECT t.priority, t.seq FROM tasks t WHERE ",
    ready!(),
    " AND t.concurrency_key IS NULL \
           AND NOT EXISTS (SELECT 1 FROM flow_rules f \
               WHERE f.kind = 'type' AND f.name = t.task_type) \
         ORDER BY ",
    super::claim::plain_order!(),
    " LIMIT $2 FOR UPDATE OF t SKIP LOCKED) \
     SELECT priority, seq FROM ( \
         SELECT priority, seq FROM ready \
         UNION ALL SELECT priority, seq FROM tasks WHERE id = ANY($3::uuid[]) \
     ) h ORDER BY priority DESC, seq LIMIT $2"
);

/// Admitted flow-controlled tasks, ready to claim; their starts are recorded with
/// [`record_starts`] once claimed.
pub(super) struct Admitted {
    pub ids: Vec<Uuid>,
    claim: FlowClaim,
    tasks: Vec<FlowCandidate>,
}

/// Locks the scopes involved, reads their use and admits candidates in queue order.
/// `deferred`: the dependents the finish before the claim freed, which compete with the
/// plain queue ([`PLAIN_HEADS`]).
pub(super) async fn admit(
    conn: &mut PgConnection,
    p: &ClaimParams,
    probe: Probe,
    deferred: &[Uuid],
) -> R<Admitted> {
    let fc = probe.claim;
    let ruled = probe.open_types;
    let ruled_scopes: Vec<Scope> = ruled.iter().cloned().map(Scope::Type).collect();
    lock(conn, &ruled_scopes).await?;
    let type_usage = usage(conn, &fc, &ruled_scopes).await?;
    let blocked = fc.blocked_types(&ruled, &type_usage);
    let open: Vec<&String> = ruled.iter().filter(|t| !blocked.contains(t)).collect();
    // Keyed tasks of every limited type with no room are passed over too.
    let blocked: Vec<String> = fc
        .ruled_types(p)
        .into_iter()
        .filter(|t| !open.contains(&t))
        .collect();
    let read = Read {
        p,
        fc: &fc,
        open: &open,
        blocked: &blocked,
        keyed_ready: probe.keyed_ready,
    };
    let mut candidates = read.candidates(conn, true).await?;
    let taken = take_keys(conn, p, &blocked, &candidates).await?;
    let keys: Vec<Scope> = if !taken.any && probe.keyed_ready {
        // Every key with room was another claimer's: wait for them (holding no key, so
        // no two claimers wait on each other) rather than leave them until a later poll.
        candidates = read.candidates(conn, false).await?;
        let keys: Vec<Scope> = flow::keys_of(&candidates)
            .into_iter()
            .map(Scope::Key)
            .collect();
        lock(conn, &keys).await?;
        keys
    } else {
        // A key another claimer holds is its to admit from now: its tasks are left to it,
        // as the plain claim leaves it the tasks it holds.
        let held = taken.in_order;
        candidates.retain(|c| {
            c.key
                .as_ref()
                .is_none_or(|k| held.contains(&Scope::Key(k.clone())))
        });
        held.into_iter().collect()
    };
    let mut all = type_usage;
    all.extend(usage(conn, &fc, &keys).await?);
    // Plain heads are read only when something is admitted: a claim with no room reads
    // none, and the merge only drops admitted tasks from the back.
    let limit = p.limit as usize;
    let mut tasks = fc.admit(candidates.clone(), all.clone(), limit, &[]);
    if !tasks.is_empty() {
        let plain: Vec<(i32, i64)> = sqlx::query_as(PLAIN_HEADS)
            .bind(&p.task_types)
            .bind(i64::from(p.limit))
            .bind(deferred)
            .fetch_all(&mut *conn)
            .await?;
        if !plain.is_empty() {
            tasks = fc.admit(candidates, all, limit, &plain);
        }
    }
    Ok(Admitted {
        ids: tasks.iter().map(|c| c.id.0).collect(),
        claim: fc,
        tasks,
    })
}

/// What [`admit`] reads candidates for.
struct Read<'a> {
    p: &'a ClaimParams,
    fc: &'a FlowClaim,
    open: &'a [&'a String],
    blocked: &'a [String],
    keyed_ready: bool,
}

impl Read<'_> {
    /// The heads of the open limited types' queues and the first keyed tasks with room, or
    /// each key's heads when those are behind a busy key's backlog ([`flow::walk_keys`]).
    /// `take_keys`: the keyed tasks' keys are taken as they are read, passing over the keys
    /// other claimers hold ([`key_taken`]).
    async fn candidates(&self, conn: &mut PgConnection, take_keys: bool) -> R<Vec<FlowCandidate>> {
        let p = self.p;
        let found = sqlx::query(CANDIDATES)
            .bind(&p.task_types)
            .bind(self.open)
            .bind(flow::window(p.limit))
            .bind(self.blocked)
            .bind(self.keyed_ready)
            .bind(flow::keyed_window(p.limit))
            .bind(take_keys)
            .fetch_all(&mut *conn)
            .await?;
        let mut candidates = Vec::with_capacity(found.len());
        let mut scanned = 0;
        let mut keyed = Vec::new();
        for row in &found {
            match rows::get::<Option<i64>>(row, "scanned", "tasks")? {
                Some(n) => scanned = n,
                None if rows::get::<bool>(row, "keyed", "tasks")? => keyed.push(candidate(row)?),
                None => candidates.push(candidate(row)?),
            }
        }
        let walk = flow::walk_keys(p.limit, scanned, self.fc.places(&keyed));
        candidates.append(&mut keyed);
        if walk {
            let found = sqlx::query(KEY_HEADS)
                .bind(&p.task_types)
                .bind(self.blocked)
                .bind(flow::keyed_window(p.limit))
                .fetch_all(&mut *conn)
                .await?;
            for row in &found {
                candidates.push(candidate(row)?);
            }
        }
        Ok(candidates)
    }
}

fn candidate(row: &PgRow) -> R<FlowCandidate> {
    const T: &str = "tasks";
    Ok(FlowCandidate {
        id: TaskId(rows::get(row, "id", T)?),
        task_type: rows::get(row, "task_type", T)?,
        key: rows::get(row, "concurrency_key", T)?,
        key_limit: rows::get::<Option<i32>>(row, "concurrency_limit", T)?
            .map(|n| n.max(1).unsigned_abs()),
        priority: rows::get(row, "priority", T)?,
        seq: rows::get(row, "seq", T)?,
    })
}

/// The keys a claim took ([`take_keys`]).
struct Taken {
    /// Whether it holds any key's lock (then it must not wait for another's).
    any: bool,
    /// The keys whose first candidate is the key's first ready task the claim could take.
    in_order: HashSet<Scope>,
}

/// Takes the locks of the candidates' keys no other claimer holds (held to the end of the
/// transaction; those this one holds already, again), without waiting. A key whose task
/// was passed over while another claimer held it, and was then let go (that claimer
/// committed without taking it), is not in order: it is left to a later claim rather than
/// served out of order.
async fn take_keys(
    conn: &mut PgConnection,
    p: &ClaimParams,
    blocked: &[String],
    candidates: &[FlowCandidate],
) -> R<Taken> {
    let mut first: HashMap<&str, (i32, i64)> = HashMap::new();
    for c in candidates {
        if let Some(k) = c.key.as_deref() {
            let e = first.entry(k).or_insert((c.priority, c.seq));
            if (Reverse(c.priority), c.seq) < (Reverse(e.0), e.1) {
                *e = (c.priority, c.seq);
            }
        }
    }
    if first.is_empty() {
        return Ok(Taken {
            any: false,
            in_order: HashSet::new(),
        });
    }
    let (mut keys, mut priorities, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
    for (k, (priority, seq)) in first {
        keys.push(k.to_owned());
        priorities.push(priority);
        seqs.push(seq);
    }
    // An earlier task whose own limit leaves its key no room (a serial task behind a
    // running one, before a task allowing five) was passed over by the read, not missed.
    let taken: Vec<(String, bool)> = sqlx::query_as(concat!(
        "SELECT x.concurrency_key, NOT EXISTS (SELECT 1 FROM tasks t \
             WHERE t.concurrency_key = x.concurrency_key AND t.status = 'queued' \
               AND t.pending_deps = 0 \
               AND (t.run_at IS NULL OR t.run_at <= statement_timestamp()) \
               AND (cardinality($4::text[]) = 0 OR t.task_type = ANY($4::text[])) \
               AND NOT (t.task_type = ANY($5::text[])) \
               AND (t.priority > x.priority OR (t.priority = x.priority AND t.seq < x.seq)) \
               AND ",
        key_room!(),
        " > 0) \
         FROM unnest($1::text[], $2::int[], $3::bigint[]) x(concurrency_key, priority, seq) \
         WHERE ",
        key_taken!("x")
    ))
    .bind(keys)
    .bind(priorities)
    .bind(seqs)
    .bind(&p.task_types)
    .bind(blocked)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Taken {
        any: !taken.is_empty(),
        in_order: taken
            .into_iter()
            .filter_map(|(k, in_order)| in_order.then_some(Scope::Key(k)))
            .collect(),
    })
}

/// Takes the scopes' advisory locks (held to the end of the transaction) in hash order.
async fn lock(conn: &mut PgConnection, scopes: &[Scope]) -> R<()> {
    if scopes.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = scopes
        .iter()
        .map(|s| format!("hive.flow.{}:{}", s.kind(), s.name()))
        .collect();
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(h)) FROM ( \
             SELECT DISTINCT hashtextextended(n, 0) AS h FROM unnest($1::text[]) n ORDER BY 1 \
         ) s",
    )
    .bind(names)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Running tasks and recent starts of each scope.
async fn usage(
    conn: &mut PgConnection,
    fc: &FlowClaim,
    scopes: &[Scope],
) -> R<HashMap<Scope, Usage>> {
    let mut out: HashMap<Scope, Usage> = HashMap::new();
    if scopes.is_empty() {
        return Ok(out);
    }
    let of_kind = |kind: &str| names(scopes.iter().filter(|s| s.kind() == kind));
    let windows = fc.rate_windows(scopes);
    let found = sqlx::query(
        "SELECT 'type' AS kind, task_type AS name, count(*) AS running, 0::bigint AS starts \
         FROM tasks WHERE status = 'in_progress' AND task_type = ANY($1::text[]) \
         GROUP BY task_type \
         UNION ALL SELECT 'key', concurrency_key, count(*), 0 FROM tasks \
         WHERE status = 'in_progress' AND concurrency_key = ANY($2::text[]) \
         GROUP BY concurrency_key \
         UNION ALL SELECT s.kind, s.name, 0, count(*) \
         FROM unnest($3::text[], $4::text[], $5::bigint[]) w(kind, name, us) \
         JOIN flow_starts s ON s.kind = w.kind AND s.name = w.name \
          AND s.started_at > statement_timestamp() - w.us * interval '1 microsecond' \
         GROUP BY s.kind, s.name",
    )
    .bind(of_kind("type"))
    .bind(of_kind("key"))
    .bind(kinds(windows.iter().map(|(s, _)| s)))
    .bind(names(windows.iter().map(|(s, _)| s)))
    .bind(windows.iter().map(|(_, us)| *us).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    for row in &found {
        const T: &str = "flow_starts";
        let kind: String = rows::get(row, "kind", T)?;
        let scope = Scope::from_parts(&kind, rows::get::<String>(row, "name", T)?)
            .map_err(|e| rows::corrupt(T, e.to_string()))?;
        let u = out.entry(scope).or_default();
        u.running += rows::get::<i64>(row, "running", T)?.max(0).unsigned_abs();
        u.recent_starts += rows::get::<i64>(row, "starts", T)?.max(0).unsigned_abs();
    }
    Ok(out)
}

/// The scopes' kinds and names as the parallel arrays statements unnest.
pub(super) fn kinds<'a>(scopes: impl IntoIterator<Item = &'a Scope>) -> Vec<&'static str> {
    scopes.into_iter().map(Scope::kind).collect()
}

pub(super) fn names<'a>(scopes: impl IntoIterator<Item = &'a Scope>) -> Vec<String> {
    scopes.into_iter().map(|s| s.name().to_owned()).collect()
}
