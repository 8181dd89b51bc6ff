//! How a committed change is announced to the other instances — the NOTIFY payload in PostgreSQL
//! and the NATS message body alike — so that they can apply it without asking the database:
//!
//! ```text
//! 1 <seq> <committed_ms> cutoff <cutoff_ms> <user_id>
//! 1 <seq> <committed_ms> jti|sid <moot_after_ms> <id>
//! ```
//!
//! The id comes last and is taken whole, so user ids with inner spaces travel unchanged. A
//! payload that does not parse (another version's, or a bare number) still says "something
//! changed": the receiver catches up from the store.
use super::{Change, DenyKind};

/// The format's version, the payload's first field.
const VERSION: &str = "1";

/// The payload announcing `change`.
pub fn encode(change: &Change) -> String {
    match change {
        Change::Cutoff {
            seq,
            committed_ms,
            user_id,
            cutoff_ms,
        } => format!("{VERSION} {seq} {committed_ms} cutoff {cutoff_ms} {user_id}"),
        Change::Denied {
            seq,
            committed_ms,
            kind,
            id,
            moot_after_ms,
        } => format!(
            "{VERSION} {seq} {committed_ms} {} {moot_after_ms} {id}",
            kind.as_str()
        ),
    }
}

/// The change a payload announces, or None if it is not one this version understands.
pub fn decode(payload: &str) -> Option<Change> {
    let mut fields = payload.splitn(6, ' ');
    if fields.next()? != VERSION {
        return None;
    }
    let seq = fields.next()?.parse().ok()?;
    let committed_ms = fields.next()?.parse().ok()?;
    let kind = fields.next()?;
    let value = fields.next()?.parse().ok()?;
    let id = fields.next()?;
    if id.is_empty() || seq <= 0 {
        return None;
    }
    let id = id.to_owned();
    Some(match kind {
        "cutoff" => Change::Cutoff {
            seq,
            committed_ms,
            user_id: id,
            cutoff_ms: value,
        },
        "jti" | "sid" => Change::Denied {
            seq,
            committed_ms,
            kind: if kind == "jti" {
                DenyKind::Token
            } else {
                DenyKind::Session
            },
            id,
            moot_after_ms: value,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_survives_the_trip() {
        let changes = [
            Change::Cutoff {
                seq: 7,
                committed_ms: 1_764_000_000_123,
                user_id: "user with spaces inside".into(),
                cutoff_ms: -5,
            },
            Change::Denied {
                seq: 8,
                committed_ms: 0,
                kind: DenyKind::Token,
                id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
                moot_after_ms: 1_764_000_600_000,
            },
            Change::Denied {
                seq: i64::MAX,
                committed_ms: 1,
                kind: DenyKind::Session,
                id: "s".into(),
                moot_after_ms: 2,
            },
        ];
        for change in changes {
            assert_eq!(decode(&encode(&change)), Some(change));
        }
    }

    #[test]
    fn what_is_not_an_announcement_is_refused() {
        for payload in [
            "",
            "42",
            "2 1 0 cutoff 5 u",
            "1 x 0 cutoff 5 u",
            "1 1 0 cutoff 5",
            "1 1 0 cutoff 5 ",
            "1 1 0 ban 5 u",
            "1 0 0 jti 5 u",
            "1 -3 0 jti 5 u",
        ] {
            assert_eq!(decode(payload), None, "{payload:?}");
        }
    }
}
