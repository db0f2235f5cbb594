//! OTLP/HTTP `POST /v1/traces`: protobuf and JSON, gzip, zstd and deflate accepted. Answers in
//! the request's content type.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use prost::Message;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::decompress::{self, DecompressError};
use super::Pipeline;
use crate::auth::Token;
use crate::live::Refusal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Why a request was not (fully) taken.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedType(String),
    #[error("unsupported content encoding {0:?}: use gzip, zstd, deflate or none")]
    UnsupportedEncoding(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("cannot decode the body: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<Pipeline>,
    max_message: usize,
}

/// The one place where errors become HTTP answers.
fn error_response(e: &HttpError, enc: Encoding) -> Response {
    let (code, grpc_code) = match e {
        HttpError::UnsupportedType(_) | HttpError::UnsupportedEncoding(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, 3)
        }
        HttpError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, 3),
        HttpError::Undecodable(_) => (StatusCode::BAD_REQUEST, 3),
        HttpError::Refused(Refusal::RateLimited { .. }) => (StatusCode::TOO_MANY_REQUESTS, 14),
        HttpError::Refused(r) if r.retryable() => (StatusCode::SERVICE_UNAVAILABLE, 14),
        HttpError::Refused(_) => (StatusCode::BAD_REQUEST, 3),
    };
    let status = RpcStatus {
        code: grpc_code,
        message: e.to_string(),
    };
    let body = match enc {
        Encoding::Protobuf => status.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&status).unwrap_or_default(),
    };
    let mut resp = (code, [(header::CONTENT_TYPE, enc.content_type())], body).into_response();
    if let HttpError::Refused(r) = e {
        if r.retryable() {
            // Retry-After takes whole seconds.
            let secs = r.retry_after().as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
    }
    resp
}

/// CORS for the receiver, so that browser pages of `origins` may send
/// (OTLP/JSON from the JavaScript SDK in a browser): a preflight is answered
/// before the token check (a browser sends it without one), and every
/// answer names the origin. With no origins it adds nothing, and browsers
/// may not send.
pub fn cors(origins: &[String]) -> tower::util::Either<CorsLayer, tower::layer::util::Identity> {
    use tower::util::Either;
    if origins.is_empty() {
        return Either::Right(tower::layer::util::Identity::new());
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let patterns = OriginPatterns::new(origins);
        AllowOrigin::predicate(move |origin, _| patterns.allow(origin.to_str().unwrap_or("")))
    };
    Either::Left(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::AUTHORIZATION,
                header::HeaderName::from_static("x-requested-with"),
            ])
            .expose_headers([header::RETRY_AFTER]),
    )
}

/// Allowed origins, whose `*`s stand for any characters (none included),
/// compared without regard to case, as hosts are: lowered once here, and an
/// origin once a request.
struct OriginPatterns(Vec<String>);

impl OriginPatterns {
    fn new(origins: &[String]) -> OriginPatterns {
        OriginPatterns(origins.iter().map(|o| o.to_ascii_lowercase()).collect())
    }

    fn allow(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.0.iter().any(|p| origin_matches(p, &origin))
    }
}

/// Whether `origin` matches `pattern` (both in lower case), whose `*`s
/// stand for any characters (none included).
fn origin_matches(pattern: &str, origin: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = origin.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole origin.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The router serving `POST /v1/traces` (behind the bearer-token check
/// when a token is set).
pub fn router(pipeline: Arc<Pipeline>, max_message: usize, token: Option<Token>) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            token,
            crate::auth::require,
        ))
        .with_state(HttpState {
            pipeline,
            max_message,
        })
}

fn encoding_of(headers: &HeaderMap) -> Result<Encoding, HttpError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(HttpError::UnsupportedType(ct.to_string())),
    }
}

fn decompress(headers: &HeaderMap, body: Bytes, max: usize) -> Result<Bytes, HttpError> {
    let ce = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if matches!(ce.as_str(), "" | "identity") {
        return Ok(body);
    }
    let decompress =
        decompress::for_encoding(&ce).ok_or_else(|| HttpError::UnsupportedEncoding(ce.clone()))?;
    match decompress(&body, max) {
        Ok(out) => Ok(Bytes::from(out)),
        Err(DecompressError::TooLarge(_)) => Err(HttpError::TooLarge(max)),
        Err(e) => Err(HttpError::Undecodable(format!("{ce}: {e}"))),
    }
}

async fn traces(State(s): State<HttpState>, req: axum::extract::Request) -> Response {
    let headers = req.headers().clone();
    let enc = match encoding_of(&headers) {
        Ok(e) => e,
        Err(e) => return error_response(&e, Encoding::Protobuf),
    };
    // A declared length over the limit is refused before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_message as u64) {
        return error_response(&HttpError::TooLarge(s.max_message), enc);
    }
    let body = match axum::body::to_bytes(req.into_body(), s.max_message).await {
        Ok(b) => b,
        Err(_) => return error_response(&HttpError::TooLarge(s.max_message), enc),
    };
    match export(&s, &headers, body, enc).await {
        Ok(resp) => {
            let body = match enc {
                Encoding::Protobuf => resp.encode_to_vec(),
                // OTLP/JSON omits an absent partial success rather than writing null.
                Encoding::Json if resp.partial_success.is_none() => b"{}".to_vec(),
                Encoding::Json => serde_json::to_vec(&resp).unwrap_or_default(),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, enc.content_type())],
                body,
            )
                .into_response()
        }
        Err(e) => error_response(&e, enc),
    }
}

async fn export(
    s: &HttpState,
    headers: &HeaderMap,
    body: Bytes,
    enc: Encoding,
) -> Result<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, HttpError>
{
    let raw = decompress(headers, body, s.max_message)?;
    if s.pipeline.stops_at_receive() {
        return Ok(Default::default());
    }
    match enc {
        Encoding::Protobuf => {
            let view = crate::lean::view::RequestView::parse_framing(&raw)
                .map_err(|e| HttpError::Undecodable(e.to_string()))?;
            Ok(s.pipeline.handle(super::Export::Wire(view, &raw)).await?)
        }
        Encoding::Json => {
            let req = crate::lean::json::decode(&raw)
                .map_err(|e| HttpError::Undecodable(e.to_string()))?;
            Ok(s.pipeline.handle(super::Export::Lean(&req)).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OriginPatterns;

    #[test]
    fn origins_match_exactly_or_by_wildcard() {
        let cases = [
            ("https://app.example.com", "https://app.example.com", true),
            ("https://app.example.com", "https://APP.example.com", true),
            ("https://App.Example.com", "https://app.example.com", true),
            (
                "https://app.example.com",
                "https://app.example.com.evil",
                false,
            ),
            ("https://app.example.com", "http://app.example.com", false),
            ("https://*.example.com", "https://a.b.example.com", true),
            ("https://*.example.com", "https://example.com", false),
            (
                "https://*.example.com",
                "https://x.example.com.evil.org",
                false,
            ),
            ("http://localhost:*", "http://localhost:5173", true),
            ("http://localhost:*", "http://127.0.0.1:5173", false),
            ("http://*:*", "http://h:1", true),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*", "anything", true),
        ];
        for (pattern, origin, want) in cases {
            let allowed = OriginPatterns::new(&[pattern.to_string()]).allow(origin);
            assert_eq!(allowed, want, "{pattern} {origin}");
        }
    }
}
