//! Shared Signals Framework receiver (OpenID SSF 1.0, push delivery RFC 8935): what a verified
//! Security Event Token (RFC 8417) asks for.
//!
//! | event | effect |
//! |---|---|
//! | CAEP `session-revoked` | the subject's IdP session (a complex subject's `session`), else all of the user's tokens |
//! | CAEP `credential-change` | all of the user's tokens |
//! | RISC `account-disabled` | a ban until `account-enabled` |
//! | RISC `account-enabled` | the ban lifted |
//! | RISC `account-purged`, `sessions-revoked` | all of the user's tokens |
//! | SSF `verification`, anything else | accepted and ignored (counted) |
//!
//! The subject is SSF 1.0's top-level `sub_id`, or (earlier drafts) the event's own `subject`.
//! Formats: `iss_sub` (its `iss` must be the transmitter's own), `opaque` (the `id`), `email`
//! only with `--ssf-email-subjects` (our user ids are addresses), `complex` with a `user` and
//! optionally a `session`. The user id is the transmitter's subject prefix + the subject, and a
//! session id is scoped the same way (SPEC §13: subjects belong to their issuer).
use serde_json::{Map, Value};

use super::IdpAction;
use super::event_token::EventError;
use crate::policy::user_id_problem;

/// The `typ` header values a SET may carry (or none).
pub const SET_TYPES: &[&str] = &["secevent+jwt"];

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// How one transmitter's subjects map to our user ids.
#[derive(Debug, Clone, Default)]
pub struct SubjectMapping {
    /// The transmitter's own `iss`: the only one an `iss_sub` subject may name.
    pub issuer: String,
    /// What is put before its subjects and session ids.
    pub prefix: String,
    /// Whether an `email` subject names a user (our user ids are addresses).
    pub email_is_user_id: bool,
}

impl SubjectMapping {
    fn scoped(&self, id: &str) -> Result<String, EventError> {
        let scoped = format!("{}{id}", self.prefix);
        match user_id_problem(&scoped) {
            None => Ok(scoped),
            Some(problem) => Err(EventError::Malformed(format!(
                "the subject with its prefix {problem}"
            ))),
        }
    }
}

/// What one event of a SET asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interpreted {
    /// A change to make.
    Act(IdpAction),
    /// An event type we do not act on (SSF's verification event included).
    Ignored(String),
}

/// What each event of a SET asks for, with its type.
pub fn interpret(
    claims: &Map<String, Value>,
    mapping: &SubjectMapping,
) -> Result<Vec<(String, Interpreted)>, EventError> {
    let malformed = |why: &str| EventError::Malformed(why.to_owned());
    let events = claims
        .get("events")
        .and_then(Value::as_object)
        .filter(|events| !events.is_empty())
        .ok_or_else(|| malformed("the events claim is missing or empty"))?;
    let mut out = Vec::with_capacity(events.len());
    for (event_type, event) in events {
        let event = event
            .as_object()
            .ok_or_else(|| malformed("an event is not a JSON object"))?;
        let subject = || {
            claims
                .get("sub_id")
                .or_else(|| event.get("subject"))
                .ok_or_else(|| malformed("the event names no subject (sub_id)"))
        };
        let name = event_type
            .strip_prefix(CAEP)
            .map(|n| ("caep", n))
            .or_else(|| event_type.strip_prefix(RISC).map(|n| ("risc", n)));
        let interpreted = match name {
            Some(("caep", "session-revoked")) => {
                let subject = Subject::parse(subject()?, mapping)?;
                match subject.session {
                    Some(sid) => Interpreted::Act(IdpAction::RevokeIdpSession {
                        sid,
                        user_id: subject.user_id,
                    }),
                    None => Interpreted::Act(IdpAction::RevokeUser {
                        user_id: subject.user()?,
                    }),
                }
            }
            Some(("caep", "credential-change"))
            | Some(("risc", "account-purged"))
            | Some(("risc", "sessions-revoked")) => Interpreted::Act(IdpAction::RevokeUser {
                user_id: Subject::parse(subject()?, mapping)?.user()?,
            }),
            Some(("risc", "account-disabled")) => Interpreted::Act(IdpAction::BanUser {
                user_id: Subject::parse(subject()?, mapping)?.user()?,
            }),
            Some(("risc", "account-enabled")) => Interpreted::Act(IdpAction::LiftBan {
                user_id: Subject::parse(subject()?, mapping)?.user()?,
            }),
            _ => Interpreted::Ignored(event_type.clone()),
        };
        out.push((event_type.clone(), interpreted));
    }
    Ok(out)
}

/// A subject, mapped: the user and the IdP session it names.
struct Subject {
    user_id: Option<String>,
    session: Option<String>,
}

impl Subject {
    fn user(self) -> Result<String, EventError> {
        self.user_id
            .ok_or_else(|| EventError::Malformed("the subject names no user".into()))
    }

    fn parse(value: &Value, mapping: &SubjectMapping) -> Result<Self, EventError> {
        let object = value
            .as_object()
            .ok_or_else(|| EventError::Malformed("the subject is not a JSON object".into()))?;
        let format = object.get("format").and_then(Value::as_str);
        match format {
            Some("complex") => {
                let user = match object.get("user") {
                    Some(user) => Self::parse(user, mapping)?.user_id,
                    None => None,
                };
                let session = match object.get("session") {
                    Some(session) => Some(mapping.scoped(&opaque_id(session)?)?),
                    None => None,
                };
                if user.is_none() && session.is_none() {
                    return Err(EventError::Malformed(
                        "a complex subject names neither a user nor a session".into(),
                    ));
                }
                Ok(Subject {
                    user_id: user,
                    session,
                })
            }
            _ => Ok(Subject {
                user_id: Some(mapping.scoped(&user_of(object, mapping)?)?),
                session: None,
            }),
        }
    }
}

fn member<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, EventError> {
    let value = object
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| EventError::Malformed(format!("the subject has no {name}")))?;
    match user_id_problem(value) {
        None => Ok(value),
        Some(problem) => Err(EventError::Malformed(format!(
            "the subject's {name} {problem}"
        ))),
    }
}

fn user_of(object: &Map<String, Value>, mapping: &SubjectMapping) -> Result<String, EventError> {
    match object.get("format").and_then(Value::as_str) {
        Some("iss_sub") => {
            let iss = member(object, "iss")?;
            if iss != mapping.issuer {
                return Err(EventError::Malformed(
                    "the subject's iss is not the transmitter's own: a transmitter speaks only \
                     for its own subjects"
                        .into(),
                ));
            }
            Ok(member(object, "sub")?.to_owned())
        }
        Some("opaque") => Ok(member(object, "id")?.to_owned()),
        Some("email") if mapping.email_is_user_id => Ok(member(object, "email")?.to_owned()),
        Some("email") => Err(EventError::Malformed(
            "email subjects are not mapped to users here (--ssf-email-subjects)".into(),
        )),
        Some(other) => Err(EventError::Malformed(format!(
            "the subject format {:?} is not supported (iss_sub, opaque, email, complex)",
            other.chars().take(32).collect::<String>()
        ))),
        None => Err(EventError::Malformed("the subject has no format".into())),
    }
}

fn opaque_id(value: &Value) -> Result<String, EventError> {
    let object = value
        .as_object()
        .ok_or_else(|| EventError::Malformed("the session subject is not an object".into()))?;
    match object.get("format").and_then(Value::as_str) {
        Some("opaque") => Ok(member(object, "id")?.to_owned()),
        _ => Err(EventError::Malformed(
            "a session subject has the opaque format".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> SubjectMapping {
        SubjectMapping {
            issuer: "https://idp".into(),
            prefix: String::new(),
            email_is_user_id: false,
        }
    }

    fn set(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn each_event_type_has_its_effect() {
        let iss_sub = json!({"format": "iss_sub", "iss": "https://idp", "sub": "alice"});
        let cases = [
            (
                "caep/event-type/credential-change",
                IdpAction::RevokeUser {
                    user_id: "alice".into(),
                },
            ),
            (
                "caep/event-type/session-revoked",
                IdpAction::RevokeUser {
                    user_id: "alice".into(),
                },
            ),
            (
                "risc/event-type/account-purged",
                IdpAction::RevokeUser {
                    user_id: "alice".into(),
                },
            ),
            (
                "risc/event-type/account-disabled",
                IdpAction::BanUser {
                    user_id: "alice".into(),
                },
            ),
            (
                "risc/event-type/account-enabled",
                IdpAction::LiftBan {
                    user_id: "alice".into(),
                },
            ),
        ];
        for (path, wanted) in cases {
            let event_type = format!("https://schemas.openid.net/secevent/{path}");
            let claims = set(json!({"sub_id": iss_sub, "events": { event_type.clone(): {} }}));
            assert_eq!(
                interpret(&claims, &mapping()),
                Ok(vec![(event_type, Interpreted::Act(wanted))])
            );
        }
        let session = json!({"format": "complex",
            "user": {"format": "opaque", "id": "bob"},
            "session": {"format": "opaque", "id": "idp-session-1"}});
        let revoked = format!("{CAEP}session-revoked");
        let claims = set(json!({"events": { revoked.clone(): {"subject": session} }}));
        assert_eq!(
            interpret(&claims, &mapping()),
            Ok(vec![(
                revoked,
                Interpreted::Act(IdpAction::RevokeIdpSession {
                    sid: "idp-session-1".into(),
                    user_id: Some("bob".into())
                })
            )])
        );
        let verification = "https://schemas.openid.net/secevent/ssf/event-type/verification";
        let claims = set(json!({"events": { verification: {"state": "x"} }}));
        assert_eq!(
            interpret(&claims, &mapping()),
            Ok(vec![(
                verification.to_owned(),
                Interpreted::Ignored(verification.to_owned())
            )])
        );
    }

    #[test]
    fn subjects_map_only_as_configured() {
        let revoke = format!("{CAEP}credential-change");
        let with =
            |subject: Value| set(json!({"sub_id": subject, "events": { revoke.clone(): {} }}));
        let email = json!({"format": "email", "email": "a@example.com"});
        assert!(interpret(&with(email.clone()), &mapping()).is_err());
        let mut by_email = mapping();
        by_email.email_is_user_id = true;
        assert!(interpret(&with(email), &by_email).is_ok());
        let foreign = json!({"format": "iss_sub", "iss": "https://other", "sub": "alice"});
        assert!(interpret(&with(foreign), &mapping()).is_err());
        assert!(
            interpret(
                &with(json!({"format": "phone_number", "phone_number": "+1"})),
                &mapping()
            )
            .is_err()
        );
        assert!(interpret(&with(json!({"format": "opaque", "id": ""})), &mapping()).is_err());
        assert!(interpret(&set(json!({"events": { revoke.clone(): {} }})), &mapping()).is_err());
    }

    #[test]
    fn subjects_and_sessions_take_the_transmitters_prefix() {
        let prefixed = SubjectMapping {
            prefix: "a:".into(),
            ..mapping()
        };
        let revoked = format!("{CAEP}session-revoked");
        let subject = json!({"format": "complex",
            "user": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"},
            "session": {"format": "opaque", "id": "s1"}});
        let claims = set(json!({"sub_id": subject, "events": { revoked.clone(): {} }}));
        assert_eq!(
            interpret(&claims, &prefixed),
            Ok(vec![(
                revoked,
                Interpreted::Act(IdpAction::RevokeIdpSession {
                    sid: "a:s1".into(),
                    user_id: Some("a:alice".into())
                })
            )])
        );
        // Another trusted issuer's subject, named by this transmitter: refused.
        let other = json!({"format": "iss_sub", "iss": "https://other-trusted", "sub": "bob"});
        let change = format!("{CAEP}credential-change");
        let claims = set(json!({"sub_id": other, "events": { change: {} }}));
        assert!(interpret(&claims, &prefixed).is_err());
    }
}
