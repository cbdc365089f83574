//! A delaying TCP relay, for kernels without netem: it listens on the database host and
//! forwards each connection to the server, holding every chunk read in either direction
//! for a fixed delay before writing it on (chunks keep their order; the delay is not a
//! bandwidth limit). It runs as `cargo xtask cluster-relay` inside the database host's
//! namespace, started by [`Relay::start`].

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Cluster;
use super::pg::PORT;

/// Where the relay listens on the database host.
pub const RELAY_PORT: u16 = 6432;
/// Printed once listening, so the harness knows connections will be accepted.
const READY: &str = "relay ready";
/// Chunks in flight per direction before reading pauses (backpressure).
const IN_FLIGHT: usize = 1024;

/// Options of the hidden `cargo xtask cluster-relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward each connection to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Delay of each direction, in milliseconds.
    #[arg(long)]
    delay_ms: f64,
}

/// The relay process; dropping it kills it without waiting, [`Relay::stop`] waits too.
#[derive(Debug)]
pub struct Relay {
    child: tokio::process::Child,
}

impl Relay {
    /// Starts a relay on the database host adding `one_way_ms` to each direction, and
    /// waits until it listens.
    pub async fn start(c: &Cluster, one_way_ms: f64) -> Result<Relay> {
        let exe = std::env::current_exe().context("locating cargo xtask's binary")?;
        let addr = c.net.db.addr;
        let log = c.path("relay.log");
        let mut child = c
            .net
            .db
            .command(&exe)
            .args(["cluster-relay", "--listen", &format!("{addr}:{RELAY_PORT}")])
            .args(["--upstream", &format!("{addr}:{PORT}")])
            .args(["--delay-ms", &one_way_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("creating the relay's log")?)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting the relay")?;
        let stdout = child.stdout.take().context("the relay's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        match first {
            Ok(Ok(Some(line))) if line == READY => Ok(Relay { child }),
            _ => bail!(
                "the relay did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            ),
        }
    }

    /// Kills the relay and waits until it is gone, so the next one can take its port.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("stopping the relay")
    }
}

/// The body of `cargo xtask cluster-relay`: serves until killed.
pub fn serve(args: RelayArgs) -> Result<()> {
    let delay = Duration::try_from_secs_f64(args.delay_ms / 1000.0)
        .context("--delay-ms must be a non-negative number")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        println!("{READY}");
        loop {
            let (inbound, _) = listener.accept().await?;
            let upstream = args.upstream;
            tokio::spawn(async move {
                // A connection that fails ends alone; the relay goes on.
                let _ = relay(inbound, upstream, delay).await;
            });
        }
    })
}

async fn relay(inbound: TcpStream, upstream: SocketAddr, delay: Duration) -> Result<()> {
    let outbound = TcpStream::connect(upstream).await?;
    // The delay is the relay's only cost: no batching of small writes either way.
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::try_join!(
        one_way(in_read, out_write, delay),
        one_way(out_read, in_write, delay)
    )?;
    Ok(())
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; the end of `from`
/// is passed on (as a shutdown of `to`) after the same delay.
async fn one_way(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            let due = Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).await.is_err() || n == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if chunk.is_empty() {
                break;
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}
