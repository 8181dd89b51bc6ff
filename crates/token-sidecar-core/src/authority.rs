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
    SessionHead, StoreError,
};
use crate::token::{Claims, CodecError, RESERVED_CLAIMS, TokenCodec, new_random_id};

/// Longest accepted user id, in bytes.
pub use crate::policy::MAX_USER_ID_BYTES;
/// Largest accepted custom claims, as compact JSON, so that tokens stay well under the size cap.
pub const MAX_CUSTOM_CLAIMS_BYTES: usize = 4 * 1024;
/// Shortest token lifetime a caller may ask for.
pub const MIN_TTL_MS: i64 = 1000;
/// Longest `reason` a caller may give for a change (Revoke, LiftBan), in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// How far ahead an indefinite ban (an identity provider's `account-disabled`) is set: until the
/// provider says `account-enabled`, or an operator lifts it.
pub const INDEFINITE_BAN_MS: i64 = 100 * 365 * 86_400_000;
/// Most audit records one `ListChanges` page holds.
pub const MAX_PAGE_SIZE: i64 = 500;
/// Audit records per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: i64 = 50;

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A request field is missing or out of bounds.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// The machine-readable reason.
        reason: ErrorCode,
        /// What is wrong with it.
        message: String,
    },
    /// The presented token is not acceptable (Refresh).
    #[error("token rejected: {0}")]
    Rejected(Reason),
    /// The presented token cannot even be identified as ours (Revoke by token).
    #[error("invalid token: {0}")]
    InvalidToken(Reason),
    /// The user is banned until the given time (Issue).
    #[error("the user is banned")]
    Banned {
        /// The end of the ban.
        until_ms: UnixMillis,
    },
    /// Issue for an identity provider session that was logged out.
    #[error("the identity provider session has ended (logged out)")]
    IdpSessionEnded,
    /// The store is still starting up.
    #[error("the store is not ready yet")]
    NotReady,
    /// This instance's clock is off the fleet's beyond `--max-clock-skew`: it may not mint
    /// (SPEC §4 rule 9).
    #[error(
        "this instance's clock is {skew_ms} ms off the database's (at most {max_ms} ms \
         tolerated): it issues no token until its clock is corrected"
    )]
    ClockSkew {
        /// Own clock minus the fleet's.
        skew_ms: i64,
        /// The tolerance.
        max_ms: i64,
    },
    /// The fleet's clock could not be read yet.
    #[error("the database's clock has not been read yet")]
    ClockUnread,
    /// The store did not answer; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A token could not be signed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What Issue is asked for.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The token's subject.
    pub user_id: UserId,
    /// Custom claims to carry.
    pub claims: Map<String, Value>,
    /// Requested lifetime, capped by configuration.
    pub ttl_ms: Option<i64>,
    /// The identity provider's session the token is minted for (its `sid`), if any: a
    /// back-channel logout of that session revokes the token.
    pub idp_session_id: Option<String>,
}

/// Who asks for a change and why: recorded in the audit trail with the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The caller (see [`Audit::who`]).
    pub who: String,
    /// The caller's reason, if given.
    pub why: Option<String>,
}

impl Cause {
    /// A change `who` asks for, for `why`.
    pub fn new(who: impl Into<String>, why: Option<String>) -> Self {
        Self {
            who: who.into(),
            why,
        }
    }
}

/// A freshly minted token and its times.
#[derive(Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `sid`.
    pub session_id: String,
    /// Its times.
    pub times: TokenTimes,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// The session of this token.
    Token(String),
    /// One token by id.
    Jti(MintedId),
    /// One session by id.
    Session(MintedId),
    /// Every token of a user issued up to `until` (default now); a future `until` bans.
    User {
        /// The user.
        user_id: UserId,
        /// The new cutoff.
        until_ms: Option<UnixMillis>,
    },
}

/// What a Revoke did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Whether a row was written.
    pub stored: bool,
    /// For a user: the cutoff in force afterwards.
    pub revoked_until_ms: Option<UnixMillis>,
    /// For a user: whether the user is banned afterwards.
    pub banned: bool,
    /// For a token: the session that is revoked.
    pub session_id: Option<String>,
    /// For a token: whose session it is (for the request log).
    pub user_id: Option<String>,
}

/// A user's revocation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStatus {
    /// The cutoff, if any.
    pub cutoff_ms: Option<UnixMillis>,
    /// Whether the cutoff lies in the future.
    pub banned: bool,
    /// While banned: who set the ban (the audit trail's `who`), if recorded.
    pub banned_by: Option<String>,
}

/// What an identity provider's lifting of a ban did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiftOutcome {
    /// The ban was the sender's own, and is lifted.
    Lifted,
    /// A ban set by someone else runs, and stays.
    NotOwner,
    /// No ban ran.
    NoBan,
}

/// Issues, verifies, refreshes and revokes tokens.
pub struct TokenAuthority {
    codec: TokenCodec,
    policy: RevocationPolicy,
    revocations: Arc<Revocations>,
    clock: Arc<dyn Clock>,
    /// The identity providers' subject prefixes: an IdP session id given to Issue is scoped
    /// by the prefix its user id starts with (SPEC §13). Empty: no identity provider.
    idp_prefixes: Vec<String>,
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
            fleet_clock::read(self.revocations.store().as_ref(), self.clock.as_ref()).await?;
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
        let deny = store
            .deny_status(
                &claims.jti,
                &claims.session_id,
                claims.idp_session_id.as_deref(),
            )
            .await?;
        Ok(RevocationPolicy::check_denylist(deny).map(|()| claims))
    }

    /// Exchanges a valid token for a new one of the same session (SPEC §4 rule 4).
    pub async fn refresh(&self, token: &str) -> Result<IssuedToken, AuthorityError> {
        let claims = self
            .verify(token)
            .await?
            .map_err(AuthorityError::Rejected)?;
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
        };
        let token = self.codec.encode(&claims)?;
        Ok(IssuedToken {
            token,
            jti: claims.jti,
            session_id: claims.session_id,
            times,
        })
    }

    /// Revokes a token's session, a token, a session or a user (SPEC §4 rules 2 and 5).
    /// Returns only after the store has committed whatever it stored.
    pub async fn revoke(
        &self,
        target: RevokeTarget,
        cause: &Cause,
    ) -> Result<RevokeOutcome, AuthorityError> {
        check_reason(cause.why.as_deref())?;
        match target {
            RevokeTarget::Token(token) => self.revoke_token_session(&token, cause).await,
            RevokeTarget::Jti(jti) => self.revoke_by_id(DenyKind::Token, jti, cause).await,
            RevokeTarget::Session(sid) => self.revoke_by_id(DenyKind::Session, sid, cause).await,
            RevokeTarget::User { user_id, until_ms } => {
                let store = self.store_ready()?;
                let now = self.clock.now_ms();
                let wanted = RevocationPolicy::revoke_all_cutoff(until_ms, now);
                let action = if RevocationPolicy::is_banned(Some(wanted), now) {
                    AuditAction::BanUser
                } else {
                    AuditAction::RevokeUser
                };
                let audit = self.audit(action, cause);
                let update = store.raise_cutoff(user_id.as_str(), wanted, &audit).await?;
                Ok(RevokeOutcome {
                    stored: update.changed,
                    revoked_until_ms: Some(update.cutoff_ms),
                    banned: RevocationPolicy::is_banned(Some(update.cutoff_ms), now),
                    session_id: None,
                    user_id: Some(user_id.into()),
                })
            }
        }
    }

    async fn revoke_token_session(
        &self,
        token: &str,
        cause: &Cause,
    ) -> Result<RevokeOutcome, AuthorityError> {
        let claims = self
            .codec
            .decode(token)
            .map_err(AuthorityError::InvalidToken)?;
        let now = self.clock.now_ms();
        let nothing = RevokeOutcome {
            session_id: Some(claims.session_id.clone()),
            user_id: Some(claims.user_id.clone()),
            ..RevokeOutcome::default()
        };
        // An expired token is dead already; one not valid yet will become valid, so it is
        // revoked like any other.
        if self.policy.check_lifetime(&claims, now) == Err(Reason::Expired) {
            return Ok(nothing);
        }
        let store = self.store_ready()?;
        let cutoff = store.cutoff(&claims.user_id).await?;
        if RevocationPolicy::check_cutoff(cutoff, claims.orig_iat_ms, now).is_err() {
            return Ok(nothing);
        }
        let entry = DenyEntry {
            kind: DenyKind::Session,
            moot_after_ms: self.policy.session_row_moot_at(claims.orig_iat_ms),
            id: claims.session_id,
            user_id: Some(claims.user_id),
        };
        let stored = store
            .deny(&entry, &self.audit(AuditAction::RevokeSession, cause))
            .await?;
        Ok(RevokeOutcome {
            stored,
            session_id: Some(entry.id),
            user_id: entry.user_id,
            ..RevokeOutcome::default()
        })
    }

    async fn revoke_by_id(
        &self,
        kind: DenyKind,
        id: MintedId,
        cause: &Cause,
    ) -> Result<RevokeOutcome, AuthorityError> {
        let store = self.store_ready()?;
        // Known only by its id, the target may still be alive for as long as any token can be.
        let entry = DenyEntry {
            kind,
            moot_after_ms: self.policy.unknown_row_moot_at(self.clock.now_ms()),
            id: id.into(),
            user_id: None,
        };
        let stored = store
            .deny(&entry, &self.audit(AuditAction::of_deny(kind), cause))
            .await?;
        Ok(RevokeOutcome {
            stored,
            session_id: (kind == DenyKind::Session).then_some(entry.id),
            ..RevokeOutcome::default()
        })
    }

    /// Ends a running ban now, whoever set it (rule 2; the operator's LiftBan); tokens from
    /// before stay revoked. False if no ban ran.
    pub async fn lift_ban(&self, user_id: &UserId, cause: &Cause) -> Result<bool, AuthorityError> {
        check_reason(cause.why.as_deref())?;
        let store = self.store_ready()?;
        let audit = self.audit(AuditAction::LiftBan, cause);
        Ok(store
            .lift_ban(user_id.as_str(), audit.at_ms, None, &audit)
            .await?)
    }

    /// Ends a running ban only if `cause.who` set it (SPEC §13: a transmitter's RISC
    /// `account-enabled` lifts only its own ban; an operator's or another transmitter's stays).
    pub async fn lift_own_ban(
        &self,
        user_id: &UserId,
        cause: &Cause,
    ) -> Result<LiftOutcome, AuthorityError> {
        check_reason(cause.why.as_deref())?;
        let store = self.store_ready()?;
        let audit = self.audit(AuditAction::LiftBan, cause);
        if store
            .lift_ban(user_id.as_str(), audit.at_ms, Some(&cause.who), &audit)
            .await?
        {
            return Ok(LiftOutcome::Lifted);
        }
        // Not lifted: say whether a ban of someone else's runs, or none does.
        let cutoff = store.cutoff(user_id.as_str()).await?;
        if RevocationPolicy::is_banned(cutoff, self.clock.now_ms()) {
            Ok(LiftOutcome::NotOwner)
        } else {
            Ok(LiftOutcome::NoBan)
        }
    }

    /// Revokes every token minted for an identity provider's session (a back-channel logout or
    /// a Shared Signals `session-revoked`). Whether a row was stored (false: it was revoked
    /// already).
    pub async fn revoke_idp_session(
        &self,
        idp_session_id: &str,
        user_id: Option<&UserId>,
        cause: &Cause,
    ) -> Result<bool, AuthorityError> {
        if let Some(problem) = user_id_problem(idp_session_id) {
            return Err(invalid("sid", ErrorCode::InvalidIdpSessionId, problem));
        }
        let store = self.store_ready()?;
        // The tokens of that session may live as long as any session that starts now.
        let entry = DenyEntry {
            kind: DenyKind::IdpSession,
            moot_after_ms: self.policy.unknown_row_moot_at(self.clock.now_ms()),
            id: idp_session_id.to_owned(),
            user_id: user_id.map(|u| u.as_str().to_owned()),
        };
        Ok(store
            .deny(&entry, &self.audit(AuditAction::RevokeIdpSession, cause))
            .await?)
    }

    /// Bans a user until an operator or the identity provider lifts it.
    pub async fn ban_indefinitely(
        &self,
        user_id: &UserId,
        cause: &Cause,
    ) -> Result<RevokeOutcome, AuthorityError> {
        let until_ms = self.clock.now_ms().saturating_add(INDEFINITE_BAN_MS);
        self.revoke(
            RevokeTarget::User {
                user_id: user_id.clone(),
                until_ms: Some(until_ms),
            },
            cause,
        )
        .await
    }

    /// A page of the audit trail, newest first: `user_id`'s changes (all when None), older
    /// than the position `before` (from the previous page).
    pub async fn list_changes(
        &self,
        user_id: Option<&UserId>,
        page_size: Option<i64>,
        before: Option<i64>,
    ) -> Result<Vec<AuditRecord>, AuthorityError> {
        let limit = match page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(size) if (1..=MAX_PAGE_SIZE).contains(&size) => size,
            Some(_) => {
                return Err(invalid(
                    "page_size",
                    ErrorCode::InvalidPageSize,
                    format!("at most {MAX_PAGE_SIZE} (0 for the default, {DEFAULT_PAGE_SIZE})"),
                ));
            }
        };
        let store = self.store_ready()?;
        Ok(store
            .audit_trail(AuditQuery {
                user_id: user_id.map(UserId::as_str),
                before,
                limit,
            })
            .await?)
    }

    /// The record of a change `cause` asks for now.
    fn audit(&self, action: AuditAction, cause: &Cause) -> Audit {
        Audit {
            action,
            who: cause.who.clone(),
            why: cause.why.clone(),
            at_ms: self.clock.now_ms(),
        }
    }

    /// The user's cutoff, whether a ban is running, and who set it.
    pub async fn user_status(&self, user_id: &UserId) -> Result<UserStatus, AuthorityError> {
        let store = self.store_ready()?;
        let cutoff_ms = store.cutoff(user_id.as_str()).await?;
        let banned = RevocationPolicy::is_banned(cutoff_ms, self.clock.now_ms());
        let banned_by = if banned {
            store.cutoff_owner(user_id.as_str()).await?
        } else {
            None
        };
        Ok(UserStatus {
            cutoff_ms,
            banned,
            banned_by,
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

    /// Swaps in a new key set (hot reload); tokens signed by keys it still holds stay valid.
    pub fn replace_keys(&self, keys: crate::token::KeySet) {
        self.codec.replace_keys(keys);
    }
}

/// What a new token carries over from its session.
struct Minted {
    user_id: String,
    session_id: String,
    idp_session_id: Option<String>,
    extra: Map<String, Value>,
}

/// A caller's reason: at most [`MAX_REASON_BYTES`], printable text.
fn check_reason(why: Option<&str>) -> Result<(), AuthorityError> {
    let Some(why) = why else { return Ok(()) };
    if why.len() > MAX_REASON_BYTES {
        return Err(invalid(
            "reason",
            ErrorCode::InvalidReason,
            format!("at most {MAX_REASON_BYTES} bytes"),
        ));
    }
    if why
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(
            "reason",
            ErrorCode::InvalidReason,
            "must not hold control characters",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: ErrorCode, message: impl Into<String>) -> AuthorityError {
    AuthorityError::InvalidArgument {
        field,
        reason,
        message: message.into(),
    }
}

/// A request's user id, parsed at the edge (compared byte for byte: callers normalise); the
/// error names the request field.
pub fn parse_user_id(field: &'static str, raw: String) -> Result<UserId, AuthorityError> {
    UserId::parse(raw).map_err(|problem| invalid(field, ErrorCode::InvalidUserId, problem))
}

/// A request's `jti` or `session_id`, parsed at the edge: only ids of the shape this service
/// mints ever reach the store.
pub fn parse_minted_id(field: &'static str, raw: String) -> Result<MintedId, AuthorityError> {
    MintedId::parse(raw).map_err(|problem| invalid(field, ErrorCode::InvalidId, problem))
}

fn check_custom_claims(claims: &Map<String, Value>) -> Result<(), AuthorityError> {
    if let Some(name) = claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(invalid(
            "claims",
            ErrorCode::ReservedClaim,
            format!("{name:?} is a reserved claim and is set by the sidecar"),
        ));
    }
    let size = serde_json::to_vec(claims).map_or(usize::MAX, |v| v.len());
    if size > MAX_CUSTOM_CLAIMS_BYTES {
        return Err(invalid(
            "claims",
            ErrorCode::ClaimsTooLarge,
            format!(
                "custom claims take {size} bytes; at most {MAX_CUSTOM_CLAIMS_BYTES} are allowed"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
