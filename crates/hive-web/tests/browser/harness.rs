//! The browser tests' harness: a dashboard served in-process on a fresh store, chromedriver
//! on a loopback port and a headless Chromium session. Every process is killed on drop, so
//! also when a test fails; every test runs under a time limit.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder};
use hive_client::store::Store;
use hive_client::{Client, OpsConfig};

/// The longest a browser test may take.
pub const LIMIT: Duration = Duration::from_secs(120);

/// chromedriver, killed when dropped.
pub struct Driver {
    child: Child,
    pub port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver; fails with what to install when it is missing (`.ci/run`
    /// installs Debian's `chromium` and `chromium-driver`).
    ///
    /// chromedriver picks its own port (`--port=0`) and prints it: a port chosen here and
    /// handed over could be taken in between by another test's listener, and chromedriver
    /// then served on IPv6 alone while the readiness probe reached the other listener.
    pub async fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}): apt-get install chromium chromium-driver")
            });
        let stdout = child.stdout.take().expect("chromedriver's stdout");
        // The driver is built before the wait so that a failed wait still kills the child.
        let mut driver = Driver { child, port: 0 };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut tx = Some(tx);
            // Reads on to the end: a full pipe would stall chromedriver.
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let port = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
                if let Some(port) = port
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        driver.port = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("chromedriver did not say its port within 20 s")
            .expect("chromedriver exited before it listened");
        driver
    }

    /// A headless Chromium session.
    pub async fn browser(&self) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

/// A dashboard serving a client, stopped when dropped.
pub struct Dashboard {
    pub addr: SocketAddr,
    pub client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Dashboard {
    pub async fn start(store: Arc<dyn Store>, bind: &str, token: Option<&str>) -> Dashboard {
        let client = Client::from_store(store, OpsConfig::default());
        let server = hive_web::Server::bind(
            client.clone(),
            hive_web::Config {
                bind: bind.parse().expect("an address"),
                token: token.map(str::to_owned),
            },
        )
        .await
        .expect("the dashboard binds");
        let addr = server.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Dashboard {
            addr,
            client,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Polls `check` until it holds or `within` passes; says what it waited for.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request over a plain socket; the status code and body.
pub async fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}
