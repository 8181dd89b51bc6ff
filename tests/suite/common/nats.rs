//! NATS for the tests: the machine's server (127.0.0.1:4222, which `scripts/test` starts when it
//! is down), or a private `nats-server` a test may stop and restart.
use std::time::Duration;

use super::process::free_port;

/// The NATS server the tests share.
pub fn shared_nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A `nats-server` of the test's own, on its own port.
pub struct PrivateNats {
    pub url: String,
    port: u16,
    child: Option<std::process::Child>,
    config: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl PrivateNats {
    pub async fn start() -> Self {
        let port = free_port();
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            config: None,
            _dir: None,
        };
        nats.restart().await;
        nats
    }

    /// A server run as production runs one: TLS (the test CA's server certificate) and the
    /// fleet's account, whose user `token-sidecar` (password `fleet-secret`) may use the change
    /// subject only, and a user known by the nkey `nkey_user` (a public key). `url` carries no
    /// credential.
    pub async fn start_with_accounts_and_tls(nkey_user: &str) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/tls");
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 tls {{ cert_file: \"{k}/server.pem\", key_file: \"{k}/server.key\" }}\n\
                 accounts {{ TOKEN_SIDECAR {{ users = [ {{ user: token-sidecar, password: fleet-secret,\n\
                   permissions: {{ publish: {{ allow: [\"token-sidecar.changes.>\"] }},\n\
                                   subscribe: {{ allow: [\"token-sidecar.changes.>\"] }} }} }},\n\
                   {{ nkey: {nkey_user} }} ] }}\n\
                   OTHER {{ users = [ {{ user: other, password: other }} ] }} }}\n",
                k = keys.display()
            ),
        )
        .expect("nats.conf");
        let mut nats = Self {
            url: format!("tls://127.0.0.1:{port}"),
            port,
            child: None,
            config: Some(config),
            _dir: Some(dir),
        };
        nats.restart().await;
        nats
    }

    /// Stops the server at once (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let mut command = std::process::Command::new(NATS_SERVER);
        match &self.config {
            Some(config) => command.arg("-c").arg(config),
            None => command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]),
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {NATS_SERVER} (Debian's nats-server): {e}"));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nats-server did not listen on {addr}");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}
