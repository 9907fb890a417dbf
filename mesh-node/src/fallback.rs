//! The external OpenAI-compatible provider behind the entry's [`Fallback`] seam (SPEC §6).
//!
//! A chat the fallback decision sends here goes to `<base_url>/chat/completions` with the
//! provider's model (the decision's `provider_model`, from the configured mapping) and the
//! provider's API key; everything else in the caller's request is passed as it came. The answer
//! streams back unchanged — the same `text/event-stream` chunks (or JSON body) a mesh host sends —
//! so callers never branch on the path. Provider failures become JSON errors with a stable
//! `reason_code` (`fallback_provider_error`, `fallback_provider_timeout`); the provider's own
//! error body is logged, never shown (it may name the account).
//!
//! The API key comes from `CLOSEDMESH_FALLBACK_API_KEY` or a file
//! (`--fallback-api-key-file`, `CLOSEDMESH_FALLBACK_API_KEY_FILE`, `fallback.api_key_file`),
//! never from the command line. Without a key the policy reads `fallback-disabled` and every
//! chat stays on the mesh.

use crate::entry::Fallback;
use crate::error::ApiError;
use crate::proxy::streamed_response;
use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use mesh_core::sla::{FallbackConfig, FallbackDecision};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the provider may take to send its response head by default.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The original's provider.
pub const OPENROUTER_BASE_URL: &str = "https://openrouter.ai/api/v1";

/// The `[fallback]` table of an entry's `--config` file. Everything is optional; the defaults
/// are OpenRouter with the original's mapping and 20 requests per IP per hour.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackFile {
    /// Named in `x-closedmesh-fallback-provider` [default: openrouter].
    pub provider: Option<String>,
    /// The provider's OpenAI-compatible API root [default: https://openrouter.ai/api/v1].
    pub base_url: Option<String>,
    /// A file holding the provider's API key (the key itself never goes in this file or argv).
    pub api_key_file: Option<PathBuf>,
    /// Mesh model (full name or base name without quant) → provider model. Replaces the default
    /// mapping when given.
    pub model_map: Option<BTreeMap<String, String>>,
    pub per_ip_per_hour: Option<u32>,
    pub first_byte_timeout_s: Option<u64>,
}

/// The provider's API key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key read from a file or the environment: surrounding whitespace trimmed; empty is none.
    pub fn parse(text: &str) -> Option<ApiKey> {
        let key = text.trim();
        (!key.is_empty()).then(|| ApiKey(key.to_string()))
    }

    pub fn read_file(path: &Path) -> anyhow::Result<Option<ApiKey>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the fallback API key file {}", path.display()))?;
        Ok(ApiKey::parse(&text))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// The provider, resolved from the file, flags and environment.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub provider: String,
    pub base_url: String,
    pub api_key: Option<ApiKey>,
    pub model_map: BTreeMap<String, String>,
    pub per_ip_per_hour: u32,
    pub first_byte_timeout: Duration,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        let policy = FallbackConfig::default();
        ProviderSettings {
            provider: policy.provider,
            base_url: OPENROUTER_BASE_URL.to_string(),
            api_key: None,
            model_map: policy.model_map,
            per_ip_per_hour: policy.per_ip_per_hour,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }
}

impl ProviderSettings {
    /// Merges `file` over the defaults. The key: `key_env` (`CLOSEDMESH_FALLBACK_API_KEY`) wins
    /// over `key_file` (flag or env), which wins over the file's `api_key_file`.
    pub fn resolve(
        file: FallbackFile,
        base_url: Option<String>,
        key_env: Option<String>,
        key_file: Option<PathBuf>,
    ) -> anyhow::Result<ProviderSettings> {
        let d = ProviderSettings::default();
        let base_url = base_url.or(file.base_url).unwrap_or(d.base_url);
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            bail!("fallback base URL must be http(s), got {base_url:?}");
        }
        let api_key = match key_env.as_deref().and_then(ApiKey::parse) {
            Some(k) => Some(k),
            None => match key_file.or(file.api_key_file) {
                Some(path) => ApiKey::read_file(&path)?,
                None => None,
            },
        };
        Ok(ProviderSettings {
            provider: file.provider.unwrap_or(d.provider),
            base_url,
            api_key,
            model_map: file.model_map.unwrap_or(d.model_map),
            per_ip_per_hour: file.per_ip_per_hour.unwrap_or(d.per_ip_per_hour),
            first_byte_timeout: file
                .first_byte_timeout_s
                .map_or(d.first_byte_timeout, Duration::from_secs),
        })
    }

    /// What mesh-core's fallback decision reads.
    pub fn policy(&self) -> FallbackConfig {
        FallbackConfig {
            provider: self.provider.clone(),
            api_key_configured: self.api_key.is_some(),
            model_map: self.model_map.clone(),
            per_ip_per_hour: self.per_ip_per_hour,
        }
    }
}

/// An OpenAI-compatible chat-completions client (reqwest, rustls).
pub struct OpenAiProvider {
    policy: FallbackConfig,
    url: String,
    api_key: Option<ApiKey>,
    first_byte_timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("provider", &self.policy.provider)
            .field("url", &self.url)
            .field("api_key_configured", &self.api_key.is_some())
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    pub fn new(settings: ProviderSettings) -> anyhow::Result<OpenAiProvider> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .context("building the fallback provider's HTTP client")?;
        Ok(OpenAiProvider {
            policy: settings.policy(),
            url: format!(
                "{}/chat/completions",
                settings.base_url.trim_end_matches('/')
            ),
            api_key: settings.api_key,
            first_byte_timeout: settings.first_byte_timeout,
            client,
        })
    }

    /// `<base_url>/chat/completions`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Fallback for OpenAiProvider {
    fn config(&self) -> &FallbackConfig {
        &self.policy
    }

    fn chat(
        &self,
        decision: &FallbackDecision,
        mut request: Map<String, Value>,
    ) -> BoxFuture<'static, Response<Body>> {
        let Some(model) = decision.provider_model.clone() else {
            // A decision that fired always names the provider's model.
            return Box::pin(async {
                ApiError::upstream_error("fallback decision without a provider model")
                    .into_response()
            });
        };
        let Some(key) = self.api_key.clone() else {
            return Box::pin(async {
                ApiError::upstream_error("fallback provider has no API key").into_response()
            });
        };
        request.insert("model".into(), Value::String(model.clone()));
        let sent = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, format!("Bearer {}", key.0))
            .json(&request)
            .send();
        let timeout = self.first_byte_timeout;
        let url = self.url.clone();
        Box::pin(async move {
            let resp = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(%url, error = %e, "fallback provider failed before answering");
                    return provider_error(
                        StatusCode::BAD_GATEWAY,
                        "fallback_provider_error",
                        format!("the fallback provider could not be reached: {e}"),
                    );
                }
                Err(_) => {
                    tracing::warn!(%url, timeout_s = timeout.as_secs(), "fallback provider sent no response in time");
                    return provider_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "fallback_provider_timeout",
                        format!(
                            "the fallback provider did not answer within {} s",
                            timeout.as_secs()
                        ),
                    );
                }
            };
            let status = resp.status();
            if !status.is_success() {
                let body = resp.text().await.unwrap_or_default();
                let snippet: String = body.chars().take(512).collect();
                tracing::warn!(%url, status = status.as_u16(), body = %snippet, model, "fallback provider refused the chat");
                return provider_error(
                    StatusCode::BAD_GATEWAY,
                    "fallback_provider_error",
                    format!("the fallback provider answered {}", status.as_u16()),
                );
            }
            let content_type = resp.headers().get(CONTENT_TYPE).cloned();
            let stream = resp.bytes_stream().map_err(axum::Error::new);
            streamed_response(status, content_type, Body::from_stream(stream))
        })
    }
}

fn provider_error(
    status: StatusCode,
    reason_code: &'static str,
    message: String,
) -> Response<Body> {
    ApiError {
        status,
        kind: "server_error",
        reason_code,
        message,
        retry_after: None,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_the_environment_before_any_file_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "  sk-from-file\n").unwrap();
        let s = ProviderSettings::resolve(FallbackFile::default(), None, None, Some(file.clone()))
            .unwrap();
        assert_eq!(s.api_key, ApiKey::parse("sk-from-file"));
        assert!(s.policy().api_key_configured);
        let s = ProviderSettings::resolve(
            FallbackFile::default(),
            None,
            Some("sk-env".into()),
            Some(file),
        )
        .unwrap();
        assert_eq!(s.api_key, ApiKey::parse("sk-env"));
        assert!(!format!("{s:?}").contains("sk-env"));
        // An empty key is no key: the policy reads fallback-disabled.
        let s = ProviderSettings::resolve(FallbackFile::default(), None, Some(" \n".into()), None)
            .unwrap();
        assert!(!s.policy().api_key_configured);
        assert_eq!(s.base_url, OPENROUTER_BASE_URL);
        assert_eq!(s.per_ip_per_hour, 20);
    }

    #[test]
    fn a_configured_mapping_replaces_the_default_and_a_missing_key_file_is_an_error() {
        let file: FallbackFile = toml::from_str(
            r#"
provider = "acme"
base_url = "http://127.0.0.1:9/v1/"
per_ip_per_hour = 3
[model_map]
"SmolLM2-135M-Instruct" = "acme/smol"
"#,
        )
        .unwrap();
        let s = ProviderSettings::resolve(file, None, None, None).unwrap();
        let p = OpenAiProvider::new(s.clone()).unwrap();
        assert_eq!(p.url(), "http://127.0.0.1:9/v1/chat/completions");
        let policy = s.policy();
        assert_eq!(
            policy.provider_model("SmolLM2-135M-Instruct.Q4_1"),
            Some("acme/smol")
        );
        assert_eq!(policy.provider_model("Qwen3-8B-Q4_K_M"), None);
        assert_eq!(
            (policy.provider.as_str(), policy.per_ip_per_hour),
            ("acme", 3)
        );

        let err = ProviderSettings::resolve(
            FallbackFile::default(),
            None,
            None,
            Some("/nonexistent/key".into()),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/key"));
        assert!(
            ProviderSettings::resolve(FallbackFile::default(), Some("ftp://x".into()), None, None)
                .is_err()
        );
    }
}
