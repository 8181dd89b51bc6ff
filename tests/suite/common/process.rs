//! Processes and plain HTTP: the built binary as a child, waiting with a deadline, raw HTTP/1.1
//! requests, metric lines, free ports.
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Waits until `check` holds, polling every few milliseconds, for at most `deadline`. Only for
/// what crosses to another instance through PostgreSQL (propagation); rules move the clock.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let waited = tokio::time::timeout(deadline, async {
        loop {
            tick.tick().await;
            if check().await {
                return started.elapsed();
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("{what}: not within {deadline:?}"))
}

/// A plain HTTP/1.1 GET (the metrics port); returns the status line + headers and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let response = http_request(addr, "GET", path, &[], None)
        .await
        .expect("an HTTP response");
    (response.head, response.body)
}

/// An HTTP/1.1 answer as it came over the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// How many times a header came (names compared case-insensitively).
    pub fn header_count(&self, name: &str) -> usize {
        self.head
            .lines()
            .skip(1)
            .filter(|line| {
                line.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            })
            .count()
    }

    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end; `Err`
/// when nothing answers (e.g. a proxy not listening yet).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some((content_type, body)) => request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("\r\n"),
    }
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
    Ok(HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// The status of a GET, read as soon as the response head arrives (not at the connection's end,
/// which a proxy may hold open a while after a local reply: Envoy's delayed close is 1 s).
pub async fn http_status(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not HTTP");
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s"))??;
        if n == 0 {
            return Err(bad());
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// The body of a GET as bytes (for binary answers), over a fresh connection.
pub async fn http_body_bytes(addr: SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer in 10 s")
        .expect("read");
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    let body = raw[at + 4..].to_vec();
    // A chunked body (hyper chunks when it does not know the length up front): unchunk it.
    if !head.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A port nothing listens on right now (the OS picks it; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The built binary running as a child process, its stderr collected line by line.
pub struct SidecarProcess {
    child: Option<std::process::Child>,
    pub pid: u32,
    pub port: u16,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    reader: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl SidecarProcess {
    /// Starts the binary with `env` (plus a free API port) in `dir`, and waits (bounded) until
    /// it says it listens. A start that lost its port to another test between `free_port` and
    /// the bind (tests run in parallel) is tried again on another port.
    pub async fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            let mut process = Self::spawn(dir, env);
            match process
                .seen_line("token-sidecar listening", Duration::from_secs(30))
                .await
            {
                Ok(()) => return process,
                Err(seen) if seen.contains("in use") => continue,
                Err(seen) => panic!("the sidecar never logged it listens; it logged:\n{seen}"),
            }
        }
        panic!("the sidecar lost its port three times");
    }

    fn spawn(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let port = free_port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_token-sidecar"));
        command
            .current_dir(dir)
            .env("TOKEN_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOKEN_SIDECAR_METRICS_LISTEN", "127.0.0.1:0")
            .env_remove("DATABASE_URL")
            .env_remove("TOKEN_SIDECAR_KEYS")
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all
        });
        Self {
            pid: child.id(),
            child: Some(child),
            port,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits (bounded) for a line containing `text`; the lines seen if it never comes.
    async fn seen_line(&mut self, text: &str, deadline: Duration) -> Result<(), String> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(deadline, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(text) {
                    return true;
                }
                seen.push(line);
            }
            false
        })
        .await;
        match found {
            Ok(true) => Ok(()),
            _ => Err(seen.join("\n")),
        }
    }

    /// Waits (bounded) for a log line containing `text`.
    pub async fn wait_for_line(&mut self, text: &str, deadline: Duration) {
        if let Err(seen) = self.seen_line(text, deadline).await {
            panic!("the sidecar never logged {text:?}; it logged:\n{seen}");
        }
    }

    /// A channel to the API, once health says SERVING.
    pub async fn connect(&self) -> Channel {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(update)) = watch.next().await {
                if update.status == ServingStatus::Serving as i32 {
                    return;
                }
            }
        })
        .await
        .expect("SERVING within 30s");
        channel
    }

    /// Sends a signal (`-TERM`, `-HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its status and every line it logged.
    pub async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        let log = self
            .reader
            .take()
            .expect("reader")
            .join()
            .expect("log reader")
            .join("\n");
        (exit, log)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Serves `router` on an ephemeral loopback port in the background; its address.
pub async fn serve_router(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Writes the test HS256 key to `dir/main.key` (mode 0600); its `--key` spec, `main=HS256:PATH`.
pub fn write_test_key(dir: &std::path::Path) -> String {
    let key = dir.join("main.key");
    std::fs::write(&key, super::TEST_SECRET).expect("write key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    format!("main=HS256:{}", key.display())
}

/// SPEC §9: a GET of `path` at `addr` with two `Authorization` headers (the first carrying
/// `token`) is refused 401 as REASON_MALFORMED.
pub async fn assert_two_authorizations_are_malformed(addr: SocketAddr, path: &str, token: &str) {
    let valid = format!("Bearer {token}");
    let r = http_request(
        addr,
        "GET",
        path,
        &[("Authorization", &valid), ("Authorization", "Bearer other")],
        None,
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.contains("REASON_MALFORMED")),
        "{r:?}"
    );
    assert!(r.header("x-user-id").is_none(), "{r:?}");
}

/// A child process killed (and reaped) when dropped, also when a test fails: an orphan would
/// keep the test harness's output pipe open.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python's file server over HTTPS on `port`, serving `dir` with the test server certificate
/// (`tests/keys/tls/server.pem`, for `localhost`, signed by `ca.pem`).
pub fn https_file_server(dir: &std::path::Path, port: u16) -> Reaped {
    let fixture = |name: &str| format!("{}/tests/keys/tls/{name}", env!("CARGO_MANIFEST_DIR"));
    let serve = format!(
        "import http.server, ssl, functools\n\
         handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
         server = http.server.HTTPServer(('127.0.0.1', {port}), handler)\n\
         context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         context.load_cert_chain({cert:?}, {key:?})\n\
         server.socket = context.wrap_socket(server.socket, server_side=True)\n\
         server.serve_forever()\n",
        dir = dir.display().to_string(),
        cert = fixture("server.pem"),
        key = fixture("server.key"),
    );
    Reaped(
        std::process::Command::new("python3")
            .args(["-c", &serve])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 serves files over HTTPS"),
    )
}
