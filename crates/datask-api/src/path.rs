//! Path parameters whose mistakes answer in the API's error shape: axum's
//! own `Path` answers a plain-text 400 (e.g. for `/tasks/%ff`, not UTF-8).

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct PathArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathArgs(v)),
            Err(e) => Err(ApiError::invalid(
                "path",
                format!(
                    "the path {} cannot be read: {}",
                    parts.uri.path(),
                    e.body_text()
                ),
            )),
        }
    }
}
