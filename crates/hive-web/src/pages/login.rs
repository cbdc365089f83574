//! Logging in with the token: the form, and its check, which hands the token back as a
//! `SameSite=Strict`, `HttpOnly` cookie.

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use crate::AppState;
use crate::view::layout;

pub async fn form() -> Response {
    layout(
        "Log in",
        html! {
            form method="post" action="/login" {
                input type="password" name="token" placeholder="token" autofocus;
                button type="submit" { "Log in" }
            }
        },
    )
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct Login {
    token: String,
}

pub async fn submit(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(l): Form<Login>,
) -> Response {
    if !s.security.accepts(&l.token) {
        s.security.after_wrong_token().await;
        return (
            StatusCode::UNAUTHORIZED,
            layout("Log in", html! { p class="error" { "wrong token" } }),
        )
            .into_response();
    }
    let mut r = Redirect::to("/").into_response();
    if let Some(c) = s.security.cookie(&headers) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}
