//! The use case behind both routes: verify the event, refuse a replay, act through the
//! authority (which records who and why in the audit trail), remember the `jti`.
//!
//! The `jti` is remembered after the action, in the store, so that a replay is refused on every
//! instance; an action that failed leaves nothing remembered and the provider's retry is
//! accepted. (Two copies delivered at the same instant may both act: every action is
//! idempotent but revoke-all, which then moves the cutoff by the milliseconds between them.)
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::budget::SenderBudget;
use super::event_token::{EVENT_LEEWAY_MS, EventError, EventVerifier, MAX_EVENT_AGE_MS};
use super::jwks::ProviderKeys;
use super::ssf::{Interpreted, SubjectMapping};
use super::{IdpAction, TrustedIssuer, backchannel, ssf};
use crate::authority::{
    AuthorityError, Cause, LiftOutcome, RevokeTarget, TokenAuthority, parse_user_id,
};
use crate::clock::Clock;
use crate::metrics::Ignored;

/// The receivers' configuration.
#[derive(Debug, Clone, Default)]
pub struct IdpSettings {
    /// Issuers whose logout tokens are accepted (`--oidc-issuer`).
    pub oidc_issuers: Vec<TrustedIssuer>,
    /// The `aud` logout tokens carry (`--oidc-client-id`).
    pub oidc_client_id: Option<String>,
    /// Transmitters whose SETs are accepted (`--ssf-transmitter`).
    pub ssf_transmitters: Vec<TrustedIssuer>,
    /// The `aud` SETs carry (`--ssf-audience`).
    pub ssf_audience: Option<String>,
    /// Whether an `email` subject names a user (`--ssf-email-subjects`).
    pub ssf_email_subjects: bool,
    /// Issuers whose access tokens are verified (`--trusted-issuer`; not a receiver, but their
    /// subjects share the prefixes' rule).
    pub token_issuers: Vec<super::token_issuers::TokenIssuer>,
}

impl IdpSettings {
    /// Whether either receiver is configured.
    pub fn any(&self) -> bool {
        !self.oidc_issuers.is_empty() || !self.ssf_transmitters.is_empty()
    }
}

/// Why an event was not acted on.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The receiver is not configured.
    #[error("this receiver is not configured")]
    NotConfigured,
    /// The event was refused; nothing was stored.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The action could not be made (the store did not answer); nothing is remembered, so the
    /// sender's retry is accepted.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// The sender's key or signature was refused once too often: slow down.
    #[error("too many refused events from this source; retry later")]
    RateLimited,
}

/// What an accepted event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender (`backchannel:<iss>` or `ssf:<iss>`).
    pub who: String,
    /// Each event's type and what it did (None: ignored).
    pub effects: Vec<(String, Option<IdpAction>)>,
}

/// Receives identity providers' events.
pub struct IdpReceiver {
    authority: Arc<TokenAuthority>,
    backchannel: Option<EventVerifier>,
    ssf: Option<EventVerifier>,
    /// Each issuer's subject prefix.
    prefixes: HashMap<String, String>,
    email_is_user_id: bool,
    logout_budget: SenderBudget,
    ssf_budget: SenderBudget,
}

fn verifier(
    issuers: &[TrustedIssuer],
    audience: Option<&String>,
    types: &'static [&'static str],
    keys: &mut HashMap<String, Arc<ProviderKeys>>,
    clock: &Arc<dyn Clock>,
) -> Option<EventVerifier> {
    let audience = audience?;
    if issuers.is_empty() {
        return None;
    }
    let trusted = issuers
        .iter()
        .map(|t| {
            // One cache per key source, shared when an issuer is both an OP and a transmitter.
            let shared = keys
                .entry(t.source.to_string())
                .or_insert_with(|| Arc::new(ProviderKeys::new(t.source.clone(), clock.clone())))
                .clone();
            (t.issuer.clone(), shared)
        })
        .collect();
    Some(EventVerifier::new(trusted, audience.clone(), types))
}

impl IdpReceiver {
    /// Receivers for what `settings` configures, acting through `authority`; key sets age on
    /// `clock`'s monotonic time.
    pub fn new(
        authority: Arc<TokenAuthority>,
        settings: &IdpSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut keys = HashMap::new();
        let backchannel = verifier(
            &settings.oidc_issuers,
            settings.oidc_client_id.as_ref(),
            backchannel::LOGOUT_TYPES,
            &mut keys,
            &clock,
        );
        let ssf = verifier(
            &settings.ssf_transmitters,
            settings.ssf_audience.as_ref(),
            ssf::SET_TYPES,
            &mut keys,
            &clock,
        );
        let prefixes = settings
            .ssf_transmitters
            .iter()
            .chain(&settings.oidc_issuers)
            .map(|t| (t.issuer.clone(), t.subject_prefix.clone()))
            .collect();
        Self {
            authority,
            backchannel,
            ssf,
            prefixes,
            email_is_user_id: settings.ssf_email_subjects,
            logout_budget: SenderBudget::new(clock.clone()),
            ssf_budget: SenderBudget::new(clock),
        }
    }

    fn prefix(&self, issuer: &str) -> &str {
        self.prefixes.get(issuer).map_or("", String::as_str)
    }

    /// The cheap checks (free), then the signature; a refused key or signature is charged to
    /// the sender's budget, and answered [`ReceiveError::RateLimited`] once it is spent. A
    /// verified event is never limited.
    async fn verified(
        verifier: &EventVerifier,
        budget: &SenderBudget,
        token: &str,
        source: Option<IpAddr>,
        now: crate::clock::UnixMillis,
    ) -> Result<super::event_token::VerifiedEvent, ReceiveError> {
        let unverified = verifier.precheck(token, now)?;
        match verifier.verify_signature(unverified, now).await {
            Ok(event) => Ok(event),
            Err(refused @ EventError::BadKey(_)) => {
                if budget.charge(source) {
                    Err(refused.into())
                } else {
                    Err(ReceiveError::RateLimited)
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Whether back-channel logout is configured.
    pub fn has_backchannel(&self) -> bool {
        self.backchannel.is_some()
    }

    /// Whether the Shared Signals receiver is configured.
    pub fn has_ssf(&self) -> bool {
        self.ssf.is_some()
    }

    /// An OIDC logout token (the `logout_token` form parameter) sent from `source`.
    pub async fn logout(
        &self,
        token: &str,
        source: Option<IpAddr>,
    ) -> Result<Received, ReceiveError> {
        let verifier = self
            .backchannel
            .as_ref()
            .ok_or(ReceiveError::NotConfigured)?;
        let now = self.authority.now_ms();
        let event = Self::verified(verifier, &self.logout_budget, token, source, now).await?;
        let action = backchannel::interpret(&event.claims, self.prefix(&event.issuer))?;
        let who = format!("backchannel:{}", event.issuer);
        self.refuse_replay(&who, &event.jti).await?;
        self.act(
            &action,
            &Cause::new(&who, Some(backchannel::LOGOUT_EVENT.into())),
        )
        .await?;
        self.remember(&who, &event).await;
        Ok(Received {
            who,
            effects: vec![(backchannel::LOGOUT_EVENT.to_owned(), Some(action))],
        })
    }

    /// A Security Event Token (the body of an RFC 8935 push) sent from `source`.
    pub async fn security_event(
        &self,
        set: &str,
        source: Option<IpAddr>,
    ) -> Result<Received, ReceiveError> {
        let verifier = self.ssf.as_ref().ok_or(ReceiveError::NotConfigured)?;
        let now = self.authority.now_ms();
        let event = Self::verified(verifier, &self.ssf_budget, set, source, now).await?;
        let mapping = SubjectMapping {
            issuer: event.issuer.clone(),
            prefix: self.prefix(&event.issuer).to_owned(),
            email_is_user_id: self.email_is_user_id,
        };
        let interpreted = ssf::interpret(&event.claims, &mapping)?;
        let who = format!("ssf:{}", event.issuer);
        self.refuse_replay(&who, &event.jti).await?;
        let mut effects = Vec::with_capacity(interpreted.len());
        for (event_type, meaning) in interpreted {
            match meaning {
                Interpreted::Act(action) => {
                    let acted = self
                        .act(&action, &Cause::new(&who, Some(event_type.clone())))
                        .await?;
                    effects.push((event_type, acted.then_some(action)));
                }
                Interpreted::Ignored(_) => {
                    self.ignored(Ignored::EventType);
                    effects.push((event_type, None));
                }
            }
        }
        self.remember(&who, &event).await;
        Ok(Received { who, effects })
    }

    async fn refuse_replay(&self, who: &str, jti: &str) -> Result<(), ReceiveError> {
        let seen = self
            .authority
            .revocations()
            .event_seen(who, jti)
            .await
            .map_err(AuthorityError::from)?;
        if seen {
            return Err(EventError::Replayed.into());
        }
        Ok(())
    }

    /// Remembers the event for as long as it could be accepted. A failure is logged, not
    /// answered: the action is done.
    async fn remember(&self, who: &str, event: &super::event_token::VerifiedEvent) {
        let moot_after_ms = event.issued_at_ms + MAX_EVENT_AGE_MS + EVENT_LEEWAY_MS;
        if let Err(e) = self
            .authority
            .revocations()
            .remember_event(who, &event.jti, moot_after_ms)
            .await
        {
            tracing::warn!(error = %e, who, "a received event could not be remembered; its replay would be acted on again");
        }
    }

    fn ignored(&self, why: Ignored) {
        self.authority
            .revocations()
            .metrics()
            .security
            .idp_event_ignored(why);
    }

    /// Makes the change `action` asks for; false when it was not the sender's to make (a ban
    /// lifted by a transmitter that did not set it: counted, logged, and left in place).
    async fn act(&self, action: &IdpAction, cause: &Cause) -> Result<bool, AuthorityError> {
        // The events' ids were checked like the API's; parsed here into the use cases' types.
        let user = |raw: &str| parse_user_id("sub", raw.to_owned());
        match action {
            IdpAction::RevokeIdpSession { sid, user_id } => {
                let user_id = user_id.as_deref().map(user).transpose()?;
                self.authority
                    .revoke_idp_session(sid, user_id.as_ref(), cause)
                    .await?;
            }
            IdpAction::RevokeUser { user_id } => {
                self.authority
                    .revoke(
                        RevokeTarget::User {
                            user_id: user(user_id)?,
                            until_ms: None,
                        },
                        cause,
                    )
                    .await?;
            }
            IdpAction::BanUser { user_id } => {
                self.authority
                    .ban_indefinitely(&user(user_id)?, cause)
                    .await?;
            }
            IdpAction::LiftBan { user_id } => {
                let lifted = self.authority.lift_own_ban(&user(user_id)?, cause).await?;
                if lifted == LiftOutcome::NotOwner {
                    self.ignored(Ignored::NotOwner);
                    tracing::warn!(
                        who = %cause.who,
                        "identity provider event ignored: account-enabled for a ban another \
                         party set (the operator's LiftBan lifts it)"
                    );
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
