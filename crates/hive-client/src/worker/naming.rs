//! Worker ids unique to their process.

/// `PREFIX-HOST-PID-XXXX`: host and PID say where the worker runs; the random suffix keeps
/// apart processes that share both (containers on the host's network, each its own PID 1),
/// which under one id would end each other's runs. Give each worker process such an id
/// (or one of your own that no other live process uses): a process registering an id
/// ends the runs that id held, as a restarted worker's.
pub fn unique_worker_id(prefix: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{prefix}-{}-{}-{}",
        hostname(),
        std::process::id(),
        &suffix[..4]
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_say_where_and_differ_between_processes_that_share_host_and_pid() {
        let ids: Vec<String> = (0..3).map(|_| super::unique_worker_id("etl")).collect();
        let prefix = format!("etl-{}-{}-", super::hostname(), std::process::id());
        for id in &ids {
            let suffix = id.strip_prefix(&prefix).unwrap_or_else(|| panic!("{id}"));
            assert!(
                suffix.len() == 4 && suffix.chars().all(|c| c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(hive_models::WorkerId::parse(id.clone()).is_ok(), "{id}");
        }
        // Three alike by chance: one in four billion.
        assert!(ids[0] != ids[1] || ids[1] != ids[2], "{ids:?}");
    }
}
