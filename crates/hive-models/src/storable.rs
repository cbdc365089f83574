//! What every backend can store: text without NUL, JSON nested no deeper than all of them
//! read back. Checked before any database call, so one backend never stores what another
//! cannot.

use crate::{Error, Json, Result};

/// Rejects a NUL character (U+0000). Postgres can hold it neither in `text` nor in `jsonb`,
/// so Hive refuses it on every backend alike, before any database call, instead of letting
/// one backend store what another cannot.
pub fn check_no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::InvalidField {
            field: field.into(),
            reason: "must not contain a NUL character (U+0000)".into(),
        });
    }
    Ok(())
}

/// The deepest nesting of arrays and objects a stored JSON value may have. Every backend
/// reads values back with serde_json, which stops at 128 levels, and SQLite's JSON
/// functions (a claim assembles its inputs with them) at 1000: a value stored deeper would
/// fail every read of its row, its task's claim and its dependents' among them.
pub const MAX_JSON_DEPTH: usize = 100;

/// Whether `value` nests arrays and objects more than `limit` levels deep; without
/// recursion, so a value nested a million levels deep is measured, not a stack overflow.
fn nests_deeper_than(value: &Json, limit: usize) -> bool {
    let mut open = vec![(value, 1usize)];
    while let Some((v, depth)) = open.pop() {
        let inner: Box<dyn Iterator<Item = &Json>> = match v {
            Json::Array(items) => Box::new(items.iter()),
            Json::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > limit {
            return true;
        }
        open.extend(inner.map(|x| (x, depth + 1)));
    }
    false
}

/// Refuses a JSON value nested deeper than [`MAX_JSON_DEPTH`], naming `field`.
pub fn check_json_depth(field: &str, value: &Json) -> Result<()> {
    if nests_deeper_than(value, MAX_JSON_DEPTH) {
        return Err(Error::InvalidField {
            field: field.into(),
            reason: format!(
                "nests arrays and objects more than {MAX_JSON_DEPTH} levels deep, which no \
                 backend can read back"
            ),
        });
    }
    Ok(())
}

/// A JSON value every backend can store and read back: nested at most [`MAX_JSON_DEPTH`]
/// levels, and [`check_no_nul`] for every key and string inside it (the error gives the
/// JSON pointer of the offending key or string).
pub fn check_json_storable(field: &str, value: &Json) -> Result<()> {
    check_json_depth(field, value)?;
    fn find(v: &Json, path: &mut String) -> bool {
        match v {
            Json::String(s) => s.contains('\0'),
            Json::Array(items) => items.iter().enumerate().any(|(i, x)| {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                let found = find(x, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Json::Object(map) => map.iter().any(|(k, x)| {
                let len = path.len();
                // JSON pointer escaping, so the path names the key unambiguously.
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                let found = k.contains('\0') || find(x, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    if find(value, &mut path) {
        // Escaped, so the message stays one line whatever the keys hold.
        let at = if path.is_empty() {
            "the top level".to_owned()
        } else {
            format!("`{}`", path.escape_debug())
        };
        return Err(Error::InvalidField {
            field: field.into(),
            reason: format!("must not contain a NUL character (U+0000), found at {at}"),
        });
    }
    Ok(())
}

pub(crate) fn non_blank(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::InvalidField {
            field: field.into(),
            reason: "must not be empty".into(),
        });
    }
    check_no_nul(field, value)
}
