//! The token authority: the use cases (issue, verify, refresh, revoke, ban) over the codec, the
//! revocation policy and the store. It knows nothing of gRPC; the gRPC layer translates to it.
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::clock::{Clock, UnixMillis};
use crate::error_code::ErrorCode;
use crate::fleet_clock;
use crate::ids::{MintedId, UserId};
use crate::policy::{ClockCheck, RevocationPolicy, Superseded, TokenTimes, user_id_problem};
use crate::reason::Reason;
use crate::revocations::Revocations;
use crate::store::{
    Audit, AuditAction, AuditQuery, AuditRecord, DenyEntry, DenyKind, Rotation, RotationOutcome,
    SessionHead,
};
use crate::token::{Claims, TokenCodec, new_random_id};

mod input;
mod revoke;
mod sender;
mod types;

use input::{check_custom_claims, check_reason, invalid};
pub use input::{parse_minted_id, parse_user_id};
pub use types::*;

/// Issues, verifies, refreshes and revokes tokens.
pub struct TokenAuthority {
    codec: TokenCodec,
    policy: RevocationPolicy,
    revocations: Arc<Revocations>,
    clock: Arc<dyn Clock>,
    /// The identity providers' subject prefixes: an IdP session id given to Issue is scoped
    /// by the prefix its user id starts with (SPEC §13). Empty: no identity provider.
    idp_prefixes: Vec<String>,
    /// Set in a verify-only sidecar: who issues instead (said in every refusal).
    issuing_service: Option<String>,
    /// Proofs of possession for sender-constrained tokens (SPEC §15).
    sender: sender::SenderGuard,
}

impl TokenAuthority {
    /// An authority that answers once `revocations` has been loaded.
    pub fn new(
        codec: TokenCodec,
        policy: RevocationPolicy,
        revocations: Arc<Revocations>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            codec,
            policy,
            revocations,
            clock,
            idp_prefixes: Vec::new(),
            issuing_service: None,
            sender: sender::SenderGuard::default(),
        }
    }

    /// Makes this a verify-only authority: Issue and Refresh (and, at the API, the privileged
    /// writes) are refused, naming `issuing_service` as where to go instead.
    pub fn verify_only(mut self, issuing_service: String) -> Self {
        self.issuing_service = Some(issuing_service);
        self
    }

    /// Refuses `operation` in a verify-only sidecar.
    pub fn refuse_if_verify_only(&self, operation: &'static str) -> Result<(), AuthorityError> {
        match &self.issuing_service {
            None => Ok(()),
            Some(issuing_service) => Err(AuthorityError::VerifyOnly {
                operation,
                issuing_service: issuing_service.clone(),
            }),
        }
    }

    /// Scopes IdP session ids by the identity providers' subject prefixes (`""` for a single
    /// provider without one): Issue's `idp_session_id` for user `P + sub` is kept as `P + sid`,
    /// what that provider's logout revokes, so that two providers' session ids never collide.
    pub fn with_idp_prefixes(mut self, prefixes: Vec<String>) -> Self {
        self.idp_prefixes = prefixes;
        self
    }

    /// The IdP session id a token of `user_id` carries for the provider's `sid`.
    fn scoped_idp_session(&self, user_id: &UserId, sid: String) -> Result<String, AuthorityError> {
        if self.idp_prefixes.is_empty() {
            return Ok(sid);
        }
        let prefix = self
            .idp_prefixes
            .iter()
            .filter(|p| user_id.as_str().starts_with(p.as_str()))
            .max_by_key(|p| p.len())
            .ok_or_else(|| {
                invalid(
                    "idp_session_id",
                    ErrorCode::InvalidIdpSessionId,
                    "the user id starts with no identity provider's subject prefix, so the \
                     session cannot be theirs",
                )
            })?;
        let scoped = format!("{prefix}{sid}");
        match user_id_problem(&scoped) {
            None => Ok(scoped),
            Some(problem) => Err(invalid(
                "idp_session_id",
                ErrorCode::InvalidIdpSessionId,
                problem,
            )),
        }
    }

    /// Whether the store has been migrated and the caches loaded.
    fn is_ready(&self) -> bool {
        self.revocations.is_loaded()
    }

    /// The revocation state behind this authority.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The policy in force.
    pub fn policy(&self) -> &RevocationPolicy {
        &self.policy
    }

    /// The injected clock's current time.
    pub fn now_ms(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// Rule 9: only an instance whose clock is within the tolerance of the fleet's mints. The
    /// times it stamps are the fleet's anyway; refusing makes a broken clock visible at once.
    async fn check_clock(&self) -> Result<(), AuthorityError> {
        let mut check = self.policy.check_clock(self.clock.skew_ms());
        if check == ClockCheck::Unread {
            let good_enough_us = fleet_clock::good_enough_us(self.policy.max_clock_skew_ms);
            fleet_clock::read(
                self.revocations.store().as_ref(),
                self.clock.as_ref(),
                good_enough_us,
            )
            .await?;
            check = self.policy.check_clock(self.clock.skew_ms());
        }
        match check {
            ClockCheck::InStep => Ok(()),
            ClockCheck::Unread => Err(AuthorityError::ClockUnread),
            ClockCheck::Skewed { skew_ms } => {
                self.revocations.metrics().clock.refusals.inc();
                Err(AuthorityError::ClockSkew {
                    skew_ms,
                    max_ms: self.policy.max_clock_skew_ms,
                })
            }
        }
    }

    fn store_ready(&self) -> Result<&Revocations, AuthorityError> {
        if self.is_ready() {
            Ok(self.revocations.as_ref())
        } else {
            Err(AuthorityError::NotReady)
        }
    }

    /// Issues the first token of a new session (SPEC §4 rule 3).
    pub async fn issue(&self, mut request: IssueRequest) -> Result<IssuedToken, AuthorityError> {
        self.refuse_if_verify_only("Issue")?;
        check_custom_claims(&request.claims)?;
        if let Some(idp_sid) = &request.idp_session_id
            && let Some(problem) = user_id_problem(idp_sid)
        {
            return Err(invalid(
                "idp_session_id",
                ErrorCode::InvalidIdpSessionId,
                problem,
            ));
        }
        if let Some(idp_sid) = request.idp_session_id.take() {
            request.idp_session_id = Some(self.scoped_idp_session(&request.user_id, idp_sid)?);
        }
        let binding = crate::sender::Binding {
            jkt: request.dpop_jkt.take(),
            x5t_s256: request.x5t_s256.take(),
        };
        for (field, value) in [("dpop_jkt", &binding.jkt), ("x5t_s256", &binding.x5t_s256)] {
            if let Some(problem) = value.as_deref().and_then(crate::sender::thumbprint_problem) {
                return Err(invalid(field, ErrorCode::InvalidThumbprint, problem));
            }
        }
        if let Some(ttl) = request.ttl_ms
            && ttl < MIN_TTL_MS
        {
            return Err(invalid(
                "ttl",
                ErrorCode::InvalidTtl,
                "ttl must be at least 1s",
            ));
        }
        let store = self.store_ready()?;
        self.check_clock().await?;
        let cutoff = store.cutoff(request.user_id.as_str()).await?;
        if let Some(idp_sid) = &request.idp_session_id
            && store.is_denied(DenyKind::IdpSession, idp_sid).await?
        {
            return Err(AuthorityError::IdpSessionEnded);
        }
        let now = self.clock.now_ms();
        // Rule 9: a mint time is never later than the moment of minting.
        let mint_at = self.clock.earliest_ms();
        let orig_iat_ms =
            RevocationPolicy::new_session_start(cutoff, now, mint_at).map_err(|_| {
                AuthorityError::Banned {
                    until_ms: cutoff.unwrap_or(now),
                }
            })?;
        let times = self
            .policy
            .token_times(orig_iat_ms, mint_at, request.ttl_ms)
            .map_err(|_| {
                invalid(
                    "ttl",
                    ErrorCode::InvalidTtl,
                    "the token would expire at once",
                )
            })?;
        self.mint(
            Minted {
                user_id: request.user_id.into(),
                session_id: new_random_id(),
                idp_session_id: request.idp_session_id,
                extra: request.claims,
                binding,
            },
            new_random_id(),
            times,
        )
    }

    /// Checks a token completely. The outer error means "cannot answer safely"; the inner one
    /// is the verdict on the token.
    pub async fn verify(&self, token: &str) -> Result<Result<Claims, Reason>, AuthorityError> {
        let now = self.clock.now_ms();
        let claims = match self
            .codec
            .decode(token)
            .and_then(|c| self.policy.check_lifetime(&c, now).map(|()| c))
        {
            Ok(claims) => claims,
            Err(reason) => return Ok(Err(reason)),
        };
        let store = self.store_ready()?;
        let cutoff = store.cutoff(&claims.user_id).await?;
        if let Err(reason) = RevocationPolicy::check_cutoff(cutoff, claims.orig_iat_ms, now) {
            return Ok(Err(reason));
        }
        let deny = store.deny_status(&claims).await?;
        Ok(RevocationPolicy::check_denylist(deny).map(|()| claims))
    }

    /// Exchanges a valid token for a new one of the same session (SPEC §4 rule 4); a bound
    /// token needs its proof of possession, and its successor keeps the binding (SPEC §15).
    pub async fn refresh(
        &self,
        token: &str,
        presentation: &crate::sender::Presentation<'_>,
    ) -> Result<IssuedToken, AuthorityError> {
        self.refuse_if_verify_only("Refresh")?;
        let claims = self
            .verify(token)
            .await?
            .map_err(AuthorityError::Rejected)?;
        if let Err(refusal) = self.check_sender(&claims, token, presentation).await? {
            return Err(AuthorityError::SenderRefused(refusal));
        }
        if let Some(issuer) = &claims.issuer {
            return Err(invalid(
                "token",
                ErrorCode::NotOurToken,
                format!(
                    "this token was issued by the trusted issuer {issuer}: refresh it there \
                     (this sidecar refreshes only the tokens it issued)"
                ),
            ));
        }
        self.check_clock().await?;
        let now = self.clock.earliest_ms();
        self.policy
            .check_refresh(&claims, now)
            .map_err(AuthorityError::Rejected)?;
        // The session keeps the lifetime it was issued with (rule 4), capped by the config.
        let session_ttl_ms = claims
            .expires_at
            .as_millis()
            .saturating_sub(claims.issued_at.as_millis());
        let times = self
            .policy
            .token_times(claims.orig_iat_ms, now, Some(session_ttl_ms))
            .map_err(AuthorityError::Rejected)?;
        let jti = new_random_id();
        let session = Minted {
            user_id: claims.user_id.clone(),
            session_id: claims.session_id.clone(),
            idp_session_id: claims.idp_session_id.clone(),
            extra: claims.extra.clone(),
            binding: claims.binding.clone(),
        };
        if self.policy.refresh_reuse_interval_ms.is_none() {
            return self.mint(session, jti, times);
        }
        // SPEC §11: only the session's newest token rotates it forward.
        let store = self.store_ready()?;
        let rotation = Rotation {
            session_id: &claims.session_id,
            user_id: &claims.user_id,
            presented_jti: &claims.jti,
            presented_minted_ms: claims.issued_at.as_millis(),
            new: SessionHead {
                jti: jti.clone(),
                minted_ms: now,
                issued_at: times.issued_at,
                expires_at: times.expires_at,
            },
            moot_after_ms: self.policy.session_row_moot_at(claims.orig_iat_ms),
        };
        let superseded = match store.rotate_session(&rotation).await? {
            RotationOutcome::Rotated => {
                return self.mint(session, jti, times);
            }
            RotationOutcome::Superseded(superseded) => superseded,
        };
        // Judged by the age of the presented token's own successor, not of the newest.
        let successor_minted_ms = superseded.successor_minted_ms(&claims.jti);
        let newest = superseded.newest;
        match self.policy.superseded(successor_minted_ms, now) {
            Superseded::Retry => {
                // The same identity as the answer the client lost (or another tab got).
                let times = TokenTimes {
                    issued_at: newest.issued_at,
                    expires_at: newest.expires_at,
                    ..times
                };
                self.mint(session, newest.jti, times)
            }
            Superseded::Reused => {
                let entry = DenyEntry {
                    kind: DenyKind::Session,
                    moot_after_ms: rotation.moot_after_ms,
                    id: claims.session_id.clone(),
                    user_id: Some(claims.user_id.clone()),
                };
                let audit = Audit {
                    action: AuditAction::RevokeSession,
                    who: "reuse-detection".into(),
                    why: Some("an older token of the session was refreshed again".into()),
                    at_ms: self.clock.now_ms(),
                };
                store.deny(&entry, &audit).await?;
                store.metrics().security.refresh_reuse_detected.inc();
                tracing::warn!(
                    session_id = %claims.session_id,
                    user_id = %claims.user_id,
                    "refresh token reuse: an older token of the session was refreshed again; \
                     the session is revoked"
                );
                Err(AuthorityError::Rejected(Reason::RefreshReused))
            }
        }
    }

    fn mint(
        &self,
        session: Minted,
        jti: String,
        times: TokenTimes,
    ) -> Result<IssuedToken, AuthorityError> {
        let claims = Claims {
            user_id: session.user_id,
            jti,
            session_id: session.session_id,
            issued_at: times.issued_at,
            expires_at: times.expires_at,
            not_before: None,
            orig_iat_ms: times.orig_iat_ms,
            idp_session_id: session.idp_session_id,
            extra: session.extra,
            issuer: None,
            binding: session.binding,
        };
        let token = self.codec.encode(&claims)?;
        Ok(IssuedToken {
            token,
            jti: claims.jti,
            session_id: claims.session_id,
            times,
        })
    }

    /// The `iss` of our tokens.
    pub fn issuer(&self) -> &str {
        self.codec.issuer()
    }

    /// The `aud` of our tokens, if configured.
    pub fn audience(&self) -> Option<&str> {
        self.codec.audience()
    }

    /// The public keys as an RFC 7517 key set.
    pub fn jwks_json(&self) -> String {
        self.codec.keys().jwks_json().to_owned()
    }

    /// The key set in use.
    pub fn keys(&self) -> Arc<crate::token::KeySet> {
        self.codec.keys()
    }

    /// Swaps in a new key set (hot reload); tokens signed by keys it still holds stay valid.
    pub fn replace_keys(&self, keys: crate::token::KeySet) {
        self.codec.replace_keys(keys);
    }

    /// The issuers whose tokens are verified too (SPEC §16).
    pub fn trusted_issuers(&self) -> &Arc<crate::token::TrustedIssuers> {
        self.codec.trusted_issuers()
    }

    /// A trusted issuer's key set changed: forget the decodes made with the old one.
    pub fn trusted_keys_changed(&self) {
        self.codec.forget_verified();
    }
}

/// What a new token carries over from its session.
struct Minted {
    user_id: String,
    session_id: String,
    idp_session_id: Option<String>,
    extra: Map<String, Value>,
    binding: crate::sender::Binding,
}
