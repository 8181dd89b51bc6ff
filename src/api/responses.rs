//! The HTTP answers every route shares: JSON bodies, OAuth-style errors, 503 with
//! `Retry-After`, and reading one form parameter — in a room of their own, so that the routes'
//! files use them without importing each other.
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::outcome::answered;
use crate::error_code::ErrorCode;

/// Largest form body read.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// 503 `OVERLOADED` with `Retry-After`: the caller has its share of open requests in progress.
pub(crate) fn overloaded() -> Response {
    answered(unavailable(), "unavailable", ErrorCode::Overloaded.as_str())
}

/// The one `name` parameter of an `application/x-www-form-urlencoded` body of at most 16 KiB,
/// at most `max_len` bytes long, or the 400 to answer.
pub(crate) async fn form_param(
    headers: &HeaderMap,
    body: Body,
    name: &str,
    max_len: usize,
) -> Result<String, Response> {
    let invalid = |why: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", Some(why));
    if !content_type_is(headers, "application/x-www-form-urlencoded") {
        return Err(invalid(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let bytes: Bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| invalid("the body is too large"))?;
    let mut found = None;
    for (param, value) in form_urlencoded::parse(&bytes) {
        if param == name {
            if found.is_some() {
                return Err(invalid(&format!("the {name} parameter is repeated")));
            }
            found = Some(value.into_owned());
        }
    }
    match found {
        None => Err(invalid(&format!("the {name} parameter is missing"))),
        Some(v) if v.len() > max_len => Err(invalid(&format!("the {name} is too long"))),
        Some(v) => Ok(v),
    }
}

/// Whether the request's media type (parameters aside) is `wanted`.
pub(crate) fn content_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn oauth_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    let mut body = json!({ "error": error });
    if let Some(d) = description {
        body["error_description"] = Value::from(d);
    }
    json_response(status, body)
}

/// 503 with `Retry-After`: the store did not answer.
pub(crate) fn unavailable() -> Response {
    let mut response = oauth_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        Some("the store is unreachable; nothing was decided or changed"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
