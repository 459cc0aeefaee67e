//! Credentials: only SHA-256 hashes are stored; the presented secret is
//! hashed, looked up, and compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine as _;
use datask_core::TenantId;
use datask_core::store::{Credential, CredentialKind, Level};
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

/// What a caller may do within its tenant; each includes the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read tasks and download results (the app token; the viewer level).
    Viewer,
    /// Also create, update, execute, cancel and upload.
    Operator,
    /// Also delete tasks, settings, segments.
    Manager,
    /// A privileged key: everything in its tenant.
    Full,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Viewer => "viewer",
            Access::Operator => "operator",
            Access::Manager => "manager",
            Access::Full => "privileged",
        }
    }
}

impl From<Level> for Access {
    fn from(l: Level) -> Self {
        match l {
            Level::Viewer => Access::Viewer,
            Level::Operator => Access::Operator,
            Level::Manager => Access::Manager,
        }
    }
}

/// The authenticated caller of a tenant route.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub access: Access,
}

impl Caller {
    /// 403 unless the caller has at least `needed`.
    pub fn require(&self, needed: Access) -> Result<(), ApiError> {
        if self.access >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs {} access; this credential has {}",
                needed.name(),
                self.access.name()
            )))
        }
    }
}

/// The tenant an admin user names: `X-Chain-Id` header or `chain` query parameter.
fn named_chain(parts: &Parts) -> Result<TenantId, ApiError> {
    let raw = match parts.headers.get("x-chain-id") {
        Some(v) => Some(v.to_str().unwrap_or("").to_string()),
        None => parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("chain=").map(|v| v.to_string()))
        }),
    };
    let raw = raw.ok_or_else(|| {
        ApiError::invalid("X-Chain-Id", "an admin user must name the tenant with the X-Chain-Id header or the chain query parameter")
    })?;
    raw.trim()
        .parse::<TenantId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid("X-Chain-Id", format!("'{raw}' is not a tenant id")))
}

/// Keys (app tokens and privileged keys) this process has seen lately, by
/// hash. A key is looked up on every request, and on PostgreSQL that lookup
/// was one of a `GET`'s two round trips. Keys cannot be revoked through the
/// API; one deleted from the database by hand stops working here within
/// `CREDENTIAL_TTL`. Admin users' tokens and memberships are not cached: a
/// changed level applies at once.
#[derive(Default)]
pub struct CredentialCache {
    seen: Mutex<HashMap<String, (Credential, Instant)>>,
}

const CREDENTIAL_TTL: Duration = Duration::from_secs(10);
/// Past this many keys the cache starts over (it only ever saves lookups).
const CREDENTIAL_CACHE_MAX: usize = 10_000;

impl CredentialCache {
    fn get(&self, hash: &str) -> Option<Credential> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(hash)
            .filter(|(_, at)| at.elapsed() < CREDENTIAL_TTL)
            .map(|(c, _)| c.clone())
    }

    fn put(&self, cred: &Credential) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= CREDENTIAL_CACHE_MAX {
            seen.clear();
        }
        seen.insert(cred.secret_sha256.clone(), (cred.clone(), Instant::now()));
    }
}

async fn credential(state: &AppState, hash: &str) -> Result<Option<Credential>, ApiError> {
    if let Some(cred) = state.credentials.get(hash) {
        return Ok(Some(cred));
    }
    let found = state.store.credential_by_hash(hash).await?;
    if let Some(cred) = &found {
        state.credentials.put(cred);
    }
    Ok(found)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let hash = hash_secret(token);
        if let Some(cred) = credential(state, &hash).await? {
            if !bool::from(cred.secret_sha256.as_bytes().ct_eq(hash.as_bytes())) {
                return Err(ApiError::Unauthorized);
            }
            let access = match cred.kind {
                CredentialKind::PrivilegedKey => Access::Full,
                CredentialKind::AppToken => Access::Viewer,
            };
            return Ok(Caller {
                tenant_id: cred.tenant_id,
                access,
            });
        }
        let user = state
            .store
            .user_by_token(&hash)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let tenant_id = named_chain(parts)?;
        // Not a member and no such tenant look the same: no existence oracle.
        let level = state
            .store
            .membership(tenant_id, user.id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("tenant {tenant_id} not found")))?;
        Ok(Caller {
            tenant_id,
            access: level.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: TenantId) -> Credential {
        Credential {
            tenant_id: tenant,
            kind: CredentialKind::AppToken,
            secret_sha256: hash_secret(&format!("key-{tenant}")),
        }
    }

    #[test]
    fn keys_are_remembered_for_a_while_only() {
        let cache = CredentialCache::default();
        let fresh = key(1);
        cache.put(&fresh);
        assert_eq!(cache.get(&fresh.secret_sha256), Some(fresh.clone()));
        assert_eq!(cache.get(&key(2).secret_sha256), None);
        let stale = key(3);
        let long_ago = Instant::now()
            .checked_sub(CREDENTIAL_TTL + Duration::from_secs(1))
            .unwrap();
        cache
            .seen
            .lock()
            .unwrap()
            .insert(stale.secret_sha256.clone(), (stale.clone(), long_ago));
        assert_eq!(cache.get(&stale.secret_sha256), None, "past its time");
    }
}
