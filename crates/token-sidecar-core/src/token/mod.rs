//! The token codec: keys, claims, and the one decode-and-validate path.
mod claims;
mod codec;
mod keys;
mod verified;

pub use claims::{Claims, RESERVED_CLAIMS, is_minted_id, new_random_id};
pub use codec::{CodecError, MAX_TOKEN_BYTES, TokenCodec};
pub use keys::{
    KeyError, KeySet, KeySpec, MIN_RSA_BITS, SUPPORTED_ALGORITHMS, read_key_files,
    warn_about_exposed_keys,
};
pub use verified::{TokenDigest, VerifiedCache, VerifiedCacheMetrics, digest};
