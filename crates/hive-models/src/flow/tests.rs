use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn rule(scope: Scope) -> FlowRule {
    FlowRule::new(scope, chrono::Utc::now())
}

fn ty(name: &str) -> Scope {
    Scope::Type(name.into())
}

fn key(name: &str) -> Scope {
    Scope::Key(name.into())
}

fn task<'a>(t: &'a str, k: Option<&'a str>, limit: Option<u32>) -> Candidate<'a> {
    Candidate {
        task_type: t,
        key: k,
        key_limit: limit,
    }
}

#[test]
fn rates_parse_with_units_and_print_back() {
    let r = Rate::parse("60/1m").unwrap();
    assert_eq!((r.max, r.per), (60, Duration::from_secs(60)));
    assert_eq!(Rate::parse("10/s").unwrap().per, Duration::from_secs(1));
    assert_eq!(
        Rate::parse("5/500ms").unwrap().per,
        Duration::from_millis(500)
    );
    assert_eq!(Rate::parse("60/1m").unwrap().to_string(), "60/1m");
    assert_eq!(Rate::parse("7/90s").unwrap().to_string(), "7/90s");
    for bad in ["60", "0/1m", "x/1m", "5/1w", "5/0s", "5/2d", "-1/1m"] {
        let e = Rate::parse(bad).unwrap_err().to_string();
        assert!(e.contains("rate"), "{bad}: {e}");
    }
}

#[test]
fn rules_and_keys_refuse_zero_empty_and_control_characters() {
    let mut r = rule(ty("email"));
    r.max_running = Some(0);
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .contains("max_running")
    );
    r.max_running = Some(3);
    r.validate().unwrap();
    assert!(rule(ty(" ")).validate().is_err());
    assert!(rule(key("a\nb")).validate().is_err());
    assert!(rule(key(&"k".repeat(201))).validate().is_err());
    // A URL path cannot carry them: the dashboard's buttons for them would miss.
    for dots in [".", ".."] {
        let e = check_scope_name("task_type", dots).unwrap_err().to_string();
        assert!(e.contains(&format!("must not be `{dots}`")), "{e}");
    }
    check_scope_name("task_type", "...").unwrap();
    assert!(check_concurrency(None, Some(1)).is_err());
    assert!(check_concurrency(Some("acct"), Some(0)).is_err());
    check_concurrency(Some("acct"), None).unwrap();
}

#[test]
fn admission_caps_a_type_and_passes_over_without_blocking_others() {
    let mut rules = HashMap::new();
    let mut r = rule(ty("api"));
    r.max_running = Some(2);
    rules.insert(r.scope.clone(), r);
    let usage = HashMap::from([(
        ty("api"),
        Usage {
            running: 1,
            recent_starts: 0,
        },
    )]);
    let mut a = Admission::new(&rules, usage);
    assert!(a.admit(&task("api", None, None)));
    assert!(
        !a.admit(&task("api", None, None)),
        "the cap of 2 is reached"
    );
    assert!(a.admit(&task("other", None, None)), "other types pass");
}

#[test]
fn a_key_defaults_to_serial_and_a_stored_rule_overrides_the_tasks_limit() {
    let mut rules = HashMap::new();
    let mut a = Admission::new(&rules, HashMap::new());
    assert!(a.admit(&task("t", Some("acct-1"), None)));
    assert!(
        !a.admit(&task("t", Some("acct-1"), None)),
        "serial by default"
    );
    assert!(a.admit(&task("t", Some("acct-2"), None)));
    assert!(a.admit(&task("t", Some("acct-3"), Some(2))));
    assert!(a.admit(&task("t", Some("acct-3"), Some(2))));
    assert!(!a.admit(&task("t", Some("acct-3"), Some(2))));
    let mut r = rule(key("acct-3"));
    r.max_running = Some(3);
    rules.insert(r.scope.clone(), r);
    let usage = HashMap::from([(
        key("acct-3"),
        Usage {
            running: 2,
            recent_starts: 0,
        },
    )]);
    let mut a = Admission::new(&rules, usage);
    assert!(
        a.admit(&task("t", Some("acct-3"), Some(2))),
        "the stored rule wins"
    );
    assert!(!a.admit(&task("t", Some("acct-3"), Some(2))));
}

#[test]
fn rates_count_recent_starts_and_pauses_admit_nothing() {
    let mut rules = HashMap::new();
    let mut r = rule(ty("mail"));
    r.rate = Some(Rate::parse("3/1m").unwrap());
    rules.insert(r.scope.clone(), r);
    let mut p = rule(ty("frozen"));
    p.paused = true;
    rules.insert(p.scope.clone(), p);
    let usage = HashMap::from([(
        ty("mail"),
        Usage {
            running: 0,
            recent_starts: 2,
        },
    )]);
    let mut a = Admission::new(&rules, usage);
    assert!(a.admit(&task("mail", None, None)));
    assert!(
        !a.admit(&task("mail", None, None)),
        "3 starts in the window"
    );
    assert!(!a.admit(&task("frozen", None, None)));
    assert!(is_flow_controlled(&rules, "frozen", None));
    assert!(is_flow_controlled(&rules, "plain", Some("k")));
    assert!(!is_flow_controlled(&rules, "plain", None));
}
