//! `tokensidecar.v1.TokenService`: each RPC translates its request for the [`TokenAuthority`],
//! answers through [`crate::api::convert`] and [`crate::api::errors`], and leaves one request log
//! line and its metrics.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::caller::{self, CallerInfo, Refusal};
use crate::api::convert::{
    self, duration_ms, grant, proto_reason, struct_to_json, timestamp, timestamp_ms, token_claims,
};
use crate::api::errors::{classify, to_status};
use crate::api::open_gate::OpenGate;
use crate::api::pb::{self, token_service_server::TokenService};
use crate::api::rpc_layer::{
    Admission, Outcome, OutcomeSlot, refusal_status, verify_subject_wanted,
};
use crate::authority::{
    AuthorityError, Cause, DEFAULT_PAGE_SIZE, IssueRequest, RevokeTarget, TokenAuthority,
    parse_minted_id, parse_user_id,
};
use crate::error_code::ErrorCode;
use crate::store::{Lane, StoreError};

/// `tokensidecar.v1.TokenService`, delegating to a [`TokenAuthority`]. Who may call what, the
/// counting and the request log are [`RpcLayer`](crate::api::rpc_layer::RpcLayer)'s.
#[derive(Clone)]
pub struct TokenGrpc {
    authority: Arc<TokenAuthority>,
    /// Refresh and Revoke of a held token, a few at a time per caller.
    open: OpenGate,
}

impl TokenGrpc {
    /// Serves `authority` over gRPC.
    pub fn new(authority: Arc<TokenAuthority>) -> Self {
        Self {
            authority,
            open: OpenGate::default(),
        }
    }
}

/// Where the layer wants this RPC's outcome (a default slot when served without the layer, as
/// in a unit test: the outcome is then dropped).
/// Verify's and Refresh's proof-of-possession fields (the same four in both requests).
macro_rules! proof_inputs {
    ($req:expr) => {
        proof_fields(
            $req.dpop_proof,
            $req.http_method,
            $req.http_uri,
            &$req.client_certificate,
        )
    };
}

fn slot<T>(request: &Request<T>) -> OutcomeSlot {
    request
        .extensions()
        .get::<OutcomeSlot>()
        .cloned()
        .unwrap_or_default()
}

/// Leaves the RPC's outcome for the layer and maps its error to a `Status`.
fn answer<T>(
    slot: &OutcomeSlot,
    result: Result<T, AuthorityError>,
    subject: Subject<'_>,
) -> Result<Response<T>, Status> {
    let (result, reason, answer) = match result {
        Ok(value) => ("ok", "", Ok(Response::new(value))),
        Err(e) => {
            let class = classify(&e);
            (class.result, class.reason, Err(to_status(e)))
        }
    };
    slot.set(subject.outcome(result, reason));
    answer
}

#[tonic::async_trait]
impl TokenService for TokenGrpc {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let slot = slot(&request);
        admitted(&request, &slot, "Issue")?;
        let req = request.into_inner();
        let user_id = req.user_id.clone();
        let result = Lane::Privileged
            .scope(async {
                let ttl_ms = req.ttl.map(|d| duration_ms(&d, "ttl")).transpose()?;
                let issued = self
                    .authority
                    .issue(IssueRequest {
                        user_id: parse_user_id("user_id", req.user_id)?,
                        claims: req.claims.map(struct_to_json).unwrap_or_default(),
                        ttl_ms,
                        idp_session_id: Some(req.idp_session_id).filter(|s| !s.is_empty()),
                        dpop_jkt: Some(req.dpop_jkt).filter(|s| !s.is_empty()),
                        x5t_s256: Some(req.x5t_s256).filter(|s| !s.is_empty()),
                    })
                    .await?;
                Ok(pb::IssueResponse::from(grant(issued)))
            })
            .await;
        let jti = result.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
        let subject = Subject {
            user_id: &user_id,
            jti: &jti,
            session_id: None,
        };
        answer(&slot, result, subject)
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let slot = slot(&request);
        let req = request.into_inner();
        let presented = proof_inputs!(req);
        let proofs = presented.proof_refs();
        let presentation = presented.presentation(&proofs);
        let verdict = match self
            .authority
            .verify_presented(&req.token, &presentation)
            .await
        {
            Ok(verdict) => verdict,
            Err(e) => return answer(&slot, Err(e), Subject::default()),
        };
        let dpop_nonce = verdict.nonce.unwrap_or_default();
        let response = match verdict.outcome {
            Ok(claims) => {
                // The hot path: whom it was about is copied only when a log line or a span
                // will carry it.
                let subject = match verify_subject_wanted() {
                    true => Subject {
                        user_id: &claims.user_id,
                        jti: &claims.jti,
                        session_id: None,
                    },
                    false => Subject::default(),
                };
                slot.set(subject.outcome("ok", ""));
                pb::VerifyResponse {
                    valid: true,
                    reason: pb::Reason::Unspecified as i32,
                    claims: Some(token_claims(claims, self.authority.issuer())),
                    dpop_nonce,
                }
            }
            Err(reason) => {
                slot.set(Subject::default().outcome("invalid", reason.code()));
                pb::VerifyResponse {
                    valid: false,
                    reason: proto_reason(reason) as i32,
                    claims: None,
                    dpop_nonce,
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let slot = slot(&request);
        let caller = peer(&request);
        let req = request.into_inner();
        let presented = proof_inputs!(req);
        let proofs = presented.proof_refs();
        let presentation = presented.presentation(&proofs);
        let result = match self.open.admit(caller) {
            Some(_admitted) => Lane::Open(caller)
                .scope(self.authority.refresh(&req.token, &presentation))
                .await
                .map(|issued| pb::RefreshResponse::from(grant(issued))),
            None => Err(AuthorityError::Store(StoreError::Overloaded)),
        };
        let jti = result.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
        let subject = Subject {
            user_id: "",
            jti: &jti,
            session_id: None,
        };
        answer(&slot, result, subject)
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target;
        let slot = slot(&request);
        // Revoking a token one holds is open (like Verify); every other target is privileged.
        // (The store serves the open kind in its own lane: no caller can crowd out the others.)
        let admission = request
            .extensions()
            .get::<Admission>()
            .map_or(Err(Refusal::Missing), |a| a.0.clone());
        let (who, lane, admitted) = match admission {
            Ok(who) => {
                // Revoking by id or user is the issuing service's in a verify-only sidecar.
                if !matches!(request.get_ref().target, Some(Target::Token(_)) | None)
                    && let Err(refused) = self.authority.refuse_if_verify_only("Revoke")
                {
                    return answer(&slot, Err(refused), Subject::default());
                }
                (who, Lane::Privileged, None)
            }
            Err(_) if matches!(request.get_ref().target, Some(Target::Token(_))) => {
                let caller = peer(&request);
                let Some(admitted) = self.open.admit(caller) else {
                    let refused = Err(AuthorityError::Store(StoreError::Overloaded));
                    return answer(&slot, refused, Subject::default());
                };
                (
                    caller::TOKEN_HOLDER.to_owned(),
                    Lane::Open(caller),
                    Some(admitted),
                )
            }
            Err(refusal) => return Err(refused(&slot, "Revoke", refusal)),
        };
        let request = request.into_inner();
        let cause = Cause::new(who, Some(request.reason).filter(|r| !r.is_empty()));
        let target = request.target;
        let (mut user_id, jti, mut session_id) = match &target {
            Some(Target::User(u)) => (u.user_id.clone(), String::new(), None),
            Some(Target::Jti(j)) => (String::new(), j.clone(), None),
            Some(Target::SessionId(sid)) => (String::new(), String::new(), Some(sid.clone())),
            _ => Default::default(),
        };
        let result = lane
            .scope(async {
                let target = match target {
                    Some(Target::Token(token)) => RevokeTarget::Token(token),
                    Some(Target::Jti(jti)) => RevokeTarget::Jti(parse_minted_id("jti", jti)?),
                    Some(Target::SessionId(sid)) => {
                        RevokeTarget::Session(parse_minted_id("session_id", sid)?)
                    }
                    Some(Target::User(user)) => RevokeTarget::User {
                        user_id: parse_user_id("user_id", user.user_id)?,
                        until_ms: user
                            .until
                            .map(|t| timestamp_ms(&t, "user.until"))
                            .transpose()?,
                    },
                    None => {
                        return Err(AuthorityError::InvalidArgument {
                            field: "target",
                            reason: ErrorCode::MissingTarget,
                            message: "set one of token, jti, session_id or user".into(),
                        });
                    }
                };
                let outcome = self.authority.revoke(target, &cause).await?;
                Ok((
                    outcome.user_id.clone(),
                    outcome.session_id.clone(),
                    pb::RevokeResponse {
                        stored: outcome.stored,
                        revoked_until: outcome.revoked_until_ms.map(timestamp),
                        banned: outcome.banned,
                        session_id: outcome.session_id.unwrap_or_default(),
                    },
                ))
            })
            .await;
        drop(admitted);
        // Revoke{token}: whose session ended is known only once the token is read.
        let result = result.map(|(owner, session, response)| {
            if let Some(owner) = owner {
                user_id = owner;
            }
            session_id = session_id.take().or(session);
            response
        });
        let subject = Subject {
            user_id: &user_id,
            jti: &jti,
            session_id: session_id.as_deref(),
        };
        answer(&slot, result, subject)
    }

    async fn lift_ban(
        &self,
        request: Request<pb::LiftBanRequest>,
    ) -> Result<Response<pb::LiftBanResponse>, Status> {
        let slot = slot(&request);
        let who = admitted(&request, &slot, "LiftBan")?;
        if let Err(refused) = self.authority.refuse_if_verify_only("LiftBan") {
            return answer(&slot, Err(refused), Subject::default());
        }
        let request = request.into_inner();
        let user_id = request.user_id;
        let cause = Cause::new(who, Some(request.reason).filter(|r| !r.is_empty()));
        let result = Lane::Privileged
            .scope(async {
                let parsed = parse_user_id("user_id", user_id.clone())?;
                let lifted = self.authority.lift_ban(&parsed, &cause).await?;
                Ok(pb::LiftBanResponse { lifted })
            })
            .await;
        let subject = Subject {
            user_id: &user_id,
            jti: "",
            session_id: None,
        };
        answer(&slot, result, subject)
    }

    async fn get_user_status(
        &self,
        request: Request<pb::GetUserStatusRequest>,
    ) -> Result<Response<pb::GetUserStatusResponse>, Status> {
        let slot = slot(&request);
        admitted(&request, &slot, "GetUserStatus")?;
        let user_id = request.into_inner().user_id;
        let result = Lane::Privileged
            .scope(async {
                let parsed = parse_user_id("user_id", user_id.clone())?;
                let status = self.authority.user_status(&parsed).await?;
                Ok(pb::GetUserStatusResponse {
                    cutoff: status.cutoff_ms.map(timestamp),
                    banned: status.banned,
                    banned_until: status.cutoff_ms.filter(|_| status.banned).map(timestamp),
                    banned_by: status.banned_by.unwrap_or_default(),
                })
            })
            .await;
        let subject = Subject {
            user_id: &user_id,
            jti: "",
            session_id: None,
        };
        answer(&slot, result, subject)
    }

    async fn get_jwks(
        &self,
        request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let result = Ok(pb::GetJwksResponse {
            jwks_json: self.authority.jwks_json(),
        });
        answer(&slot(&request), result, Subject::default())
    }

    async fn list_changes(
        &self,
        request: Request<pb::ListChangesRequest>,
    ) -> Result<Response<pb::ListChangesResponse>, Status> {
        let slot = slot(&request);
        admitted(&request, &slot, "ListChanges")?;
        let request = request.into_inner();
        let user_id = request.user_id;
        let result = Lane::Privileged
            .scope(async {
                let before = page_position(&request.page_token)?;
                let page_size = (request.page_size != 0).then_some(i64::from(request.page_size));
                let user = match user_id.as_str() {
                    "" => None,
                    some => Some(parse_user_id("user_id", some.to_owned())?),
                };
                let records = self
                    .authority
                    .list_changes(user.as_ref(), page_size, before)
                    .await?;
                let full = i64::try_from(records.len())
                    .is_ok_and(|n| n == page_size.unwrap_or(DEFAULT_PAGE_SIZE));
                let next_page_token = match records.last() {
                    Some(last) if full => page_token(last.id),
                    _ => String::new(),
                };
                Ok(pb::ListChangesResponse {
                    changes: records.into_iter().map(convert::change).collect(),
                    next_page_token,
                })
            })
            .await;
        let subject = Subject {
            user_id: &user_id,
            jti: "",
            session_id: None,
        };
        answer(&slot, result, subject)
    }
}

/// The opaque `page_token` that continues a listing after the change at `position`.
fn page_token(position: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("before:{position}"))
}

/// The position a `page_token` continues from (None for the first page).
fn page_position(token: &str) -> Result<Option<i64>, AuthorityError> {
    use base64::Engine;
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("before:")?.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| AuthorityError::InvalidArgument {
            field: "page_token",
            reason: ErrorCode::InvalidPageToken,
            message: "is not a next_page_token this service returned".into(),
        })
}

/// The caller's address (the store's open lane is shared out by it).
/// Verify's and Refresh's proof-of-possession fields (SPEC §15): a proof given means the
/// DPoP scheme.
fn proof_fields(
    dpop_proof: String,
    method: String,
    uri: String,
    certificate: &[u8],
) -> crate::api::sender::ProofInputs {
    crate::api::sender::ProofInputs {
        dpop_scheme: !dpop_proof.is_empty(),
        proofs: Some(dpop_proof)
            .filter(|p| !p.is_empty())
            .into_iter()
            .collect(),
        method,
        uri,
        certificate: crate::api::sender::certificate_thumbprint(certificate),
    }
}

fn peer<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    caller::caller_ip(request.extensions().get::<CallerInfo>())
}

/// Who an RPC was about, for the request log.
#[derive(Clone, Copy, Default)]
struct Subject<'a> {
    user_id: &'a str,
    jti: &'a str,
    /// The session a Revoke ended, if it names one.
    session_id: Option<&'a str>,
}

impl Subject<'_> {
    fn outcome(self, result: &'static str, reason: &'static str) -> Outcome {
        Outcome {
            result,
            reason,
            user_id: self.user_id.to_owned(),
            jti: self.jti.to_owned(),
            session_id: self.session_id.map(str::to_owned),
        }
    }
}

/// Who the layer admitted to a privileged RPC. The layer refuses the others before the handler
/// runs; served without it, every privileged RPC is refused (fail closed).
fn admitted<T>(
    request: &Request<T>,
    slot: &OutcomeSlot,
    method: &'static str,
) -> Result<String, Status> {
    match request.extensions().get::<Admission>() {
        Some(Admission(Ok(who))) => Ok(who.clone()),
        Some(Admission(Err(refusal))) => Err(refused(slot, method, *refusal)),
        None => Err(refused(slot, method, Refusal::Missing)),
    }
}

/// A privileged target refused: its status, with the outcome left for the layer.
fn refused(slot: &OutcomeSlot, method: &'static str, refusal: Refusal) -> Status {
    let (status, outcome) = refusal_status(method, refusal);
    slot.set(outcome);
    status
}
