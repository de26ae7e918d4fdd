//! The coordinator's gate: every call must carry the configured bearer token.

use sweep_shared::auth::token_matches;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` on every call; lets everything through without a token.
#[derive(Clone)]
pub struct RequireToken {
    expected: Option<Vec<u8>>,
}

impl RequireToken {
    pub fn new(token: Option<&str>) -> Self {
        RequireToken { expected: token.map(|t| t.as_bytes().to_vec()) }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing token: pass --token or SWEEP_TOKEN"))?;
        if token_matches(expected, presented.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("wrong token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        request
    }

    #[test]
    fn calls_without_the_right_token_are_unauthenticated() {
        let mut gate = RequireToken::new(Some("s3cret"));
        assert!(gate.call(with_header(Some("Bearer s3cret"))).is_ok());
        for bad in [None, Some("Bearer wrong"), Some("s3cret"), Some("Bearer ")] {
            let status = gate.call(with_header(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(RequireToken::new(None).call(with_header(None)).is_ok());
    }
}
