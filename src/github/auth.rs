//! How the client authenticates: one token (`GITHUB_TOKEN`), or as a GitHub App
//! (`GITHUB_APP_ID` + `GITHUB_APP_PRIVATE_KEY`): an RS256 JWT signed with the App's key buys a
//! token per installation, which expires within the hour. Installation tokens are cached per
//! warm instance and reused until 5 minutes before they expire; none of them is ever logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::domain::Deadline;
use crate::domain::ports::{Clock, GitHubError};
use crate::domain::types::RepoFullName;

use super::client::API_VERSION;

/// An installation token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The App's identity, checked at cold start.
#[derive(Clone)]
pub struct AppCredentials {
    pub app_id: u64,
    key: EncodingKey,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("GITHUB_APP_PRIVATE_KEY is not an RSA private key in PEM form (as GitHub gives it): {0}")]
pub struct BadAppKey(String);

impl AppCredentials {
    /// `pem` as GitHub gives it; a key pasted on one line with literal `\n` is accepted too.
    pub fn new(app_id: u64, pem: &SecretString) -> Result<Self, BadAppKey> {
        let pem = pem.expose_secret().replace("\\n", "\n");
        let key = EncodingKey::from_rsa_pem(pem.trim().as_bytes()).map_err(|e| BadAppKey(e.to_string()))?;
        let credentials = Self { app_id, key };
        // A key that parses but cannot sign fails here, at init, not on the first delivery.
        credentials.jwt(1_800_000_000).map_err(|e| BadAppKey(e.to_string()))?;
        Ok(credentials)
    }

    /// The App's JWT at `now` (Unix seconds): issued 60 s in the past against clock drift,
    /// expiring 9 minutes ahead (GitHub allows at most 10).
    pub fn jwt(&self, now: u64) -> Result<SecretString, GitHubError> {
        #[derive(Serialize)]
        struct Claims {
            iat: u64,
            exp: u64,
            iss: String,
        }
        let claims = Claims { iat: now - 60, exp: now + 9 * 60, iss: self.app_id.to_string() };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(SecretString::from)
            .map_err(|e| GitHubError::BadResponse(format!("could not sign the App JWT: {e}")))
    }
}

/// The way this deployment authenticates, as configured.
#[derive(Clone, Debug)]
pub enum AuthConfig {
    Token(SecretString),
    App(AppCredentials),
}

struct CachedToken {
    token: SecretString,
    expires_at: u64,
}

/// Hands out the `Authorization` header for a repository.
pub struct GitHubAuth {
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    /// Installation id per repository (its key form), from deliveries or looked up.
    installations: Mutex<HashMap<String, u64>>,
    /// Per installation and repository (its key form): each token reaches one repository.
    tokens: Mutex<HashMap<(u64, String), CachedToken>>,
}

impl GitHubAuth {
    pub fn new(config: AuthConfig, clock: Arc<dyn Clock>) -> Self {
        Self { config, clock, installations: Default::default(), tokens: Default::default() }
    }

    pub fn is_app(&self) -> bool {
        matches!(self.config, AuthConfig::App(_))
    }

    /// The App's id, in App mode.
    pub fn app_id(&self) -> Option<u64> {
        match &self.config {
            AuthConfig::App(app) => Some(app.app_id),
            AuthConfig::Token(_) => None,
        }
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    /// Remembers the installation a delivery named for its repository.
    pub fn remember_installation(&self, repo: &RepoFullName, installation: u64) {
        if let Ok(mut map) = self.installations.lock() {
            map.insert(repo.key(), installation);
        }
    }

    /// After a 401: the cached token of `repo`'s installation is dropped, so the next request
    /// buys a fresh one.
    pub fn forget_token(&self, repo: &RepoFullName) {
        let installation = self.installations.lock().ok().and_then(|m| m.get(&repo.key()).copied());
        if let (Some(id), Ok(mut tokens)) = (installation, self.tokens.lock()) {
            tokens.remove(&(id, repo.key()));
        }
    }

    /// `Bearer <App JWT>`, for the App's own endpoints (`/app/...`).
    pub fn app_header(&self) -> Result<HeaderValue, GitHubError> {
        match &self.config {
            AuthConfig::App(app) => bearer(&app.jwt(self.now_secs())?),
            AuthConfig::Token(token) => bearer(token),
        }
    }

    /// `Bearer <token>` for calls on `repo`.
    pub async fn header_for(
        &self,
        http: &Client,
        base_url: &str,
        repo: &RepoFullName,
        deadline: &Deadline,
    ) -> Result<HeaderValue, GitHubError> {
        let app = match &self.config {
            AuthConfig::Token(token) => return bearer(token),
            AuthConfig::App(app) => app,
        };
        let known = self.installations.lock().ok().and_then(|m| m.get(&repo.key()).copied());
        let installation = match known {
            Some(id) => id,
            None => {
                let id = self.find_installation(http, base_url, app, repo, deadline).await?;
                self.remember_installation(repo, id);
                id
            }
        };
        let now = self.now_secs();
        if let Some(cached) = self.tokens.lock().ok().and_then(|t| {
            t.get(&(installation, repo.key()))
                .filter(|c| c.expires_at > now + RENEW_BEFORE.as_secs())
                .map(|c| c.token.expose_secret().to_owned())
        }) {
            return bearer(&SecretString::from(cached));
        }
        let fresh = self.buy_token(http, base_url, app, installation, repo, deadline).await?;
        let header = bearer(&fresh.token);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert((installation, repo.key()), fresh);
        }
        header
    }

    async fn find_installation(
        &self,
        http: &Client,
        base_url: &str,
        app: &AppCredentials,
        repo: &RepoFullName,
        deadline: &Deadline,
    ) -> Result<u64, GitHubError> {
        #[derive(Deserialize)]
        struct Installation {
            id: u64,
        }
        let resp = app_request(http, reqwest::Method::GET, &format!("{base_url}/repos/{repo}/installation"), deadline)
            .header(AUTHORIZATION, bearer(&app.jwt(self.now_secs())?)?)
            .send()
            .await
            .map_err(|e| GitHubError::Unavailable(format!("installation lookup: {}", transport(&e))))?;
        match resp.status() {
            StatusCode::OK => {
                resp.json::<Installation>().await.map(|i| i.id).map_err(|e| GitHubError::BadResponse(e.to_string()))
            }
            status if status.is_server_error() => {
                Err(GitHubError::Unavailable(format!("installation lookup: {status}")))
            }
            status => Err(GitHubError::Api {
                status: status.as_u16(),
                message: format!("the App is not installed on {repo} (or its JWT was refused)"),
            }),
        }
    }

    async fn buy_token(
        &self,
        http: &Client,
        base_url: &str,
        app: &AppCredentials,
        installation: u64,
        repo: &RepoFullName,
        deadline: &Deadline,
    ) -> Result<CachedToken, GitHubError> {
        #[derive(Deserialize)]
        struct AccessToken {
            token: String,
            expires_at: String,
        }
        let url = format!("{base_url}/app/installations/{installation}/access_tokens");
        // Scoped to the one repository, and to what the function does (github-app-manifest.json),
        // whatever more the installation grants: a leaked token reaches nothing else.
        let name = repo.as_str().split_once('/').map_or(repo.as_str(), |(_, name)| name);
        // What every feature of a GitHub App needs (src/domain/features.rs, which the manifest is
        // checked against): one list, so a new feature's permission is asked for as soon as it
        // is in the manifest.
        let permissions: serde_json::Map<String, serde_json::Value> = crate::domain::features::permissions(true)
            .iter()
            .map(|(permission, access)| (permission.key.to_owned(), serde_json::Value::from(access.as_str())))
            .collect();
        let mut scope = serde_json::json!({ "repositories": [name], "permissions": permissions });
        let ask = |scope: &serde_json::Value| -> Result<_, GitHubError> {
            Ok(app_request(http, reqwest::Method::POST, &url, deadline)
                .header(AUTHORIZATION, bearer(&app.jwt(self.now_secs())?)?)
                .json(scope)
                .send())
        };
        let unavailable =
            |e: reqwest::Error| GitHubError::Unavailable(format!("installation token: {}", transport(&e)));
        let mut resp = ask(&scope)?.await.map_err(unavailable)?;
        if resp.status() == StatusCode::UNPROCESSABLE_ENTITY {
            // An installation that has not approved every permission the App now asks for (an
            // App created before they were in the manifest): scoped to the repository only.
            warn!(
                installation,
                "the installation lacks some of the App's permissions; token scoped to the repository only"
            );
            scope.as_object_mut().map(|s| s.remove("permissions"));
            resp = ask(&scope)?.await.map_err(unavailable)?;
        }
        let status = resp.status();
        if status.is_server_error() {
            return Err(GitHubError::Unavailable(format!("installation token: GitHub answered {status}")));
        }
        if status != StatusCode::CREATED {
            return Err(GitHubError::Api {
                status: status.as_u16(),
                message: "GitHub refused the App's installation token request (check GITHUB_APP_ID and the key)"
                    .to_owned(),
            });
        }
        let body: AccessToken = resp.json().await.map_err(|e| GitHubError::BadResponse(e.to_string()))?;
        let expires_at = humantime::parse_rfc3339(&body.expires_at)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(self.now_secs() + 3600, |d| d.as_secs());
        debug!(installation, "installation token obtained");
        Ok(CachedToken { token: SecretString::from(body.token), expires_at })
    }
}

fn app_request(http: &Client, method: reqwest::Method, url: &str, deadline: &Deadline) -> reqwest::RequestBuilder {
    http.request(method, url)
        .header(ACCEPT, "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION)
        .timeout(deadline.cap(Duration::from_secs(4)))
}

fn transport(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() { "timed out" } else { "could not connect" }
}

fn bearer(token: &SecretString) -> Result<HeaderValue, GitHubError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        .map_err(|_| GitHubError::BadResponse("a token holds characters not allowed in a header".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// A fresh RSA key pair, as PKCS#8 PEM and the public key's DER (never committed).
    pub fn test_key_pair() -> (SecretString, Vec<u8>) {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeyPair, KeySize};
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine;
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = pair.as_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        (SecretString::from(pem), pair.public_key().as_ref().to_vec())
    }

    #[test]
    fn the_app_jwt_is_rs256_with_the_window_github_wants() {
        let (pem, public) = test_key_pair();
        let app = AppCredentials::new(4242, &pem).unwrap();
        let now = 1_900_000_000;
        let jwt = app.jwt(now).unwrap();
        #[derive(Deserialize)]
        struct Claims {
            iat: u64,
            exp: u64,
            iss: String,
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "exp"]);
        let decoded =
            jsonwebtoken::decode::<Claims>(jwt.expose_secret(), &DecodingKey::from_rsa_der(&public), &validation)
                .unwrap();
        assert_eq!(decoded.header.alg, Algorithm::RS256);
        assert_eq!(decoded.claims.iss, "4242");
        assert_eq!(decoded.claims.iat, now - 60);
        assert!(decoded.claims.exp > now && decoded.claims.exp - decoded.claims.iat <= 600);
        assert!(!format!("{app:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_key_that_is_not_an_rsa_pem_fails_with_the_variable_named() {
        for bad in ["", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"] {
            let err = AppCredentials::new(1, &SecretString::from(bad.to_owned())).unwrap_err().to_string();
            assert!(err.contains("GITHUB_APP_PRIVATE_KEY"), "{err}");
        }
        // One line with literal \n, as some secret stores keep it.
        let (pem, _) = test_key_pair();
        let one_line = SecretString::from(pem.expose_secret().replace('\n', "\\n"));
        assert!(AppCredentials::new(1, &one_line).is_ok());
    }
}
