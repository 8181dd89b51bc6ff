//! `envoy.service.auth.v3.Authorization/Check` for Envoy and Istio external authorization (gRPC
//! mode), served on the API listener and listed by reflection. The token is read from the
//! request's `authorization: Bearer <token>` header; see [`crate::api::forward_auth`] for the
//! decision. A denial is an OK RPC carrying a denied response (status UNAUTHENTICATED, HTTP 401,
//! `WWW-Authenticate`) — an RPC error is not a denial to Envoy; only "cannot answer safely" is an
//! RPC error (UNAVAILABLE), so the proxy's `failure_mode_allow` decides.
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::api::convert::proto_reason;
use crate::api::forward_auth::{Decision, ForwardAuth, Presented};
use crate::api::sender::ProofInputs;
use crate::api::trace;

/// The generated code of Envoy's external-authorization API and the packages it imports.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod udpa {
        pub mod annotations {
            tonic::include_proto!("udpa.annotations");
        }
    }
    pub mod validate {
        tonic::include_proto!("validate");
    }
    pub mod xds {
        pub mod annotations {
            pub mod v3 {
                tonic::include_proto!("xds.annotations.v3");
            }
        }
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("xds.core.v3");
            }
        }
    }

    /// The encoded descriptor set of the API and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/ext_authz_descriptor.bin"));

    pub use envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
    pub use envoy::service::auth::v3::{
        CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
    };
}

use pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, header_value_option};
use pb::envoy::r#type::v3::{HttpStatus, StatusCode};

/// The gRPC code Envoy reads from `CheckResponse.status`.
const OK: i32 = 0;
const UNAUTHENTICATED: i32 = 16;

/// `envoy.service.auth.v3.Authorization`.
#[derive(Clone)]
pub struct ExtAuthz {
    decide: ForwardAuth,
}

impl ExtAuthz {
    /// Answers Envoy with `decide`'s decisions.
    pub fn new(decide: ForwardAuth) -> Self {
        Self { decide }
    }

    /// The service, ready for a tonic router.
    pub fn into_service(self) -> pb::AuthorizationServer<Self> {
        pb::AuthorizationServer::new(self)
    }
}

/// A header Envoy sets upstream, replacing whatever the client sent under that name (Envoy
/// appends by default, which would let a client's own `x-user-id` through).
fn overwrite(key: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            ..Default::default()
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// RFC 9449 §8's response header.
const DPOP_NONCE: &str = "dpop-nonce";

fn authorization_header(request: &pb::CheckRequest) -> Presented<'_> {
    let Some(http) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return Presented::Absent;
    };
    // Envoy joins repeated headers with a comma into one value.
    if let Some(value) = http.headers.get("authorization") {
        return if value.contains(',') {
            Presented::Several
        } else {
            Presented::One(value)
        };
    }
    // With `encode_raw_headers`, Envoy sends the header map instead, one entry per header.
    let Some(map) = http.header_map.as_ref() else {
        return Presented::Absent;
    };
    Presented::from_values(
        map.headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case("authorization"))
            .map(|h| {
                if h.value.is_empty() {
                    std::str::from_utf8(&h.raw_value).unwrap_or_default()
                } else {
                    h.value.as_str()
                }
            }),
    )
}

#[tonic::async_trait]
impl pb::Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        // The caller's trace, from the headers of the request Envoy asks about.
        let span = trace::check_span(
            request
                .get_ref()
                .attributes
                .as_ref()
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref())
                .map(|http| &http.headers),
            request.metadata().as_ref(),
        );
        let request = request.into_inner();
        let decision = self
            .decide
            .decide(
                authorization_header(&request),
                ProofInputs::from_check(&request),
                "Check",
            )
            .instrument(span)
            .await;
        let response = match decision {
            Decision::Allow {
                set, remove, nonce, ..
            } => pb::CheckResponse {
                status: Some(pb::google::rpc::Status {
                    code: OK,
                    ..Default::default()
                }),
                http_response: Some(pb::check_response::HttpResponse::OkResponse(
                    pb::OkHttpResponse {
                        headers: set.into_iter().map(|(k, v)| overwrite(k, v)).collect(),
                        headers_to_remove: remove,
                        // The client's next proof needs it: added to Envoy's answer to it.
                        response_headers_to_add: nonce
                            .map(|n| overwrite(DPOP_NONCE.into(), n))
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
            Decision::Deny {
                challenge,
                reason,
                nonce,
            } => pb::CheckResponse {
                status: Some(pb::google::rpc::Status {
                    code: UNAUTHENTICATED,
                    message: reason
                        .map_or("missing bearer token", |r| proto_reason(r).as_str_name())
                        .to_owned(),
                    ..Default::default()
                }),
                http_response: Some(pb::check_response::HttpResponse::DeniedResponse(
                    pb::DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: StatusCode::Unauthorized as i32,
                        }),
                        headers: std::iter::once(overwrite("www-authenticate".into(), challenge))
                            .chain(nonce.map(|n| overwrite(DPOP_NONCE.into(), n)))
                            .collect(),
                        body: String::new(),
                    },
                )),
                ..Default::default()
            },
            Decision::Unavailable => {
                return Err(Status::unavailable(
                    "the sidecar cannot answer safely: the store is unreachable",
                ));
            }
        };
        Ok(Response::new(response))
    }
}
