//! Ids parsed at the edge: a request's `user_id` becomes a [`UserId`], a `jti` or `session_id`
//! a [`MintedId`], once; the use cases take the types and never see an unchecked string.
use crate::policy::user_id_problem;
use crate::token::is_minted_id;

/// A user id that passed [`user_id_problem`]'s checks: 1 to 256 bytes, no control characters,
/// no whitespace or invisible characters at either end. Compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// The id, or what is wrong with it.
    pub fn parse(raw: impl Into<String>) -> Result<Self, String> {
        let raw = raw.into();
        match user_id_problem(&raw) {
            None => Ok(Self(raw)),
            Some(problem) => Err(problem),
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> Self {
        id.0
    }
}

/// A token or session id of the shape this service mints: 22 base64url characters encoding
/// exactly 128 bits. Anything else names no token or session of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MintedId(String);

impl MintedId {
    /// What a malformed id is told.
    pub const PROBLEM: &str = "is not an id this service mints (22 base64url characters, 128 bits)";

    /// The id, or why it cannot be one of ours.
    pub fn parse(raw: impl Into<String>) -> Result<Self, &'static str> {
        let raw = raw.into();
        if is_minted_id(&raw) {
            Ok(Self(raw))
        } else {
            Err(Self::PROBLEM)
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<MintedId> for String {
    fn from(id: MintedId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_parsed_once_at_the_edge() {
        assert_eq!(
            UserId::parse("alice").map(String::from),
            Ok("alice".to_owned())
        );
        assert!(UserId::parse(" alice").is_err());
        assert!(UserId::parse("").is_err());
        let minted = crate::token::new_random_id();
        assert_eq!(
            MintedId::parse(minted.clone()).map(String::from),
            Ok(minted)
        );
        for bad in ["", "null", "AAAAAAAAAAAAAAAAAAAAAB"] {
            assert_eq!(MintedId::parse(bad), Err(MintedId::PROBLEM));
        }
    }
}
