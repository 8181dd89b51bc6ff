//! DPoP nonces the whole fleet accepts (RFC 9449 §8, SPEC §15): a nonce is a time step and a MAC
//! over it under a secret derived from the fleet's (SPEC §10), so any instance issues one and
//! every other instance checks it without a query or shared state. A nonce is good in the step
//! it was made in and the next: between one and two steps.
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How long one time step lasts.
pub const NONCE_STEP_MS: i64 = 30_000;

/// The MAC's length in a nonce (128 bits).
const MAC_BYTES: usize = 16;

/// The key nonces are made and checked with.
pub struct NonceKey {
    key: hmac::Key,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// A key from a fleet secret ([`crate::store::announcement::FleetKey::derive`]), or from
    /// random bytes for a lone instance.
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn mac(&self, step: i64) -> [u8; MAC_BYTES] {
        let tag = hmac::sign(&self.key, &step.to_be_bytes());
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
        mac
    }

    /// The nonce for the step `now_ms` (the fleet clock) lies in.
    pub fn current(&self, now_ms: i64) -> String {
        let step = now_ms.div_euclid(NONCE_STEP_MS);
        let mut bytes = Vec::with_capacity(8 + MAC_BYTES);
        bytes.extend_from_slice(&step.to_be_bytes());
        bytes.extend_from_slice(&self.mac(step));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `nonce` was made by this fleet in the step of `now_ms` or the one before.
    pub fn accepts(&self, nonce: &str, now_ms: i64) -> bool {
        if nonce.len() > 64 {
            return false;
        }
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Some((step, mac)) = bytes.split_first_chunk::<8>() else {
            return false;
        };
        let step = i64::from_be_bytes(*step);
        let now = now_ms.div_euclid(NONCE_STEP_MS);
        if step != now && step != now - 1 {
            return false;
        }
        // The truncated tag, compared in constant time.
        let expected = self.mac(step);
        mac.len() == MAC_BYTES
            && expected
                .iter()
                .zip(mac)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_for_its_step_and_the_next_on_any_instance_of_the_fleet() {
        let a = NonceKey::new(&[7; 32]);
        let b = NonceKey::new(&[7; 32]);
        let stranger = NonceKey::new(&[8; 32]);
        let nonce = a.current(1_000_000);
        assert!(b.accepts(&nonce, 1_000_000));
        assert!(b.accepts(&nonce, 1_000_000 + NONCE_STEP_MS));
        assert!(!b.accepts(&nonce, 1_000_000 + 2 * NONCE_STEP_MS), "stale");
        assert!(
            !b.accepts(&nonce, 1_000_000 - NONCE_STEP_MS),
            "from the future"
        );
        assert!(!stranger.accepts(&nonce, 1_000_000), "another fleet's");
        let mut forged = nonce.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(!b.accepts(&String::from_utf8(forged).unwrap_or_default(), 1_000_000));
        assert!(!b.accepts("", 1_000_000));
        assert!(!b.accepts("!!", 1_000_000));
    }
}
