//! The flags' value parsers: addresses, keys, durations, rates.
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::token::KeySpec;

pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

pub(super) fn parse_key(s: &str) -> Result<KeySpec, String> {
    s.parse().map_err(|e: crate::token::KeyError| e.to_string())
}

/// Parses durations like `250ms`, `30s`, `5m`, `1h`, `7d`, or sums like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 30s, 5m, 1h, 7d, 1h30m, 250ms)");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .filter(|ms| *ms <= i64::MAX as u64 / 4)
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total_ms))
}

pub(super) fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r < 0.5 => Ok(r),
        _ => Err(format!("{s:?} is not a rate between 0 and 0.5 (e.g. 0.01)")),
    }
}

pub(super) fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?} is too short: at least 10ms"));
    }
    Ok(d)
}

pub(super) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short: at least 1s"));
    }
    Ok(d)
}

/// An `--issuer-jwks` value: a URL (checked as the identity providers' are) or a file.
pub(super) fn parse_jwks_source(s: &str) -> Result<crate::idp::jwks::JwksSource, String> {
    crate::idp::jwks::JwksSource::parse(s)
}
