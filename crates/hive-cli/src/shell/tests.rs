//! Reading a command's output and its last word.

use super::{OUTPUT_FILE_MAX_BYTES, OUTPUT_TAIL_BYTES, output, with_last_word};
use crate::pipes::{Captured, MAX_LOG_BYTES};
use serde_json::json;

#[test]
fn a_failure_carries_the_last_stderr_line() {
    let failed = || "command exited with status 3".to_owned();
    assert_eq!(
        with_last_word(failed(), "first\n  the reason  \n\n"),
        "command exited with status 3: the reason"
    );
    assert_eq!(with_last_word(failed(), ""), "command exited with status 3");
    assert_eq!(
        with_last_word(failed(), "\u{1b}[2Jwiped\tout"),
        "command exited with status 3:  [2Jwiped out"
    );
    assert_eq!(
        with_last_word(failed(), "\n \n"),
        "command exited with status 3"
    );
    let long = "ü".repeat(300);
    let cut = with_last_word(failed(), &long);
    assert!(cut.ends_with('…'));
    assert_eq!(cut.chars().filter(|c| *c == 'ü').count(), 200);
}

#[test]
fn output_is_the_file_else_the_last_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.json");
    let stdout = "building\n{\"a\": 1}\nnot json\n[2, \"ü\"]\ndone\n";
    let whole = |s: &'static str| (s.as_bytes(), false);
    assert_eq!(
        output(&file, whole(stdout)).unwrap(),
        Some(serde_json::json!([2, "ü"]))
    );
    assert_eq!(output(&file, whole("no json here\n")).unwrap(), None);
    std::fs::write(&file, br#"{"from": "file"}"#).unwrap();
    assert_eq!(
        output(&file, whole(stdout)).unwrap(),
        Some(serde_json::json!({"from": "file"}))
    );
    std::fs::write(&file, "\u{feff}{\"bom\": true}".as_bytes()).unwrap();
    assert_eq!(
        output(&file, whole(stdout)).unwrap(),
        Some(serde_json::json!({"bom": true})),
        "a byte-order mark before the JSON is skipped"
    );
    std::fs::write(&file, b" \n").unwrap();
    assert_eq!(
        output(&file, whole(stdout)).unwrap(),
        Some(serde_json::json!([2, "ü"])),
        "an empty file is no output written there: stdout's last JSON line is"
    );
    std::fs::write(&file, b"{broken").unwrap();
    assert!(
        output(&file, whole(stdout))
            .unwrap_err()
            .contains("not JSON")
    );
    std::fs::File::create(&file)
        .unwrap()
        .set_len(OUTPUT_FILE_MAX_BYTES + 1)
        .unwrap();
    let refused = output(&file, whole(stdout)).unwrap_err();
    assert!(
        refused.contains("is 16777217 bytes; outputs are limited to 1 MiB"),
        "{refused}"
    );
}

/// A last line shaped like an object or array that is no JSON fails the task, naming
/// why, rather than passing an older line on; log lines in brackets are no outputs.
#[test]
fn a_last_line_shaped_like_json_that_is_none_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.json");
    let whole = |s: &'static [u8]| (s, false);
    for last in [
        &b"{\"score\": NaN}"[..],
        b"{'a': 1}",
        b"{\"name\": \"Jos\xe9\"}",
        b"[1, 2,, 3]",
    ] {
        let stdout = [&b"{\"level\": \"info\"}\n"[..], last, b"\n\n"].concat();
        let e = output(&file, (&stdout, false)).unwrap_err();
        assert!(e.contains("looks like JSON but is not"), "{e}");
    }
    assert_eq!(
        output(
            &file,
            whole(b"{\"a\": 1}\n[INFO] done [ok]\n... PASSED [ 45%]\n")
        )
        .unwrap(),
        Some(json!({"a": 1})),
        "a log line in brackets is no output, and hides none"
    );
    // A pretty-printed value's last line is read with the rest of it.
    assert_eq!(
        output(&file, whole(b"{\n  \"a\": [\n    1,\n    2\n  ]\n}\n")).unwrap(),
        Some(json!({"a": [1, 2]}))
    );
}

/// A progress bar printed on stdout (`\r` between its redraws, no newline) that filled
/// the tail read is no output over the limit.
#[test]
fn a_cut_progress_bar_is_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.json");
    let bar = "\r 50%|#####     | 5/10 [00:01<00:01, 4.9it/s]".repeat(3);
    let bar = format!("{bar}\r100%|##########| 10/10 [00:02<00:00, 4.9it/s]");
    assert_eq!(output(&file, (bar.as_bytes(), true)).unwrap(), None);
}

#[test]
fn a_cut_first_line_is_not_read_and_a_cut_json_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.json");
    // `2` ends a longer line whose start was not kept: not an output.
    assert_eq!(output(&file, (b"2\nlog\n", true)).unwrap(), None);
    assert_eq!(
        output(&file, (b"2\nlog\n", false)).unwrap(),
        Some(serde_json::json!(2))
    );
    for cut_json in [
        &b"xxxx\"}\n"[..],
        b"xxxx\"}",
        b"xxxx\"]\n\n",
        b"xxxx\"]\ndone\n",
    ] {
        let refused = output(&file, (cut_json, true)).unwrap_err();
        assert!(refused.contains("longer than the 2 MiB"), "{refused}");
    }
    // A log line cut before the end, ending like an array (pytest's `[ 45%]`), with
    // no JSON after it: a command that printed no output, not one over the limit.
    for log in [
        &b"xxxx PASSED [ 45%]\ndone\n"[..],
        b"xxxx]\n== 3 passed ==\n",
    ] {
        assert_eq!(output(&file, (log, true)).unwrap(), None);
    }
    assert_eq!(
        output(&file, (b"xxxx\"}\n{\"later\": 1}\n", true)).unwrap(),
        Some(serde_json::json!({"later": 1}))
    );
    assert_eq!(output(&file, (b"....... 99%\r", true)).unwrap(), None);
}

/// A value printed over several lines at the end of stdout (`jq '[.[].id]'`) is read
/// whole; without it, its last line that parses alone (`"b"`) was taken.
#[test]
fn a_pretty_printed_value_that_ends_stdout_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.json");
    let read = |s: &str| output(&file, (s.as_bytes(), false)).unwrap();
    assert_eq!(
        read("fetching\n[\n  \"a\",\n  \"b\"\n]\n"),
        Some(json!(["a", "b"]))
    );
    assert_eq!(
        read("{\n  \"ids\": [\n    1,\n    2\n  ],\n  \"n\": {\"x\": null}\n}\n\n"),
        Some(json!({"ids": [1, 2], "n": {"x": null}}))
    );
    assert_eq!(
        read("{\n  \"a\": 1\n}\n{\n  \"b\": 2\n}\n"),
        Some(json!({"b": 2})),
        "of two values, the last"
    );
    assert_eq!(read("[\r\n  1\r\n]\r\n"), Some(json!([1])));
    assert_eq!(
        read("[\n  \"a]\\\\\",\n  \"[\\\"}\",\n  {}\n]\n"),
        Some(json!(["a]\\", "[\"}", {}])),
        "brackets and escaped quotes in strings"
    );
    // Cut after its first line: its start was not kept, so it is refused as too long,
    // not read a piece at a time.
    let refused = output(&file, (b"xxxx\n  \"b\"\n]\n", true)).unwrap_err();
    assert!(refused.contains("longer than"), "{refused}");
}

/// Without a multi-line value at the very end, the last line that is JSON on its own is
/// the output, as before.
#[test]
fn without_a_value_at_the_end_the_last_json_line_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.json");
    let read = |s: &str| output(&file, (s.as_bytes(), false)).unwrap();
    assert_eq!(read("{\"a\": 1}\nuploaded\n"), Some(json!({"a": 1})));
    assert_eq!(
        read("{\"a\": 1}\nfn main() {\n}\n"),
        Some(json!({"a": 1})),
        "a last `}}` that closes no JSON"
    );
    // A pretty value followed by a log line is not the end of stdout: its lines are read
    // one by one, and the last that parses alone is taken. The docs say to end stdout
    // with the value, print it on one line (`jq -c`) or write it to HIVE_OUTPUT.
    assert_eq!(read("[\n  \"a\",\n  \"b\"\n]\ndone\n"), Some(json!("b")));
    assert_eq!(read("{\n  \"a\": [1, 2]\n}\ndone\n"), None);
}

#[test]
fn logs_keep_both_ends_and_outputs_follow_any_amount_of_logs() {
    let mut out = Captured::new(OUTPUT_TAIL_BYTES);
    out.push(b"first line\n");
    for _ in 0..3 * 1024 {
        out.push(&[b'.'; 1023]);
        out.push(b"\n");
    }
    out.push(b"{\"after\": \"3 MiB of logs\"}\n");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        output(&dir.path().join("absent.json"), out.end()).unwrap(),
        Some(serde_json::json!({"after": "3 MiB of logs"}))
    );
    let log = out.log();
    assert!(log.starts_with("first line\n"));
    assert!(log.ends_with("{\"after\": \"3 MiB of logs\"}\n"));
    let left_out = out.total - MAX_LOG_BYTES;
    assert!(
        log.contains(&format!("\n[{left_out} bytes not kept]\n")),
        "left out"
    );
    assert_eq!(
        log.len(),
        MAX_LOG_BYTES + format!("\n[{left_out} bytes not kept]\n").len()
    );

    let mut small = Captured::new(0);
    small.push(&[b'x'; 700 * 1024]);
    small.push(b"\nthe reason\n");
    assert_eq!(small.log().len(), small.total, "under the cap, all of it");
    assert_eq!(
        with_last_word("failed".into(), &String::from_utf8_lossy(small.end().0)),
        "failed: the reason"
    );
}
