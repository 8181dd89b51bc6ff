//! SPEC §12: every connection is bounded on every listener, after its first request too — a
//! silent HTTP/2 connection (no answer to PING), an HTTP/1 keep-alive connection that goes
//! silent, a request head or body dribbled byte by byte — and one peer cannot take every slot.
//! These wait on real timers (the bounds are the server library's), a few seconds each.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Backend, Settings, TestApp};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads (and discards) until the server closes the connection; how long that took, or None
/// if it was still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let waited = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    waited.ok().map(|()| started.elapsed())
}

async fn bounded_app() -> TestApp {
    Settings::new(Backend::Sqlite)
        .arg("--max-connections", "4")
        .arg("--handshake-timeout", "1s")
        .arg("--idle-timeout", "2s")
        .arg("--keepalive-interval", "1s")
        .arg("--request-timeout", "2s")
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--health-listen", "127.0.0.1:0")
        .spawn()
        .await
}

/// An HTTP/2 client that sends its preface and then nothing: it does not answer PING.
async fn silent_http2(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(PREFACE).await.expect("preface");
    stream
}

#[tokio::test]
async fn silent_http2_connections_are_closed_on_every_grpc_listener() {
    let app = bounded_app().await;
    let health = app.health_addr.expect("--health-listen");
    for (listener, addr) in [("api", app.addr), ("health", health)] {
        // Four silent clients hold every slot of the listener…
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(silent_http2(addr).await);
        }
        // …for a few seconds only: unanswered PINGs close them.
        for stream in &mut silent {
            let closed = closed_within(stream, Duration::from_secs(6)).await;
            assert!(
                closed.is_some(),
                "{listener}: a silent HTTP/2 connection stayed open"
            );
        }
        // The slots are free again: a real client is served.
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert!(status.is_ok(), "{listener}: {status:?}");
    }
}

#[tokio::test]
async fn http1_connections_are_bounded_between_and_within_requests() {
    let app = bounded_app().await;
    let http = app.http_addr.expect("--http-listen");
    for (listener, addr, path) in [
        ("http", http, "/auth"),
        ("metrics", app.metrics_addr, "/metrics"),
    ] {
        // One request, answered, then the keep-alive connection goes silent.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        idle.write_all(request.as_bytes()).await.expect("write");
        let closed = closed_within(&mut idle, Duration::from_secs(6)).await;
        assert!(
            closed.is_some_and(|d| d >= Duration::from_millis(1500)),
            "{listener}: an idle keep-alive connection is closed after --idle-timeout: {closed:?}"
        );

        // The next request's head dribbled a byte every 300 ms: closed, though never silent
        // for long.
        let mut dribble = TcpStream::connect(addr).await.expect("connect");
        dribble
            .write_all(request.as_bytes())
            .await
            .expect("first request");
        let started = Instant::now();
        let head = format!("GET {path} HTTP/1.1\r\nX-Slow: {}", "a".repeat(40));
        let mut cut = false;
        for byte in head.as_bytes() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if dribble.write_all(&[*byte]).await.is_err() {
                cut = true;
                break;
            }
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        let closed = closed_within(&mut dribble, Duration::from_secs(2)).await;
        assert!(
            cut || closed.is_some(),
            "{listener}: a dribbled keep-alive head is cut"
        );
        assert!(started.elapsed() < Duration::from_secs(8), "{listener}");
    }

    // A body dribbled a byte every 300 ms: answered 408 (or cut) at --request-timeout.
    let mut body = TcpStream::connect(http).await.expect("connect");
    body.write_all(
        b"POST /oauth2/revoke HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\ntoken=",
    )
    .await
    .expect("head");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < Duration::from_secs(6) {
        if body.write_all(b"a").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), body.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") || started.elapsed() < Duration::from_secs(6),
        "a dribbled body is bounded by --request-timeout: {answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6), "{answer:?}");
}

#[tokio::test]
async fn one_peer_cannot_take_every_slot() {
    let app = Settings::new(Backend::Sqlite)
        .arg("--max-connections-per-peer", "2")
        .spawn()
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(silent_http2(app.addr).await);
    }
    let mut third = silent_http2(app.addr).await;
    let closed = closed_within(&mut third, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "a third connection from one address is closed at once"
    );
    crate::common::eventually(Duration::from_secs(2), "counted", || async {
        app.counter(r#"connections_refused_total{listener="api",why="peer_limit"}"#) >= 1
    })
    .await;
    drop(held);
    crate::common::eventually(Duration::from_secs(5), "the slots come back", || async {
        let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .expect("uri")
            .connect()
            .await
        else {
            return false;
        };
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
    })
    .await;
}
