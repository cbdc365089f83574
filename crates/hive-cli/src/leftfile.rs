//! Files a `shell` command may leave for its worker (`HIVE_OUTPUT`, `HIVE_SPAWN`): read when
//! the command wrote one, and never past their cap.

use std::io::Read;
use std::path::Path;

/// The bytes of the file the command left at `file` (named by the environment variable
/// `var`), or `None` when it left none. A file over `max` bytes is refused without being
/// read, with `limit` saying what the cap is for; one that grows past it while being read
/// is refused too, having read no more than the cap.
pub fn read(file: &Path, var: &str, max: u64, limit: &str) -> Result<Option<Vec<u8>>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read the {var} file: {e}");
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let too_large = |len: u64| format!("the {var} file is {len} bytes; {limit}");
    let len = f.metadata().map_err(unreadable)?.len();
    if len > max {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_when_left_and_refused_over_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("left");
        assert_eq!(read(&path, "HIVE_X", 4, "at most 4").unwrap(), None);
        std::fs::write(&path, "abcd").unwrap();
        assert_eq!(
            read(&path, "HIVE_X", 4, "at most 4").unwrap().unwrap(),
            b"abcd"
        );
        std::fs::write(&path, "abcde").unwrap();
        assert_eq!(
            read(&path, "HIVE_X", 4, "at most 4").unwrap_err(),
            "the HIVE_X file is 5 bytes; at most 4"
        );
        let unreadable = read(dir.path(), "HIVE_X", 1 << 20, "at most 1 MiB").unwrap_err();
        assert!(
            unreadable.starts_with("cannot read the HIVE_X file"),
            "{unreadable}"
        );
    }
}
