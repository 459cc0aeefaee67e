//! Credentials: only SHA-256 hashes are stored; the presented secret is
//! hashed, looked up, and compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use datask_core::TenantId;
use datask_core::store::CredentialKind;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn hash_secret(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// A new random secret with a readable prefix (`dtk_app_…`, `dtk_priv_…`).
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What a caller may do within its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read tasks and download results (the app token).
    Read,
    /// Everything (a privileged key).
    Full,
}

/// The authenticated caller of a tenant route.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub access: Access,
}

impl Caller {
    pub fn require_write(&self) -> Result<(), ApiError> {
        match self.access {
            Access::Full => Ok(()),
            Access::Read => Err(ApiError::Forbidden(
                "this credential may only read; use a privileged key".into(),
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let hash = hash_secret(token);
        let cred = state
            .store
            .credential_by_hash(&hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if !bool::from(cred.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(ApiError::Unauthorized);
        }
        let access = match cred.kind {
            CredentialKind::PrivilegedKey => Access::Full,
            CredentialKind::AppToken => Access::Read,
        };
        Ok(Caller {
            tenant_id: cred.tenant_id,
            access,
        })
    }
}

/// The root key of the server's configuration.
pub struct Root;

impl FromRequestParts<AppState> for Root {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.config.root_key_sha256 else {
            return Err(ApiError::NotFound(
                "the admin routes are off: start the server with DATASK_ROOT_KEY".into(),
            ));
        };
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        if bool::from(hash_secret(token).as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Root)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}
