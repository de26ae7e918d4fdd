//! The shared secret between a coordinator and its workers and clients, and TLS settings.
//!
//! Every call carries `authorization: Bearer <token>`; the coordinator compares it in constant
//! time. [`ClientAuth`] is the client side's interceptor; [`token_matches`] the server's check.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// Reads a token from `--token`, or else from a file (trimmed). A token given but empty is an
/// error, never "no token": a coordinator must not fail open because a secret file was empty.
pub fn load_token(inline: Option<&str>, file: Option<&Path>) -> Result<Option<String>, String> {
    let token = match (inline, file) {
        (Some(t), _) => t.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading token file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err("the token is empty (unset SWEEP_TOKEN / --token-file to run without one)".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be printable ASCII without spaces".into());
    }
    Ok(Some(token))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    let mut diff = (expected.len() ^ presented.len()) as u8 | u8::from(expected.len() != presented.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ presented.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Adds the bearer token to every outgoing call.
#[derive(Clone, Default)]
pub struct ClientAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl ClientAuth {
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = token
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        Ok(ClientAuth { header })
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// How a client reaches the coordinator: its URL, token and (for https) the CA to trust.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub url: String,
    pub token: Option<String>,
    /// PEM certificate of the CA that signed the coordinator's certificate (or the certificate
    /// itself, when self-signed).
    pub tls_ca: Option<PathBuf>,
    /// The name in the coordinator's certificate, when it differs from the URL's host.
    pub tls_domain: Option<String>,
}

impl ConnectOptions {
    /// An endpoint for the URL, with TLS set up for `https://` URLs.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let mut endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|e| format!("coordinator URL '{}': {e}", self.url))?;
        if self.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                let pem = std::fs::read(ca).map_err(|e| format!("reading CA certificate {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS settings: {e}"))?;
        } else if self.tls_ca.is_some() {
            return Err(format!("--tls-ca needs an https:// coordinator URL, got '{}'", self.url));
        }
        Ok(endpoint)
    }

    pub fn auth(&self) -> Result<ClientAuth, String> {
        ClientAuth::new(self.token.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secret", b"secreT"));
        assert!(!token_matches(b"secret", b"secret2"));
        assert!(!token_matches(b"secret", b"secre"));
        assert!(!token_matches(b"secret", b""));
        assert!(token_matches(b"", b""));
    }

    #[test]
    fn tokens_load_from_flag_or_file() {
        let dir = tempfile_dir();
        let file = dir.join("token");
        std::fs::write(&file, "abc123\n").unwrap();
        assert_eq!(load_token(None, Some(&file)).unwrap().as_deref(), Some("abc123"));
        assert_eq!(load_token(Some("x"), Some(&file)).unwrap().as_deref(), Some("x"));
        assert_eq!(load_token(None, None).unwrap(), None);
        assert!(load_token(Some("has space"), None).is_err());
        assert!(load_token(Some(""), None).unwrap_err().contains("empty"));
        std::fs::write(&file, "\n").unwrap();
        assert!(load_token(None, Some(&file)).unwrap_err().contains("empty"));
        assert!(load_token(None, Some(&dir.join("missing"))).unwrap_err().contains("reading token file"));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sweep-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
