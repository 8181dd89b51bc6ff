//! Tokens: keys, claims, and the one decode-and-validate path ([`decode_token`]); with the
//! runtime, the sidecar's codec around it (key reload, the verified-token cache, signing).
mod claims;
#[cfg(feature = "runtime")]
mod codec;
mod decode;
mod keys;
#[cfg(feature = "runtime")]
mod verified;

pub use claims::{Claims, RESERVED_CLAIMS, is_minted_id, new_random_id};
#[cfg(feature = "runtime")]
pub use codec::{CodecError, TokenCodec};
pub use decode::{MAX_TOKEN_BYTES, decode_token};
pub use keys::{
    KeyError, KeySet, KeySpec, MIN_RSA_BITS, SUPPORTED_ALGORITHMS, VerifyingKeys, read_key_files,
    rsa_modulus_bits, warn_about_exposed_keys,
};
#[cfg(feature = "runtime")]
pub use verified::{TokenDigest, VerifiedCache, VerifiedCacheMetrics, digest};
