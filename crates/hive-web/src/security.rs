//! Who may read and who may change: the bind rule (a non-loopback address needs a token),
//! the token check (a `SameSite=Strict` cookie, an `x-hive-token` header or a bearer
//! token), and the cross-site checks every mutation passes (POST only, same `Origin`,
//! no cross-site `Sec-Fetch-Site`).

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::{AppState, Error, Result};

/// The start of the name of the cookie that carries the token in a browser; the server's
/// port follows ([`Security::cookie_name`]).
pub const COOKIE: &str = "hive_token";
/// The header that carries the token for scripts and API callers.
pub const HEADER: &str = "x-hive-token";
/// The shortest token a dashboard bound beyond loopback takes.
pub const MIN_TOKEN_CHARS: usize = 16;
/// How long each wrong token holds the next: guesses are answered one at a time, at most
/// four a second in all, however many connections send them.
const WRONG_TOKEN_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// The dashboard's token, and whether reading needs it too.
#[derive(Clone)]
pub struct Security {
    token: String,
    /// True when the operator chose a token: then every page needs it (log in once).
    /// Without one (loopback only) pages are open to the local machine, and a random token,
    /// set as a cookie by every page, still guards the mutations against other sites.
    reads_need_token: bool,
    /// The cookie's name, `hive_token_<port>`: a browser keeps cookies per host, not per
    /// port, so two dashboards on one host under one name would overwrite each other's
    /// token and log each other out.
    cookie_name: String,
    /// Held through [`WRONG_TOKEN_PAUSE`] by each answer to a wrong token (a request with
    /// the right token, or none, never waits for it).
    wrong_tokens: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("token", &"<redacted>")
            .field("reads_need_token", &self.reads_need_token)
            .field("cookie_name", &self.cookie_name)
            .finish()
    }
}

/// Whether `c` may be in a token: what a `Cookie` header carries unquoted and a header value
/// reads back as text (a token with any other would lock everyone out: its cookie cannot be
/// set, its header never matches).
fn token_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\')
}

impl Security {
    /// The rule for `bind`: any address other than loopback needs a token. The cookie is
    /// named for `bind`'s port; [`Security::bound_to`] renames it once a port 0 is bound.
    pub fn for_bind(bind: SocketAddr, token: Option<String>) -> Result<Security> {
        let cookie_name = cookie_name(bind);
        // A token read from a file (a Kubernetes secret) ends with a newline the user did
        // not mean: dropped, as the spaces around it.
        let token = token.map(|t| t.trim().to_owned());
        match token {
            Some(t) if t.is_empty() => Err(Error::EmptyToken),
            Some(t) if let Some(c) = t.chars().find(|c| !token_char(*c)) => {
                Err(Error::UnusableToken {
                    what: format!("{c:?}"),
                })
            }
            Some(t) if !bind.ip().is_loopback() && t.chars().count() < MIN_TOKEN_CHARS => {
                Err(Error::WeakToken {
                    bind,
                    len: t.chars().count(),
                    min: MIN_TOKEN_CHARS,
                })
            }
            Some(token) => Ok(Security {
                token,
                reads_need_token: true,
                cookie_name,
                wrong_tokens: Default::default(),
            }),
            None if !bind.ip().is_loopback() => Err(Error::TokenRequired { bind }),
            None => {
                let mut bytes = [0u8; 24];
                getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
                Ok(Security {
                    token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
                    reads_need_token: false,
                    cookie_name,
                    wrong_tokens: Default::default(),
                })
            }
        }
    }

    /// The same rules, the cookie named for the address the server is bound to (the port
    /// the system chose, when asked for port 0).
    pub fn bound_to(self, bound: SocketAddr) -> Security {
        Security {
            cookie_name: cookie_name(bound),
            ..self
        }
    }

    /// The name of the cookie that carries the token: `hive_token_<port>`, for the port the
    /// server is bound to.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The cookie's name for a request: named for the port its `Host` gives, the one the
    /// browser keeps its cookies under (two containers bound to 8080 and published on 8081
    /// and 8082 are two dashboards to it), else for the bound port (a `Host` without one,
    /// behind a proxy on 80 or 443).
    pub fn cookie_name_for(&self, headers: &HeaderMap) -> String {
        let port = (headers.get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .and_then(|host| host.rsplit_once(':'))
            .map(|(_, port)| port)
            .filter(|port| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()));
        match port {
            Some(port) => format!("{COOKIE}_{port}"),
            None => self.cookie_name.clone(),
        }
    }

    /// Whether `given` is the token, in a time that depends on the token's length only
    /// (neither where a guess goes wrong nor whether its length is right shows).
    pub fn accepts(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        let differs = a
            .iter()
            .enumerate()
            .fold(u8::from(a.len() != b.len()), |acc, (i, x)| {
                acc | (x ^ b.get(i).copied().unwrap_or(!x))
            });
        differs == 0
    }

    /// Waits for the turn to answer a wrong token: one such answer at a time, each holding
    /// the next for [`WRONG_TOKEN_PAUSE`], so guessing a token over the network is hopeless
    /// while the right token is never slowed.
    pub(crate) async fn after_wrong_token(&self) {
        let _turn = self.wrong_tokens.lock().await;
        tokio::time::sleep(WRONG_TOKEN_PAUSE).await;
    }

    /// Whether the request carries some token, right or wrong.
    fn carries_token(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(HEADER)
            || headers.contains_key(header::AUTHORIZATION)
            || self.cookie_value(headers).is_some()
    }

    /// The value of the request's cookie of this dashboard, if it sends one.
    fn cookie_value<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let name = self.cookie_name_for(headers);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the request carries the token (cookie, header or bearer).
    pub fn authorised(&self, headers: &HeaderMap) -> bool {
        let header = headers.get(HEADER).and_then(|v| v.to_str().ok());
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = self.cookie_value(headers);
        [header, bearer, cookie]
            .into_iter()
            .flatten()
            .any(|t| self.accepts(t))
    }

    /// The `Set-Cookie` value that hands the token to a browser, in answer to a request
    /// with these `headers` ([`Security::cookie_name_for`]): never sent by another site's
    /// requests, never readable by scripts.
    /// Behind a TLS proxy (the login's origin is https, or the proxy says so), the cookie is
    /// `Secure`: never sent over plain http.
    pub fn cookie(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let https = text("origin").is_some_and(|o| o.starts_with("https://"))
            || text("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
        HeaderValue::from_str(&format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict{}",
            self.cookie_name_for(headers),
            self.token,
            if https { "; Secure" } else { "" }
        ))
        .ok()
    }
}

/// The cookie's name for a server bound to `bind`.
fn cookie_name(bind: SocketAddr) -> String {
    format!("{COOKIE}_{}", bind.port())
}

/// Why a request is refused, as the response says it.
fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// A mutation from another site: its `Origin` is not this server, or the browser says the
/// request is cross-site.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        // Either scheme: behind a TLS proxy the browser's origin is https, the Host the same.
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = host.is_some_and(|h| authority == Some(h));
        if !same {
            return Some("refused: the request's Origin is not this dashboard");
        }
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("same-origin" | "none") | None => None,
        Some(_) => Some("refused: a cross-site request cannot change anything"),
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port) names this
/// machine's loopback: `localhost`, `127.x.x.x` or `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware every request passes.
pub(crate) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let sec = &state.security;
    let path = req.uri().path().to_owned();
    let open = path == "/login"
        || path.starts_with("/assets/")
        || crate::probes::PATHS.contains(&path.as_str());
    // Without an operator's token the pages are open to this machine, and hand every
    // reader the token that mutations need. A site whose name a DNS rebinding points at
    // 127.0.0.1 would be "this machine" too, and same-origin with itself: so only the
    // loopback's own names are served.
    if !sec.reads_need_token
        && !crate::probes::PATHS.contains(&path.as_str())
        && !req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            // HTTP/2 names the host in the request's authority instead.
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .is_some_and(is_loopback_host)
    {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "refused: without a token this dashboard answers only to localhost, 127.0.0.1 \
             or [::1] (give it a token, --token or HIVE_UI_TOKEN, to serve another name)",
        );
    }
    let authorised = sec.authorised(req.headers());
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reading && !open {
        if let Some(why) = cross_site(req.headers()) {
            return refuse(StatusCode::FORBIDDEN, why);
        }
        if !authorised {
            if sec.carries_token(req.headers()) {
                sec.after_wrong_token().await;
            }
            return refuse(
                StatusCode::UNAUTHORIZED,
                "refused: changing anything needs the dashboard's token",
            );
        }
    }
    if reading && !open && sec.reads_need_token && !authorised {
        if sec.carries_token(req.headers()) {
            sec.after_wrong_token().await;
        }
        if path.starts_with("/api/") || path == "/metrics" || path == "/events" {
            return refuse(StatusCode::UNAUTHORIZED, "this dashboard needs its token");
        }
        return Redirect::to("/login").into_response();
    }
    let cookie = sec.cookie(req.headers());
    let mut response = next.run(req).await;
    if reading
        && !sec.reads_need_token
        && let Some(cookie) = cookie
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests;
