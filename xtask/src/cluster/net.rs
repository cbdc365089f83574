//! The test hosts: network namespaces, each with loopback and one veth pair to a bridge in
//! a "switch" namespace, addressed in 10.213.0.0/24 (the database host .1, worker host i
//! .(10+i)). Nothing outside these namespaces is configured or used. A host's link can be
//! cut at its switch port and delayed with netem where the kernel has it.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use super::sys::{self, ip};

/// The bridge inside the switch namespace.
const BRIDGE: &str = "br0";
/// Each host's end of its link.
const HOST_IF: &str = "eth0";

/// One test host: its namespace, address and switch port.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short name: `db`, `h1` … `h4`.
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Its link's end in the switch namespace.
    port: String,
}

impl Host {
    fn new(prefix: &str, name: &str, last_octet: u8) -> Host {
        Host {
            name: name.to_owned(),
            ns: format!("{prefix}-{name}"),
            addr: Ipv4Addr::new(10, 213, 0, last_octet),
            port: format!("p-{name}"),
        }
    }

    /// `PROGRAM` run inside this host (`ip netns exec`, which keeps the pid).
    pub fn command(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }
}

/// The hosts and the switch; dropping it kills whatever still runs inside them and
/// deletes the namespaces (their links and the bridge go with them).
#[derive(Debug)]
pub struct Network {
    pub db: Host,
    pub hosts: Vec<Host>,
    pub switch: String,
    /// Namespaces created so far, removed in reverse order.
    created: Vec<String>,
}

impl Network {
    pub async fn create(prefix: &str, worker_hosts: u8) -> Result<Network> {
        let mut net = Network {
            db: Host::new(prefix, "db", 1),
            hosts: (1..=worker_hosts)
                .map(|i| Host::new(prefix, &format!("h{i}"), 10 + i))
                .collect(),
            switch: format!("{prefix}-sw"),
            created: Vec::new(),
        };
        let switch = net.switch.clone();
        net.add_namespace(&switch).await?;
        sys::run(&mut ip(&[
            "-n", &switch, "link", "add", BRIDGE, "type", "bridge",
        ]))
        .await?;
        sys::run(&mut ip(&["-n", &switch, "link", "set", BRIDGE, "up"])).await?;
        let hosts: Vec<Host> = std::iter::once(net.db.clone())
            .chain(net.hosts.iter().cloned())
            .collect();
        for host in &hosts {
            net.add_host(host).await?;
        }
        Ok(net)
    }

    async fn add_namespace(&mut self, ns: &str) -> Result<()> {
        sys::run(&mut ip(&["netns", "add", ns])).await?;
        self.created.push(ns.to_owned());
        sys::run(&mut ip(&["-n", ns, "link", "set", "lo", "up"])).await?;
        Ok(())
    }

    async fn add_host(&mut self, host: &Host) -> Result<()> {
        self.add_namespace(&host.ns).await?;
        let (ns, sw, port) = (host.ns.as_str(), self.switch.as_str(), host.port.as_str());
        // Created inside the host and moved to the switch, so no name is ever taken in the
        // machine's own namespace.
        sys::run(&mut ip(&[
            "-n", ns, "link", "add", HOST_IF, "type", "veth", "peer", "name", port, "netns", sw,
        ]))
        .await?;
        sys::run(&mut ip(&["-n", sw, "link", "set", port, "master", BRIDGE])).await?;
        sys::run(&mut ip(&["-n", sw, "link", "set", port, "up"])).await?;
        let addr = format!("{}/24", host.addr);
        sys::run(&mut ip(&["-n", ns, "addr", "add", &addr, "dev", HOST_IF])).await?;
        sys::run(&mut ip(&["-n", ns, "link", "set", HOST_IF, "up"])).await?;
        Ok(())
    }

    /// Cuts (`up == false`) or restores a host's link at its switch port: while it is
    /// down, packets both ways are dropped silently, as by a pulled cable, so open TCP
    /// connections hang rather than fail.
    pub async fn set_link(&self, host: &Host, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        sys::run(&mut ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &host.port,
            state,
        ]))
        .await
        .map(drop)
        .with_context(|| format!("setting {}'s link {state}", host.name))
    }

    /// Whether the kernel has netem (`tc qdisc … netem`), tried on the bridge.
    pub async fn has_netem(&self) -> bool {
        let added = sys::run(&mut tc(
            &self.switch,
            &[
                "qdisc", "add", "dev", BRIDGE, "root", "netem", "delay", "1ms",
            ],
        ))
        .await;
        if added.is_err() {
            return false;
        }
        sys::run(&mut tc(
            &self.switch,
            &["qdisc", "del", "dev", BRIDGE, "root"],
        ))
        .await
        .is_ok()
    }

    /// Delays each direction of a host's link by `one_way_ms` with netem: the host's end
    /// delays what it sends, its switch port what it receives (0 removes the delay).
    pub async fn set_netem_delay(&self, host: &Host, one_way_ms: f64) -> Result<()> {
        for (ns, dev) in [(&host.ns, HOST_IF), (&self.switch, host.port.as_str())] {
            if one_way_ms > 0.0 {
                let delay = format!("{one_way_ms}ms");
                sys::run(&mut tc(
                    ns,
                    &[
                        "qdisc", "replace", "dev", dev, "root", "netem", "delay", &delay,
                    ],
                ))
                .await?;
            } else {
                // Nothing to delete is fine: the link had no delay.
                let _ = sys::run(&mut tc(ns, &["qdisc", "del", "dev", dev, "root"])).await;
            }
        }
        Ok(())
    }
}

fn tc(ns: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("tc");
    cmd.args(["-n", ns]).args(args);
    cmd
}

/// Kills every process inside namespace `ns` and deletes it.
pub fn remove_namespace(ns: &str) -> Result<()> {
    for pid in pids(ns)? {
        sys::signal(pid, Signal::SIGKILL);
    }
    sys::run_now(std::process::Command::new("ip").args(["netns", "del", ns]))?;
    Ok(())
}

/// The processes running inside namespace `ns`.
pub fn pids(ns: &str) -> Result<Vec<u32>> {
    let pids = sys::run_now(std::process::Command::new("ip").args(["netns", "pids", ns]))?;
    Ok(pids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = remove_namespace(ns) {
                eprintln!("cluster: cleanup: {e:#}");
            }
        }
    }
}
