//! The input checks, alone.
use super::*;
use crate::authority::MAX_USER_ID_BYTES;

#[test]
fn user_ids_are_bounded_and_printable() {
    assert!(parse_user_id("user_id", "alice".into()).is_ok());
    assert!(parse_user_id("user_id", "a".repeat(MAX_USER_ID_BYTES)).is_ok());
    assert!(
        parse_user_id("user_id", "jos\u{e9} d\u{200d}x".into()).is_ok(),
        "inner joiners are text"
    );
    for bad in [
        "",
        "   ",
        "a\nb",
        &"a".repeat(MAX_USER_ID_BYTES + 1),
        "\u{200B}",
        "\u{202E}\u{FEFF}",
        "\u{200B}alice",
        "alice\u{FEFF}",
        "\u{202E}alice",
        " alice",
        "alice\t",
        "alice\u{3000}",
    ] {
        assert!(
            parse_user_id("user_id", bad.to_string()).is_err(),
            "{bad:.20}"
        );
    }
}

#[test]
fn custom_claims_may_not_override_reserved_ones_or_be_huge() {
    let mut claims = Map::new();
    claims.insert("role".into(), Value::from("admin"));
    assert!(check_custom_claims(&claims).is_ok());
    for reserved in RESERVED_CLAIMS {
        let mut c = claims.clone();
        c.insert((*reserved).into(), Value::from(1));
        assert!(check_custom_claims(&c).is_err(), "{reserved}");
    }
    claims.insert(
        "blob".into(),
        Value::from("x".repeat(MAX_CUSTOM_CLAIMS_BYTES)),
    );
    assert!(check_custom_claims(&claims).is_err());
}
