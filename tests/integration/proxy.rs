//! A TCP proxy for fault tests: it owns a local port that refuses connections until the
//! test starts it, then forwards every connection to the real server, and can cut a
//! connection at the moment its client sends `COMMIT` (or any other bytes: a bound value
//! only one statement carries).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Where to cut a connection whose client sends `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The server never sees the COMMIT: the transaction is rolled back.
    BeforeCommit,
    /// The server gets the COMMIT but the reply never reaches the client.
    AfterCommit,
    /// The message and everything after it on that connection are swallowed, the
    /// connection left open: a connection cut silently, which the client only notices when
    /// TCP gives up.
    Silence,
}

/// An armed cut: the bytes that trigger it, and where it cuts.
type Armed = Arc<Mutex<Option<(Vec<u8>, Cut)>>>;

/// A proxy in front of `upstream`. Until [`Proxy::listen`], its port is closed, so a client
/// sees exactly what it sees when the database server is down.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    forwarding: Option<JoinHandle<()>>,
    /// The armed cut, taken by the first client message carrying its bytes.
    cut: Armed,
    /// The connections forwarded, each a task that ends them when aborted.
    pairs: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// While set, clients' bytes are held, not forwarded: a server that stopped answering
    /// (a network that drops packets), unlike [`Proxy::close`]'s refused connections.
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    /// Reserves a free local port (bound once, then released) for a proxy to `upstream`.
    pub fn closed(upstream: SocketAddr) -> Proxy {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = probe.local_addr().expect("a bound port has an address");
        drop(probe);
        Proxy {
            addr,
            upstream,
            forwarding: None,
            cut: Armed::default(),
            pairs: Arc::default(),
            stalled: Arc::default(),
        }
    }

    /// A closed proxy in front of the server of a Postgres `url`, and the same url with the
    /// proxy in the server's place.
    pub async fn for_url(url: &str) -> (Proxy, String) {
        let parsed = url::Url::parse(url).expect("a test database url");
        let host = parsed.host_str().expect("the url names a host");
        let upstream = tokio::net::lookup_host((host, parsed.port().unwrap_or(5432)))
            .await
            .expect("the test database host resolves")
            .next()
            .expect("the test database host has an address");
        let proxy = Proxy::closed(upstream);
        let mut proxied = parsed.clone();
        proxied.set_host(Some("127.0.0.1")).expect("an ip host");
        proxied.set_port(Some(proxy.addr().port())).expect("a port");
        (proxy, proxied.to_string())
    }

    /// The local `host:port` clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the next connection that sends `COMMIT`, as `cut` says.
    pub fn cut_next_commit(&self, cut: Cut) {
        self.cut_next_sending(b"COMMIT", cut);
    }

    /// Cuts the next connection whose client sends `bytes`, as `cut` says: with
    /// [`Cut::AfterCommit`] the server runs the message (a single statement commits on its
    /// own) and the reply is lost.
    pub fn cut_next_sending(&self, bytes: &[u8], cut: Cut) {
        *self.cut.lock().unwrap() = Some((bytes.to_vec(), cut));
    }

    /// Opens the port and forwards each accepted connection to the upstream server.
    pub async fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("re-bind the reserved proxy port");
        let upstream = self.upstream;
        let cut = self.cut.clone();
        let pairs = self.pairs.clone();
        let stalled = self.stalled.clone();
        self.forwarding = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = cut.clone();
                let stalled = stalled.clone();
                let pair = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        // Either side closing ends the pair; errors just mean a closed peer.
                        let _ = forward(client, server, cut, stalled).await;
                    }
                });
                pairs.lock().unwrap().push(pair);
            }
        }));
    }

    /// Holds every client's bytes from now on, connections left open: the server, as its
    /// clients see it, has stopped answering.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Closes the port and ends every connection forwarded: the database server, as its
    /// clients see it, is gone.
    pub fn close(&mut self) {
        if let Some(f) = self.forwarding.take() {
            f.abort();
        }
        for pair in self.pairs.lock().unwrap().drain(..) {
            pair.abort();
        }
    }
}

/// A task aborted when this is dropped, so that aborting the task holding it ends both.
struct AbortOnDrop(JoinHandle<std::io::Result<u64>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies both ways; the client's bytes are watched for an armed cut.
async fn forward(
    client: TcpStream,
    server: TcpStream,
    cut: Armed,
    stalled: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let down = AbortOnDrop(tokio::spawn(async move {
        tokio::io::copy(&mut from_server, &mut to_client).await
    }));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from_client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let armed = {
            let mut slot = cut.lock().unwrap();
            let hit = slot
                .as_ref()
                .is_some_and(|(bytes, _)| chunk.windows(bytes.len()).any(|w| w == bytes));
            if hit {
                slot.take().map(|(_, c)| c)
            } else {
                None
            }
        };
        match armed {
            Some(Cut::BeforeCommit) => break,
            Some(Cut::AfterCommit) => {
                // Stop relaying replies first, so the reply never arrives.
                down.0.abort();
                to_server.write_all(chunk).await?;
                // Long enough for the server to run it; its reply is dropped with the pair.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                break;
            }
            Some(Cut::Silence) => {
                while from_client.read(&mut buf).await? > 0 {}
                break;
            }
            None => to_server.write_all(chunk).await?,
        }
    }
    drop(down);
    Ok(())
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(f) = self.forwarding.take() {
            f.abort();
        }
    }
}
