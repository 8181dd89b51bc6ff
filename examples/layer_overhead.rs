//! What `VerifyLayer` adds to a request, from one caller: N sequential requests through the layer
//! (wrapping a handler that does nothing) against N direct `SidecarClient::verify` calls, both
//! with the same token on the same running sidecar, alternated twice; prints JSON.
//!
//!   cargo run --release --example layer_overhead -- http://127.0.0.1:50051 TOKEN
use std::time::{Duration, Instant};

use token_sidecar_api::client::{SidecarClient, VerifyLayer};
use tower::{Layer, ServiceExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let token = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: URI TOKEN [N]"))?;
    let n: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let client = SidecarClient::connect_lazy(&uri)?;
    let handler = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let protected = VerifyLayer::new(client.clone()).layer(handler);
    let bearer = format!("Bearer {token}");
    let (mut direct, mut layered) = (Duration::MAX, Duration::MAX);
    for _ in 0..2 {
        let started = Instant::now();
        for _ in 0..n {
            let answer = client.verify(&token).await?;
            anyhow::ensure!(answer.valid, "the token must be valid");
        }
        direct = direct.min(started.elapsed());
        let started = Instant::now();
        for _ in 0..n {
            let request = http::Request::builder()
                .header("authorization", &bearer)
                .body(())?;
            let response = protected.clone().oneshot(request).await?;
            anyhow::ensure!(response.status() == 200, "allowed");
        }
        layered = layered.min(started.elapsed());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "{{\"requests\": {n}, \"direct_us\": {:.2}, \"layer_us\": {:.2}, \"ratio\": {:.3}}}",
        per(direct),
        per(layered),
        layered.as_secs_f64() / direct.as_secs_f64()
    );
    Ok(())
}
