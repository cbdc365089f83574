//! The API's extractors: axum's `Query`, `Path` and `Json`, whose refusals (a `limit` that
//! is not a number, a path that is not UTF-8, a body that is not JSON) answer with the
//! API's `{"error": …}` body rather than axum's plain text, so a script reads every error
//! the same way. The status stays axum's (400 for bad input, 415 for a body that is not
//! JSON, 422 for JSON of the wrong shape).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Path, Query, Request};
use axum::http::request::Parts;
use axum::response::Response;
use serde::de::DeserializeOwned;

/// `Query<T>` for the API.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

/// `Path<T>` for the API.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub T);

/// `Json<T>` (a request's body) for the API; `Option<ApiJson<T>>` is `None` without a body.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r: QueryRejection| crate::api::error(r.status(), r.body_text()))
    }
}

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r: PathRejection| crate::api::error(r.status(), r.body_text()))
    }
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        <Json<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(json_refused)
    }
}

impl<T, S> OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Response> {
        <Json<T> as OptionalFromRequest<S>>::from_request(req, state)
            .await
            .map(|body| body.map(|Json(v)| ApiJson(v)))
            .map_err(json_refused)
    }
}

fn json_refused(r: JsonRejection) -> Response {
    crate::api::error(r.status(), r.body_text())
}
