//! Benchmark results: the `RESULT` lines, the closing table, `--json`, and the target check.

use std::fmt::Write as _;

use serde::Serialize;

/// One scenario's measurement on one backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BenchResult {
    pub scenario: String,
    pub backend: String,
    pub tasks: u64,
    /// Wall time of the measured phase, in seconds.
    pub secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_batch_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_ratio: Option<f64>,
    /// A plan drain's rate ÷ the flat drain's rate in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_drain: Option<f64>,
    /// `plan-large`: the large plan's rate ÷ the small plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_small: Option<f64>,
    /// `plan-submit`: subtasks submitted and materialized per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl BenchResult {
    pub fn new(scenario: &str, backend: &str, tasks: u64, secs: f64) -> Self {
        BenchResult {
            scenario: scenario.to_owned(),
            backend: backend.to_owned(),
            tasks,
            secs,
            ..Default::default()
        }
    }

    /// A throughput result: `tasks` in `secs`.
    pub fn throughput(scenario: &str, backend: &str, tasks: u64, secs: f64) -> Self {
        BenchResult {
            per_s: Some(rate(tasks, secs)),
            ..Self::new(scenario, backend, tasks, secs)
        }
    }

    /// Attaches the raw-SQL baselines and derives the ratios from them.
    pub fn with_baselines(mut self, raw: Option<f64>, raw_batch: Option<f64>) -> Self {
        self.raw_per_s = raw;
        self.raw_batch_per_s = raw_batch;
        self.ratio = ratio(self.per_s, raw);
        self.batch_ratio = ratio(self.per_s, raw_batch);
        self
    }

    /// The machine-readable line, fields omitted when there is nothing to say.
    pub fn line(&self) -> String {
        let mut s = format!(
            "RESULT scenario={} backend={} tasks={}",
            self.scenario, self.backend, self.tasks
        );
        let fields = [
            ("per_s", self.per_s, 0),
            ("raw_per_s", self.raw_per_s, 0),
            ("ratio", self.ratio, 2),
            ("raw_batch_per_s", self.raw_batch_per_s, 0),
            ("batch_ratio", self.batch_ratio, 2),
            ("ratio_to_drain", self.ratio_to_drain, 2),
            ("ratio_to_small", self.ratio_to_small, 2),
            ("submit_per_s", self.submit_per_s, 0),
            ("p50_ms", self.p50_ms, 3),
            ("p99_ms", self.p99_ms, 3),
        ];
        for (name, value, decimals) in fields {
            if let Some(v) = value {
                let _ = write!(s, " {name}={v:.decimals$}");
            }
        }
        s
    }
}

pub fn rate(tasks: u64, secs: f64) -> f64 {
    if secs > 0.0 { tasks as f64 / secs } else { 0.0 }
}

pub fn ratio(x: Option<f64>, y: Option<f64>) -> Option<f64> {
    match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    }
}

/// The `q` quantile (0..=1) of sorted samples, nearest-rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The human-readable table printed after all scenarios: the columns some result has.
pub fn table(results: &[BenchResult]) -> String {
    type Column = (&'static str, usize, fn(&BenchResult) -> Option<f64>);
    let columns: [Column; 11] = [
        ("secs", 2, |r| Some(r.secs)),
        ("per_s", 0, |r| r.per_s),
        ("raw_per_s", 0, |r| r.raw_per_s),
        ("ratio", 2, |r| r.ratio),
        ("raw_batch_per_s", 0, |r| r.raw_batch_per_s),
        ("batch_ratio", 2, |r| r.batch_ratio),
        ("ratio_to_drain", 2, |r| r.ratio_to_drain),
        ("ratio_to_small", 2, |r| r.ratio_to_small),
        ("submit_per_s", 0, |r| r.submit_per_s),
        ("p50_ms", 3, |r| r.p50_ms),
        ("p99_ms", 3, |r| r.p99_ms),
    ];
    let shown: Vec<&Column> = columns
        .iter()
        .filter(|(_, _, get)| results.iter().any(|r| get(r).is_some()))
        .collect();
    let mut header = vec!["scenario".to_owned(), "backend".into(), "tasks".into()];
    header.extend(shown.iter().map(|(name, _, _)| (*name).to_owned()));
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![r.scenario.clone(), r.backend.clone(), r.tasks.to_string()];
            row.extend(
                shown
                    .iter()
                    .map(|(_, decimals, get)| cell(get(r), *decimals)),
            );
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", line.join(" | "));
    };
    push_row(&header);
    push_row(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for row in &rows {
        push_row(row);
    }
    out
}

/// The targets, checked against whatever was measured (a target whose inputs were
/// not measured is skipped). Informational only: the benchmark never fails on them.
pub fn targets(results: &[BenchResult]) -> Vec<String> {
    let find = |scenario: &str, backend: &str| {
        results
            .iter()
            .find(|r| r.scenario == scenario && r.backend == backend)
    };
    let mut out = Vec::new();
    let mut check = |what: String, value: Option<f64>, goal: f64, at_least: bool| {
        if let Some(v) = value {
            let met = if at_least { v >= goal } else { v < goal };
            let op = if at_least { ">=" } else { "<" };
            let verdict = if met { "MET" } else { "MISSED" };
            out.push(format!("{verdict:6} {what}: {v:.3} (target {op} {goal})"));
        }
    };
    for b in ["postgres", "sqlite"] {
        if let Some(d) = find("drain", b) {
            check(format!("{b} drain ratio"), d.ratio, 2.0, true);
            check(format!("{b} drain batch_ratio"), d.batch_ratio, 0.5, true);
        }
    }
    if let Some(d) = find("drain-c8", "postgres") {
        check("postgres drain-c8 ratio".into(), d.ratio, 2.0, true);
    }
    for b in ["postgres", "sqlite"] {
        if let Some(e) = find("enqueue-batch", b) {
            check(format!("{b} enqueue-batch ratio"), e.ratio, 0.7, true);
        }
    }
    for b in ["memory", "sqlite", "postgres"] {
        let flat = find("drain", b).and_then(|d| d.per_s);
        if let Some(flat) = flat.filter(|f| *f > 0.0) {
            let backlog = find("backlog", b).and_then(|p| p.per_s).map(|p| p / flat);
            check(format!("{b} backlog / flat drain"), backlog, 0.9, true);
        }
        for scenario in ["drain-large", "drain-keyed"] {
            if let Some(d) = find(scenario, b) {
                check(
                    format!("{b} {scenario} ratio_to_drain"),
                    d.ratio_to_drain,
                    0.9,
                    true,
                );
            }
        }
    }
    for b in ["memory", "sqlite", "postgres"] {
        for shape in ["plan-chains", "plan-wide"] {
            if let Some(p) = find(shape, b) {
                check(
                    format!("{b} {shape} ratio_to_drain"),
                    p.ratio_to_drain,
                    0.8,
                    true,
                );
            }
        }
        if let Some(p) = find("plan-large", b) {
            check(
                format!("{b} plan-large ratio_to_small"),
                p.ratio_to_small,
                0.9,
                true,
            );
        }
        if let Some(p) = find("plan-submit", b) {
            check(format!("{b} plan-submit secs"), Some(p.secs), 1.0, false);
        }
    }
    if let Some(d) = find("drain", "memory") {
        check("memory drain per_s".into(), d.per_s, 300_000.0, true);
    }
    if let Some(l) = find("latency", "postgres") {
        check("postgres latency p50_ms".into(), l.p50_ms, 3.0, false);
        check("postgres latency p99_ms".into(), l.p99_ms, 20.0, false);
    }
    for b in ["sqlite", "memory"] {
        if let Some(l) = find("latency", b) {
            check(format!("{b} latency p50_ms"), l.p50_ms, 1.0, false);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_omits_missing_fields_and_derives_ratios() {
        let r =
            BenchResult::throughput("drain", "sqlite", 100, 2.0).with_baselines(Some(25.0), None);
        assert_eq!(
            r.line(),
            "RESULT scenario=drain backend=sqlite tasks=100 per_s=50 raw_per_s=25 ratio=2.00"
        );
        let m = BenchResult::throughput("drain", "memory", 10, 1.0);
        assert_eq!(
            m.line(),
            "RESULT scenario=drain backend=memory tasks=10 per_s=10"
        );
    }

    #[test]
    fn latency_line_carries_percentiles() {
        let mut r = BenchResult::new("latency", "memory", 3, 0.5);
        r.p50_ms = Some(0.25);
        r.p99_ms = Some(1.5);
        assert_eq!(
            r.line(),
            "RESULT scenario=latency backend=memory tasks=3 p50_ms=0.250 p99_ms=1.500"
        );
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn targets_skip_unmeasured_and_judge_measured() {
        let r = vec![BenchResult::throughput("drain", "memory", 10, 1.0)];
        let t = targets(&r);
        assert_eq!(t.len(), 1);
        assert!(t[0].starts_with("MISSED memory drain per_s"));
    }

    #[test]
    fn json_skips_absent_fields() {
        let r = BenchResult::throughput("drain", "memory", 10, 1.0);
        let j = serde_json::to_value(&r).unwrap();
        assert!(j.get("raw_per_s").is_none());
        assert_eq!(j["per_s"], 10.0);
    }
}
