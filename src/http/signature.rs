//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw body, hex, prefixed `sha256=`.
//!
//! Checked before anything reads the body, in constant time (`Mac::verify_slice`), against each
//! configured secret in turn so that a secret can be rotated without failed deliveries.

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::domain::types::Environment;
use std::collections::HashMap;

type HmacSha256 = Hmac<Sha256>;

/// A rotation list of secrets (`GITHUB_WEBHOOK_SECRET`, `HOOK_SIGNING_SECRET`): the first signs
/// what we send; any of them verifies.
#[derive(Clone)]
pub struct WebhookSecrets(Vec<SecretString>);

/// The deploy hooks' secrets, apart from the webhook's: `HOOK_SIGNING_SECRET` for every
/// environment and `HOOK_SIGNING_SECRET_<ENV>` for one (keyed by the environment's setting
/// suffix). An environment's list signs its hook calls and verifies its callbacks, and nothing
/// else: a hook secret never authenticates a GitHub delivery, nor another environment's callback.
#[derive(Clone, Debug, Default)]
pub struct HookSecrets {
    default: Option<WebhookSecrets>,
    by_environment: HashMap<String, WebhookSecrets>,
}

impl HookSecrets {
    pub fn new(default: Option<WebhookSecrets>, by_environment: HashMap<String, WebhookSecrets>) -> Self {
        Self { default, by_environment }
    }

    /// The same secrets for every environment.
    pub fn for_all(secrets: WebhookSecrets) -> Self {
        Self { default: Some(secrets), by_environment: HashMap::new() }
    }

    /// The secrets of `environment`'s hook: its own, else the default.
    pub fn for_environment(&self, environment: &Environment) -> Option<&WebhookSecrets> {
        self.by_environment.get(&environment.env_var_suffix()).or(self.default.as_ref())
    }

    /// The secrets held under `name` (`HOOK_SIGNING_SECRET` or `HOOK_SIGNING_SECRET_<NAME>`).
    pub fn named(&self, name: &crate::repo_config::SecretName) -> Option<&WebhookSecrets> {
        match name {
            crate::repo_config::SecretName::Default => self.default.as_ref(),
            crate::repo_config::SecretName::Named(suffix) => self.by_environment.get(suffix),
        }
    }

    /// The names of the secrets that verify `body`'s signature: a missing or malformed header
    /// is its error, no match an empty list.
    pub fn names_verifying(
        &self,
        header: Option<&[u8]>,
        body: &[u8],
    ) -> Result<Vec<crate::repo_config::SecretName>, SignatureError> {
        use crate::repo_config::SecretName;
        let mut names = Vec::new();
        let lists = self.default.iter().map(|s| (SecretName::Default, s));
        let lists = lists.chain(self.by_environment.iter().map(|(k, s)| (SecretName::Named(k.clone()), s)));
        for (name, secrets) in lists {
            match secrets.verify(header, body) {
                Ok(()) => names.push(name),
                Err(SignatureError::Mismatch) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(names)
    }

    /// Whether `HOOK_SIGNING_SECRET` is set, and the suffixes of the others.
    pub fn names(&self) -> (bool, std::collections::HashSet<String>) {
        (self.default.is_some(), self.by_environment.keys().cloned().collect())
    }

    /// Every list, with the setting it came from (for checks at init).
    pub fn lists(&self) -> impl Iterator<Item = (String, &WebhookSecrets)> {
        let default = self.default.iter().map(|s| ("HOOK_SIGNING_SECRET".to_owned(), s));
        default.chain(self.by_environment.iter().map(|(env, s)| (format!("HOOK_SIGNING_SECRET_{env}"), s)))
    }
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets([{} redacted])", self.0.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    #[error("the X-Hub-Signature-256 header is not of the form sha256=<64 hex digits>")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

impl WebhookSecrets {
    /// Splits a comma-separated list; blank entries are dropped. `None` when no secret is left.
    pub fn from_list(raw: &str) -> Option<Self> {
        let secrets: Vec<SecretString> =
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| SecretString::from(s.to_owned())).collect();
        (!secrets.is_empty()).then_some(Self(secrets))
    }

    /// Verifies `header` (the `X-Hub-Signature-256` value) over `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_digest = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
        let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
        if expected.len() != 32 {
            return Err(SignatureError::Malformed);
        }
        // Every secret is tried (no early exit on the first mismatch is needed for safety: each
        // comparison is constant time, and the number of secrets is not a secret).
        let matched = self.0.iter().any(|secret| mac(secret, body).verify_slice(&expected).is_ok());
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }

    /// Whether any secret of `self` is also one of `other`'s.
    pub fn shares_with(&self, other: &Self) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.expose_secret() == b.expose_secret()))
    }

    /// `sha256=<hex>` of `body` under the first (current) secret.
    pub fn sign(&self, body: &[u8]) -> String {
        let digest = self.0.first().map(|s| mac(s, body).finalize().into_bytes());
        format!("sha256={}", digest.map(hex::encode).unwrap_or_default())
    }
}

fn mac(secret: &SecretString, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail; `new_from_slice` only errs for MACs
    // with a fixed key size.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB_VECTOR: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn secrets(list: &str) -> WebhookSecrets {
        WebhookSecrets::from_list(list).unwrap()
    }

    #[test]
    fn githubs_documented_test_vector() {
        let s = secrets("It's a Secret to Everybody");
        assert_eq!(s.sign(b"Hello, World!"), GITHUB_VECTOR);
        assert_eq!(s.verify(Some(GITHUB_VECTOR.as_bytes()), b"Hello, World!"), Ok(()));
    }

    #[test]
    fn any_secret_of_the_list_verifies() {
        let s = secrets("new-secret, It's a Secret to Everybody");
        assert_eq!(s.verify(Some(GITHUB_VECTOR.as_bytes()), b"Hello, World!"), Ok(()));
        // The first secret is the one that signs.
        assert_ne!(s.sign(b"Hello, World!"), GITHUB_VECTOR);
    }

    #[test]
    fn rejects_missing_malformed_and_wrong_signatures() {
        let s = secrets("It's a Secret to Everybody");
        assert_eq!(s.verify(None, b"x"), Err(SignatureError::Missing));
        assert_eq!(s.verify(Some(b"sha1=abc"), b"x"), Err(SignatureError::Malformed));
        assert_eq!(s.verify(Some(b"sha256=zz"), b"x"), Err(SignatureError::Malformed));
        assert_eq!(s.verify(Some(b"sha256=abcd"), b"x"), Err(SignatureError::Malformed));
        assert_eq!(s.verify(Some(GITHUB_VECTOR.as_bytes()), b"Hello, World?"), Err(SignatureError::Mismatch));
        let upper = GITHUB_VECTOR.to_uppercase().replace("SHA256=", "sha256=");
        assert_eq!(s.verify(Some(upper.as_bytes()), b"Hello, World!"), Ok(()));
    }

    #[test]
    fn blank_lists_hold_no_secret_and_debug_never_shows_one() {
        assert!(WebhookSecrets::from_list(" , ,").is_none());
        let s = secrets("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
