//! Inference API keys on the public API (SPEC §8): when keys are configured, the chat endpoints
//! (`POST /v1/chat/completions`, `POST /api/chat`) require `Authorization: Bearer <key>`;
//! `/api/status`, `/api/models`, `/v1/models`, `/metrics` and the web pages stay open.
//!
//! Keys come from `CLOSEDMESH_API_KEYS` (separated by commas or whitespace) and/or a file
//! (`--api-keys-file`, `CLOSEDMESH_API_KEYS_FILE`, `api_keys_file`: one key per line, `#`
//! comments) — never from the command line. Only their SHA-256 digests are kept, and a presented
//! key is compared digest to digest, so neither memory dumps nor timing give a key away.

use crate::error::ApiError;
use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The accepted keys; none configured means the API is open.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

/// Why a chat was refused (the `reason_code` of the 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    MissingApiKey,
    /// A key that is not one of the configured ones.
    InvalidApiKey,
}

impl Refusal {
    pub fn reason_code(self) -> &'static str {
        match self {
            Refusal::MissingApiKey => "missing_api_key",
            Refusal::InvalidApiKey => "invalid_api_key",
        }
    }
}

impl ApiKeys {
    pub fn open() -> ApiKeys {
        ApiKeys::default()
    }

    pub fn from_keys<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> ApiKeys {
        let mut digests: Vec<[u8; 32]> = keys
            .into_iter()
            .map(|k| k.as_ref().trim().to_string())
            .filter(|k| !k.is_empty())
            .map(|k| digest(&k))
            .collect();
        digests.sort_unstable();
        digests.dedup();
        ApiKeys { digests }
    }

    /// Keys from the environment value (`CLOSEDMESH_API_KEYS`) and a keys file, together.
    pub fn load(env_value: Option<&str>, file: Option<&Path>) -> anyhow::Result<ApiKeys> {
        let mut keys: Vec<String> = env_value
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(str::to_string)
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API keys file {}", path.display()))?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        Ok(ApiKeys::from_keys(keys))
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks a request's `Authorization` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if !self.is_enabled() {
            return Ok(());
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or(Refusal::MissingApiKey)?;
        let d = digest(presented);
        if self.digests.contains(&d) {
            Ok(())
        } else {
            Err(Refusal::InvalidApiKey)
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The 401 a refused chat gets: the usual JSON error plus `WWW-Authenticate: Bearer`.
pub fn refusal_response(refusal: Refusal) -> Response<Body> {
    let message = match refusal {
        Refusal::MissingApiKey => "this API needs a key: send `Authorization: Bearer <key>`",
        Refusal::InvalidApiKey => "the API key is not valid for this entry",
    };
    let mut resp = ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "invalid_request_error",
        reason_code: refusal.reason_code(),
        message: message.to_string(),
        retry_after: None,
    }
    .into_response();
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// axum middleware (`middleware::from_fn_with_state`): passes requests with a valid key (or any
/// request when no key is configured), refuses the rest with 401, and calls `on_refusal`.
pub async fn require_key(
    State(guard): State<KeyGuard>,
    req: Request,
    next: Next,
) -> Response<Body> {
    match guard.keys.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::info!(
                path = req.uri().path(),
                reason = refusal.reason_code(),
                "chat refused: API key"
            );
            if let Some(hook) = &guard.on_refusal {
                hook(refusal);
            }
            refusal_response(refusal)
        }
    }
}

/// The keys a router checks, and who hears about refusals (metrics).
#[derive(Clone)]
pub struct KeyGuard {
    pub keys: Arc<ApiKeys>,
    pub on_refusal: Option<Arc<dyn Fn(Refusal) + Send + Sync>>,
}

impl fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.keys.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_keys_are_checked_against_the_configured_set() {
        let keys = ApiKeys::from_keys(["sk-one", " sk-two ", ""]);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.check(&auth("Bearer sk-one")), Ok(()));
        assert_eq!(keys.check(&auth("bearer  sk-two")), Ok(()));
        assert_eq!(
            keys.check(&auth("Bearer sk-three")),
            Err(Refusal::InvalidApiKey)
        );
        assert_eq!(
            keys.check(&auth("Basic c2stb25l")),
            Err(Refusal::MissingApiKey)
        );
        assert_eq!(keys.check(&auth("Bearer ")), Err(Refusal::MissingApiKey));
        assert_eq!(keys.check(&HeaderMap::new()), Err(Refusal::MissingApiKey));
        // No keys: open.
        assert_eq!(ApiKeys::open().check(&HeaderMap::new()), Ok(()));
        assert!(!format!("{keys:?}").contains("sk-"));
    }

    #[test]
    fn keys_load_from_the_environment_and_a_file_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# team keys\nsk-file-a\n\n  sk-file-b  \n").unwrap();
        let keys = ApiKeys::load(Some("sk-env-1, sk-env-2"), Some(&file)).unwrap();
        assert_eq!(keys.len(), 4);
        for k in ["sk-env-1", "sk-env-2", "sk-file-a", "sk-file-b"] {
            assert_eq!(keys.check(&auth(&format!("Bearer {k}"))), Ok(()), "{k}");
        }
        assert_eq!(
            keys.check(&auth("Bearer # team keys")),
            Err(Refusal::InvalidApiKey)
        );
        assert!(ApiKeys::load(None, Some(Path::new("/nonexistent/keys"))).is_err());
        assert!(!ApiKeys::load(Some(" , "), None).unwrap().is_enabled());
    }
}
