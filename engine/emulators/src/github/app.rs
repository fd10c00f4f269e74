//! The GitHub App of the GitHub emulator: JWT verification (RS256, as GitHub checks it) and
//! the App's identity. Installation tokens live in the emulator's state.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::GitHubEmulatorError;

/// How long an installation token is valid by default: one hour, as on GitHub.
pub const DEFAULT_INSTALLATION_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The installation id [`GitHubAppOptions::new`] gives the App's installation on the
/// repository (deliberately unlike any App id, so mixing the two up fails).
pub const DEFAULT_INSTALLATION_ID: u64 = 424_242;

/// The longest a JWT may live: GitHub refuses an `exp` more than 10 minutes ahead, in seconds.
const MAX_JWT_LIFETIME_SECS: i64 = 600;

/// Clock drift GitHub tolerates on `iat`, in seconds.
const IAT_DRIFT_SECS: i64 = 60;

/// A GitHub App installed on the emulated repository.
#[derive(Clone)]
pub struct GitHubAppOptions {
    /// The App id: the JWT's `iss` (a number, or the number as a string).
    pub app_id: u64,
    /// The App's slug; its installation acts as `<slug>[bot]`.
    pub slug: String,
    /// The App's RSA public key, PEM (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`): JWTs
    /// must be signed (RS256) with the matching private key.
    pub public_key_pem: String,
    /// The id of the App's installation on the repository.
    pub installation_id: u64,
    /// How long installation tokens are valid ([`DEFAULT_INSTALLATION_TOKEN_TTL`]).
    pub token_ttl: Duration,
}

impl GitHubAppOptions {
    /// App `app_id` named `slug` with its public key (PEM), installation
    /// [`DEFAULT_INSTALLATION_ID`] and tokens valid for [`DEFAULT_INSTALLATION_TOKEN_TTL`].
    pub fn new(app_id: u64, slug: &str, public_key_pem: &str) -> Self {
        GitHubAppOptions {
            app_id,
            slug: slug.to_string(),
            public_key_pem: public_key_pem.to_string(),
            installation_id: DEFAULT_INSTALLATION_ID,
            token_ttl: DEFAULT_INSTALLATION_TOKEN_TTL,
        }
    }
}

impl std::fmt::Debug for GitHubAppOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubAppOptions")
            .field("app_id", &self.app_id)
            .field("slug", &self.slug)
            .field("installation_id", &self.installation_id)
            .field("token_ttl", &self.token_ttl)
            .finish_non_exhaustive()
    }
}

/// The App with its parsed public keys: `(key id, key)`, the key of [`GitHubAppOptions`] first
/// (id 1). A GitHub App may have up to 25 keys at once, so that a key can be rotated without
/// downtime (`docs/github.md`).
pub(super) struct App {
    pub opts: GitHubAppOptions,
    keys: std::sync::Mutex<Keys>,
}

/// The App's keys and the id the next one gets.
struct Keys {
    keys: Vec<(u64, DecodingKey)>,
    next_id: u64,
}

/// The most keys a GitHub App may have at once.
pub(super) const MAX_APP_KEYS: usize = 25;

/// GitHub's answers to a JWT it does not accept (all `401`).
pub(super) const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";
const JWT_EXPIRED: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
const JWT_TOO_LONG: &str = "'Expiration time' claim ('exp') is too far in the future";
const JWT_IAT: &str =
    "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
const JWT_ISS: &str = "'Issuer' claim ('iss') must be an Integer";

impl App {
    /// Parses the public key. Errors: [`GitHubEmulatorError::AppKey`].
    pub fn new(opts: GitHubAppOptions) -> Result<App, GitHubEmulatorError> {
        let key = parse_key(&opts.public_key_pem)?;
        Ok(App {
            opts,
            keys: std::sync::Mutex::new(Keys {
                keys: vec![(1, key)],
                next_id: 2,
            }),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the public key `public_key_pem` (PEM); returns its id.
    ///
    /// Errors: [`GitHubEmulatorError::AppKey`] for a key that does not parse, or when the App
    /// has [`MAX_APP_KEYS`] keys already.
    pub fn add_key(&self, public_key_pem: &str) -> Result<u64, GitHubEmulatorError> {
        let key = parse_key(public_key_pem)?;
        let mut keys = self.keys();
        if keys.keys.len() >= MAX_APP_KEYS {
            return Err(GitHubEmulatorError::AppKey(format!(
                "a GitHub App has at most {MAX_APP_KEYS} private keys"
            )));
        }
        let id = keys.next_id;
        keys.next_id += 1;
        keys.keys.push((id, key));
        Ok(id)
    }

    /// Deletes key `id`; returns whether it existed. JWTs signed with it are refused from now
    /// on.
    pub fn delete_key(&self, id: u64) -> bool {
        let mut keys = self.keys();
        let before = keys.keys.len();
        keys.keys.retain(|(k, _)| *k != id);
        keys.keys.len() != before
    }

    /// The login the App's installation acts as: `<slug>[bot]`.
    pub fn bot_login(&self) -> String {
        format!("{}[bot]", self.opts.slug)
    }

    /// Checks a JWT as GitHub does: RS256 signed with the App's key, `exp` in the future but
    /// at most 10 minutes ahead, `iat` not in the future (60 s drift), `iss` the App id.
    /// Returns the id of the key that signed it, or GitHub's message for a refused token.
    pub fn verify(&self, jwt: &str) -> Result<u64, &'static str> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        validation.validate_aud = false;
        let mut outcome = Err(JWT_UNDECODABLE);
        for (id, key) in self.keys().keys.iter() {
            match jsonwebtoken::decode::<Value>(jwt, key, &validation) {
                Ok(data) => {
                    outcome = Ok((*id, data.claims));
                    break;
                }
                Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    outcome = Err(JWT_EXPIRED);
                }
                Err(_) => {}
            }
        }
        let (key_id, claims) = outcome?;
        let now = chrono::Utc::now().timestamp();
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(JWT_EXPIRED)?;
        if exp <= now {
            return Err(JWT_EXPIRED);
        }
        if exp > now + MAX_JWT_LIFETIME_SECS {
            return Err(JWT_TOO_LONG);
        }
        let iat = claims.get("iat").and_then(Value::as_i64).ok_or(JWT_IAT)?;
        if iat > now + IAT_DRIFT_SECS {
            return Err(JWT_IAT);
        }
        let iss = match claims.get("iss") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse::<u64>().ok(),
            _ => None,
        }
        .ok_or(JWT_ISS)?;
        if iss != self.opts.app_id {
            return Err(JWT_UNDECODABLE);
        }
        Ok(key_id)
    }
}

/// Parses an RSA public key (PEM). Errors: [`GitHubEmulatorError::AppKey`].
fn parse_key(public_key_pem: &str) -> Result<DecodingKey, GitHubEmulatorError> {
    DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
        .map_err(|e| GitHubEmulatorError::AppKey(e.to_string()))
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts, a JSON header).
pub(super) fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

/// A fresh installation token: `ghs_` and 36 letters and digits, like GitHub's.
pub(super) fn new_installation_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("ghs_{a}{}", &b[..4])
}
