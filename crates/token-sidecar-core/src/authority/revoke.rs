//! The revoking use cases: Revoke by token, id, session or user, bans and their lifting, an
//! identity provider's session, and the audit trail and status they leave.
use super::*;

impl TokenAuthority {
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

    pub(super) async fn revoke_token_session(
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

    pub(super) async fn revoke_by_id(
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
    pub(super) fn audit(&self, action: AuditAction, cause: &Cause) -> Audit {
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
}
