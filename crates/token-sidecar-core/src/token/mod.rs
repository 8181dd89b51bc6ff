//! Tokens: keys, claims, and the one decode-and-validate path ([`decode_token`]); with the
//! runtime, the sidecar's codec around it (key reload, the verified-token cache, signing).
mod algorithms;
mod claims;
#[cfg(feature = "runtime")]
mod codec;
mod decode;
mod key_error;
mod keys;
mod provider_keys;
mod rsa;
pub mod trusted;
#[cfg(feature = "runtime")]
mod verified;
mod verifying;

pub use algorithms::SUPPORTED_ALGORITHMS;
pub use claims::{Claims, RESERVED_CLAIMS, is_minted_id, new_random_id};
#[cfg(feature = "runtime")]
pub use codec::{CodecError, TokenCodec};
pub use decode::{MAX_TOKEN_BYTES, decode_token};
pub use keys::{KeyError, KeySet, KeySpec, read_key_files, warn_about_exposed_keys};
pub use provider_keys::{ProviderKey, ProviderKeySet};
pub use rsa::{MIN_RSA_BITS, rsa_modulus_bits};
pub use trusted::{Audience, IssuerTrust, TrustedIssuers};
#[cfg(feature = "runtime")]
pub use verified::{TokenDigest, VerifiedCache, VerifiedCacheMetrics, digest};
pub use verifying::VerifyingKeys;
