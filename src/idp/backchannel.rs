//! OpenID Connect Back-Channel Logout 1.0: what a verified logout token asks for.
//!
//! A logout token carries `events` with the back-channel logout member (an object), a `sid`
//! and/or a `sub`, and never a `nonce` (so that an ID token cannot pass for one). With a `sid`
//! the provider ended one session: exactly the tokens minted for it are revoked. With only a
//! `sub` it logged the user out everywhere: the user's cutoff becomes now. Keycloak's shape is
//! accepted too (`typ: logout+jwt` or `JWT`, a `typ: Logout` claim, `exp`, a
//! `revoke_offline_access` member inside the event).
use serde_json::{Map, Value};

use super::IdpAction;
use super::event_token::EventError;
use crate::policy::user_id_problem;

/// The event member every logout token carries.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The `typ` header values a logout token may carry (or none).
pub const LOGOUT_TYPES: &[&str] = &["logout+jwt", "jwt"];

/// What a logout token asks for; the provider's `sub` and `sid` are scoped by its subject
/// `prefix` (SPEC §13).
pub fn interpret(claims: &Map<String, Value>, prefix: &str) -> Result<IdpAction, EventError> {
    let malformed = |why: &str| EventError::Malformed(why.to_owned());
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(LOGOUT_EVENT))
        .ok_or_else(|| malformed("the events claim has no back-channel logout member"))?;
    if !event.is_object() {
        return Err(malformed(
            "the back-channel logout event is not a JSON object",
        ));
    }
    if claims.contains_key("nonce") {
        return Err(malformed("a logout token must not carry a nonce"));
    }
    let text = |name: &str| -> Result<Option<String>, EventError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => {
                let scoped = format!("{prefix}{s}");
                match user_id_problem(&scoped) {
                    None => Ok(Some(scoped)),
                    Some(problem) => Err(EventError::Malformed(format!("{name} {problem}"))),
                }
            }
            Some(_) => Err(EventError::Malformed(format!("{name} is not a string"))),
        }
    };
    let (sid, sub) = (text("sid")?, text("sub")?);
    match (sid, sub) {
        (Some(sid), user_id) => Ok(IdpAction::RevokeIdpSession { sid, user_id }),
        (None, Some(user_id)) => Ok(IdpAction::RevokeUser { user_id }),
        (None, None) => Err(malformed("a logout token names a sid, a sub or both")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn interpret_plain(claims: &Map<String, Value>) -> Result<IdpAction, EventError> {
        interpret(claims, "")
    }

    #[test]
    fn the_providers_prefix_scopes_its_subjects_and_sessions() {
        let events = json!({ LOGOUT_EVENT: {} });
        assert_eq!(
            interpret(
                &claims(json!({"events": events, "sid": "s1", "sub": "alice"})),
                "kc:"
            ),
            Ok(IdpAction::RevokeIdpSession {
                sid: "kc:s1".into(),
                user_id: Some("kc:alice".into())
            })
        );
    }

    #[test]
    fn a_sid_ends_one_idp_session_and_a_sub_alone_ends_them_all() {
        let events = json!({ LOGOUT_EVENT: {} });
        assert_eq!(
            interpret_plain(&claims(
                json!({"events": events, "sid": "s1", "sub": "alice"})
            )),
            Ok(IdpAction::RevokeIdpSession {
                sid: "s1".into(),
                user_id: Some("alice".into())
            })
        );
        assert_eq!(
            interpret_plain(&claims(json!({"events": events, "sub": "alice"}))),
            Ok(IdpAction::RevokeUser {
                user_id: "alice".into()
            })
        );
        // Keycloak's extra member inside the event.
        let keycloak = json!({ LOGOUT_EVENT: {"revoke_offline_access": true} });
        assert!(interpret_plain(&claims(json!({"events": keycloak, "sid": "s"}))).is_ok());
    }

    #[test]
    fn what_is_not_a_logout_token_is_refused() {
        let events = json!({ LOGOUT_EVENT: {} });
        for bad in [
            json!({"sid": "s"}),
            json!({"events": {}, "sid": "s"}),
            json!({"events": { LOGOUT_EVENT: "x" }, "sid": "s"}),
            json!({"events": events, "sid": "s", "nonce": "n"}),
            json!({"events": events}),
            json!({"events": events, "sub": ""}),
            json!({"events": events, "sid": 7}),
        ] {
            assert!(interpret_plain(&claims(bad.clone())).is_err(), "{bad}");
        }
    }
}
