//! Sender-constrained tokens at the authority (SPEC §15): Verify and Refresh of a bound token
//! hold its presentation to [`crate::sender`]'s checks, then the fleet's nonce and this
//! instance's replay cache.
use crate::reason::Reason;
use crate::sender::{NonceKey, Presentation, ReplayCache, Scheme, Seen, SenderRules};
use crate::token::Claims;

use super::{SenderRefusal, TokenAuthority, Verdict};

/// What the authority keeps for proofs: the rules, the replay cache, and the nonce key (derived
/// from the fleet's secret on first use).
pub(super) struct SenderGuard {
    rules: SenderRules,
    replay: ReplayCache,
    /// `--dpop-nonce`.
    nonce_required: bool,
    nonce_key: tokio::sync::OnceCell<NonceKey>,
}

impl SenderGuard {
    pub(super) fn new(rules: SenderRules, nonce_required: bool) -> Self {
        Self {
            replay: ReplayCache::new(rules.replay_window_ms()),
            rules,
            nonce_required,
            nonce_key: tokio::sync::OnceCell::new(),
        }
    }
}

impl Default for SenderGuard {
    fn default() -> Self {
        Self::new(SenderRules::default(), false)
    }
}

impl TokenAuthority {
    /// Holds proofs to `rules`; with `nonce_required`, every DPoP proof must carry a fresh
    /// nonce of the fleet's (`--dpop-max-age`, `--dpop-nonce`).
    pub fn with_sender_rules(mut self, rules: SenderRules, nonce_required: bool) -> Self {
        self.sender = SenderGuard::new(rules, nonce_required);
        self
    }

    /// Checks a token completely, as it was presented: a bound token also needs its proof of
    /// possession (SPEC §15). The outer error means "cannot answer safely".
    pub async fn verify_presented(
        &self,
        token: &str,
        presentation: &Presentation<'_>,
    ) -> Result<Verdict, super::AuthorityError> {
        let claims = match self.verify(token).await? {
            Ok(claims) => claims,
            Err(reason) => return Ok(Verdict::plain(Err(reason))),
        };
        match self.check_sender(&claims, token, presentation).await? {
            Ok(nonce) => Ok(Verdict {
                outcome: Ok(claims),
                check: None,
                nonce,
            }),
            Err(refusal) => Ok(Verdict {
                outcome: Err(refusal.reason),
                check: Some(refusal.check),
                nonce: refusal.nonce,
            }),
        }
    }

    /// The proof of possession for `claims`: Ok with a fresh nonce to hand out (when nonces
    /// are required and DPoP is in play), or the refusal; the outer error when the fleet's
    /// nonce key cannot be read.
    pub(super) async fn check_sender(
        &self,
        claims: &Claims,
        token: &str,
        presentation: &Presentation<'_>,
    ) -> Result<Result<Option<String>, SenderRefusal>, super::AuthorityError> {
        let guard = &self.sender;
        let dpop_in_play = claims.binding.jkt.is_some() || presentation.scheme == Scheme::Dpop;
        // A bearer token as a bearer token (the hot path): nothing to check, no clock read.
        if !dpop_in_play && claims.binding.is_unbound() {
            return Ok(Ok(None));
        }
        let now = self.clock.now_ms();
        let key = match guard.nonce_required && dpop_in_play {
            true => Some(self.nonce_key().await?),
            false => None,
        };
        let nonce = key.map(|key| key.current(now));
        Ok(self.judge_presentation(claims, token, presentation, key, nonce, now))
    }

    fn judge_presentation(
        &self,
        claims: &Claims,
        token: &str,
        presentation: &Presentation<'_>,
        key: Option<&NonceKey>,
        nonce: Option<String>,
        now: i64,
    ) -> Result<Option<String>, SenderRefusal> {
        let guard = &self.sender;
        let refuse = |reason, check| SenderRefusal {
            reason,
            check,
            nonce: nonce.clone(),
        };
        let checked = guard
            .rules
            .check(&claims.binding, token, presentation, now)
            .map_err(|r| refuse(r.reason, r.check))?;
        let Some(proof) = checked else {
            return Ok(nonce);
        };
        if let Some(key) = key
            && !proof.nonce.as_deref().is_some_and(|n| key.accepts(n, now))
        {
            return Err(refuse(Reason::NonceRequired, "nonce"));
        }
        match guard.replay.record(&proof.jkt, &proof.jti, now) {
            Seen::First => Ok(nonce),
            Seen::Again => Err(refuse(Reason::ProofReplayed, "jti")),
            Seen::Full => {
                tracing::warn!("the DPoP replay cache is full: proofs are refused until it turns");
                Err(refuse(Reason::ProofReplayed, "jti-capacity"))
            }
        }
    }

    /// The fleet's nonce key: derived from the fleet's secret, so every instance on the store
    /// makes and accepts the same nonces; a store without one (the embedded SQLite, a lone
    /// instance) gets a random key.
    /// (Read once the store is loaded, the fleet's key is held in memory: no query.)
    async fn nonce_key(&self) -> Result<&NonceKey, super::AuthorityError> {
        self.sender
            .nonce_key
            .get_or_try_init(|| async {
                let fleet = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    self.revocations.store().fleet(),
                )
                .await
                .map_err(|_| crate::store::StoreError::Timeout("reading the fleet key"))??;
                Ok(match fleet {
                    Some(fleet) => NonceKey::new(&fleet.derive("dpop-nonce")),
                    None => {
                        let mut secret = [0u8; 32];
                        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                        NonceKey::new(&secret)
                    }
                })
            })
            .await
    }
}
