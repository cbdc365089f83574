//! A TCP proxy for fault tests: it owns a local port that refuses connections until the
//! test starts it, then forwards every connection to the real server.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A proxy in front of `upstream`. Until [`Proxy::listen`], its port is closed, so a client
/// sees exactly what it sees when the database server is down.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    forwarding: Option<JoinHandle<()>>,
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
        }
    }

    /// The local `host:port` clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens the port and forwards each accepted connection to the upstream server.
    pub async fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("re-bind the reserved proxy port");
        let upstream = self.upstream;
        self.forwarding = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        // Either side closing ends the pair; errors just mean a closed peer.
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(f) = self.forwarding.take() {
            f.abort();
        }
    }
}
