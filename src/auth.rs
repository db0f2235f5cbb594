//! Optional bearer-token authentication (`--auth-token-file`) for the OTLP
//! receivers and the API. Tokens are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The token every request must present as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from a file (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// When the file cannot be read or holds no token.
    pub fn from_file(path: &std::path::Path) -> Result<Token, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("{}: no token in the file", path.display()));
        }
        Ok(Token(t.as_bytes().into()))
    }

    /// Whether an `authorization` header value carries this token.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(v) = header else {
            return false;
        };
        let Some(given) = v
            .strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "))
        else {
            return false;
        };
        bool::from(given.ct_eq(&self.0))
    }
}

/// axum middleware: 401 unless the request carries the token.
pub async fn require(State(token): State<Option<Token>>, req: Request, next: Next) -> Response {
    match &token {
        Some(t)
            if !t.accepts(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            ) =>
        {
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token\n",
            )
                .into_response()
        }
        _ => next.run(req).await,
    }
}

/// gRPC interceptor: UNAUTHENTICATED unless the request carries the token.
#[derive(Clone, Debug)]
pub struct GrpcAuth(pub Option<Token>);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.0 {
            Some(t) if !t.accepts(req.metadata().get("authorization").map(|v| v.as_bytes())) => {
                Err(tonic::Status::unauthenticated(
                    "missing or wrong bearer token",
                ))
            }
            _ => Ok(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_check() {
        let t = Token(b"s3cret".as_slice().into());
        assert!(t.accepts(Some(b"Bearer s3cret")));
        assert!(!t.accepts(Some(b"Bearer s3cret2")));
        assert!(!t.accepts(Some(b"Bearer s3cre")));
        assert!(!t.accepts(Some(b"s3cret")));
        assert!(!t.accepts(Some(b"Basic s3cret")));
        assert!(!t.accepts(None));
    }
}
