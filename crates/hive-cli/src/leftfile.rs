//! Files a `shell` command may leave for its worker (`HIVE_OUTPUT`, `HIVE_SPAWN`): read when
//! the command wrote one, and never past their cap.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;

/// The bytes of the file the command left at `file` (named by the environment variable
/// `var`), or `None` when it left none. A file over `max` bytes is refused without being
/// read, with `limit` saying what the cap is for; one that grows past it while being read
/// is refused too, having read no more than the cap. Anything but a regular file (a FIFO,
/// a device, a directory, or a link to one) is refused without a read: opened without
/// `O_NONBLOCK`, a FIFO nobody writes to would block the worker's thread for good.
pub fn read(file: &Path, var: &str, max: u64, limit: &str) -> Result<Option<Vec<u8>>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read the {var} file: {e}");
    let Some((f, meta)) = open_regular(file, var)? else {
        return Ok(None);
    };
    let too_large = |len: u64| format!("the {var} file is {len} bytes; {limit}");
    let len = meta.len();
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

/// Opens the file at `file` (named by the environment variable `var`) to read it, with its
/// metadata: `None` when there is none, an error naming `var` when it is not a regular
/// file. Opened with `O_NONBLOCK`, so a FIFO put there never blocks the worker's thread.
pub fn open_regular(
    file: &Path,
    var: &str,
) -> Result<Option<(std::fs::File, std::fs::Metadata)>, String> {
    let unreadable = |e: std::io::Error| format!("cannot read the {var} file: {e}");
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(file);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(format!(
            "the {var} file is not a regular file (it is {}); write the file itself",
            kind(&meta.file_type())
        ));
    }
    Ok(Some((f, meta)))
}

/// What a file that is not a regular file is, for the error naming it.
fn kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
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
        assert_eq!(
            read(dir.path(), "HIVE_X", 1 << 20, "at most 1 MiB").unwrap_err(),
            "the HIVE_X file is not a regular file (it is a directory); write the file itself"
        );
    }

    /// A FIFO left where the file should be is refused at once: opening it for reading the
    /// usual way waits for a writer that never comes, and took the worker with it.
    #[test]
    fn a_fifo_or_a_device_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read(&fifo, "HIVE_X", 4, "at most 4"));
        });
        let refused = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("read returned instead of waiting for a writer")
            .unwrap_err();
        assert_eq!(
            refused,
            "the HIVE_X file is not a regular file (it is a FIFO); write the file itself"
        );
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert_eq!(
            read(&link, "HIVE_X", 4, "at most 4").unwrap_err(),
            "the HIVE_X file is not a regular file (it is a device); write the file itself"
        );
    }
}
