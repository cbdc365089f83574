//! The bind rule and the token check (no traffic: addresses are only parsed).
#![allow(clippy::unwrap_used)]

use axum::http::{HeaderMap, HeaderValue, header};

use super::{HEADER, Security, cross_site, is_loopback_host};
use crate::Error;

#[test]
fn a_non_loopback_bind_needs_a_token() {
    for addr in ["0.0.0.0:8080", "10.1.2.3:80", "[::]:8080"] {
        let e = Security::for_bind(addr.parse().unwrap(), None).unwrap_err();
        assert!(matches!(e, Error::TokenRequired { .. }), "{addr}: {e}");
        assert!(
            e.to_string().contains("--token or set HIVE_UI_TOKEN"),
            "{e}"
        );
        // Beyond loopback a guessable token is refused, naming the length it needs.
        let e = Security::for_bind(addr.parse().unwrap(), Some("hunter2".into())).unwrap_err();
        assert!(
            matches!(
                e,
                Error::WeakToken {
                    len: 7,
                    min: 16,
                    ..
                }
            ),
            "{addr}: {e}"
        );
        assert!(e.to_string().contains("at least 16"), "{e}");
        let strong = Some("0123456789abcdef".to_owned());
        assert!(Security::for_bind(addr.parse().unwrap(), strong).is_ok());
    }
    // On loopback the operator's token may be short: nothing beyond this machine asks.
    assert!(Security::for_bind("127.0.0.1:1".parse().unwrap(), Some("t".into())).is_ok());
    for addr in ["127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080"] {
        assert!(
            Security::for_bind(addr.parse().unwrap(), None).is_ok(),
            "{addr}"
        );
    }
    let e = Security::for_bind("127.0.0.1:1".parse().unwrap(), Some(" ".into())).unwrap_err();
    assert!(matches!(e, Error::EmptyToken));
}

/// A token read from a file keeps working without its newline; one a cookie or header
/// cannot carry is refused at start, naming the character, instead of locking everyone out.
#[test]
fn a_token_is_trimmed_and_one_no_cookie_can_carry_is_refused() {
    let bind = "127.0.0.1:1".parse().unwrap();
    let s = Security::for_bind(bind, Some("s3cret\n".into())).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(HEADER, HeaderValue::from_static("s3cret"));
    assert!(s.authorised(&headers));
    assert!(s.cookie(&HeaderMap::new()).is_some());
    for (token, named) in [
        ("a b", "' '"),
        ("a;b", "';'"),
        ("pässword", "'ä'"),
        ("a\"b", "'\"'"),
    ] {
        let e = Security::for_bind(bind, Some(token.into())).unwrap_err();
        assert!(matches!(e, Error::UnusableToken { .. }), "{token}: {e}");
        assert!(e.to_string().contains(named), "{token}: {e}");
    }
}

#[test]
fn the_token_is_read_from_header_bearer_or_cookie_only_when_equal() {
    let s = Security::for_bind("127.0.0.1:1".parse().unwrap(), Some("sekrit".into())).unwrap();
    let with = |name: header::HeaderName, v: &str| {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    };
    assert!(s.authorised(&with(HEADER.parse().unwrap(), "sekrit")));
    assert!(s.authorised(&with(header::AUTHORIZATION, "Bearer sekrit")));
    assert!(s.authorised(&with(header::COOKIE, "a=b; hive_token_1=sekrit")));
    assert!(!s.authorised(&with(header::COOKIE, "hive_token_1=sekri")));
    assert!(!s.authorised(&with(HEADER.parse().unwrap(), "sekrit2")));
    assert!(!s.authorised(&HeaderMap::new()));
    for wrong in [
        "",
        "s",
        "sekri",
        "sekrjt",
        "sekrit2",
        "sekritsekrit",
        "SEKRIT",
    ] {
        assert!(!s.accepts(wrong), "{wrong:?}");
    }
    assert!(
        !format!("{s:?}").contains("sekrit"),
        "Debug never shows the token"
    );
    let random = Security::for_bind("127.0.0.1:1".parse().unwrap(), None).unwrap();
    assert!(!random.accepts(""));
}

/// Browsers keep cookies per host, not per port: each dashboard's cookie is named for its
/// port, so two on one host keep their own tokens.
#[test]
fn the_cookie_is_named_for_the_servers_port() {
    let at = |port: u16| {
        let bind = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Security::for_bind(bind, Some("sekrit".into())).unwrap()
    };
    let (a, b) = (at(8080), at(8081));
    assert_eq!(a.cookie_name(), "hive_token_8080");
    let cookie = a.cookie(&HeaderMap::new()).unwrap();
    let cookie = cookie.to_str().unwrap();
    assert_eq!(
        cookie,
        "hive_token_8080=sekrit; Path=/; HttpOnly; SameSite=Strict"
    );
    // Published on another port (a container's 8080 on the host's 9090), the cookie goes
    // by the port the browser used; a Host without a port (a proxy on 443) by the bound one.
    let host = |h: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(h));
        headers
    };
    assert_eq!(
        a.cookie_name_for(&host("example.com:9090")),
        "hive_token_9090"
    );
    assert_eq!(a.cookie_name_for(&host("[::1]:9091")), "hive_token_9091");
    assert_eq!(a.cookie_name_for(&host("example.com")), "hive_token_8080");
    assert_eq!(a.cookie_name_for(&host("[::1]")), "hive_token_8080");
    let mut published = host("example.com:9090");
    published.insert(
        header::COOKIE,
        HeaderValue::from_static("hive_token_9090=sekrit"),
    );
    assert!(a.authorised(&published));
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        HeaderValue::from_static("hive_token_8080=sekrit"),
    );
    assert!(a.authorised(&h));
    assert!(!b.authorised(&h), "another port's cookie is not this one's");
    h.insert(
        header::COOKIE,
        HeaderValue::from_static("hive_token=sekrit"),
    );
    assert!(!a.authorised(&h), "the unnamed cookie of old is not read");
    // Asked for port 0, the server names its cookie for the port it was given.
    let bound = at(0).bound_to("127.0.0.1:43210".parse().unwrap());
    assert_eq!(bound.cookie_name(), "hive_token_43210");
    assert!(bound.accepts("sekrit"), "the token is kept");
}

#[test]
fn another_sites_origin_is_refused() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
    assert_eq!(cross_site(&h), None);
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("http://127.0.0.1:8080"),
    );
    assert_eq!(cross_site(&h), None);
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("http://evil.example"),
    );
    assert!(cross_site(&h).is_some());
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("http://127.0.0.1:8080"),
    );
    h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
    assert!(cross_site(&h).is_some());
}

#[test]
fn behind_a_tls_proxy_the_https_origin_is_this_dashboard() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("hive.corp"));
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://hive.corp"),
    );
    assert_eq!(cross_site(&h), None);
    h.insert(
        header::ORIGIN,
        HeaderValue::from_static("https://evil.example"),
    );
    assert!(cross_site(&h).is_some());
    h.insert(header::ORIGIN, HeaderValue::from_static("ftp://hive.corp"));
    assert!(cross_site(&h).is_some());
}

/// A name a DNS rebinding points at 127.0.0.1 is not one of the loopback's own.
#[test]
fn only_the_loopbacks_own_names_are_loopback_hosts() {
    for ok in [
        "localhost",
        "LOCALHOST:8080",
        "127.0.0.1",
        "127.0.0.1:7777",
        "127.9.9.9:1",
        "[::1]",
        "[::1]:8080",
    ] {
        assert!(is_loopback_host(ok), "{ok}");
    }
    for bad in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "10.0.0.1:80",
        "[::2]:80",
        "",
        "127.0.0.1.nip.io",
    ] {
        assert!(!is_loopback_host(bad), "{bad}");
    }
}

/// The cookie is `Secure` when the login came through TLS (an https origin, or a proxy
/// saying so), and not on plain http, where a browser would drop it.
#[test]
fn the_cookie_is_secure_behind_tls_only() {
    let s = Security::for_bind("127.0.0.1:1".parse().unwrap(), Some("t".into())).unwrap();
    let cookie = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        s.cookie(&h).unwrap().to_str().unwrap().to_owned()
    };
    assert!(!cookie(&[("origin", "http://localhost:1")]).contains("Secure"));
    assert!(cookie(&[("origin", "https://hive.example")]).ends_with("; Secure"));
    assert!(cookie(&[("x-forwarded-proto", "https")]).ends_with("; Secure"));
}

/// Wrong tokens are answered one at a time, each holding the next a quarter of a second,
/// however many are sent at once (the right one takes no turn: `guard` waits only after
/// refusing a token).
#[tokio::test(start_paused = true)]
async fn wrong_tokens_are_answered_one_at_a_time() {
    let s = std::sync::Arc::new(
        Security::for_bind("127.0.0.1:1".parse().unwrap(), Some("sekrit".into())).unwrap(),
    );
    let start = tokio::time::Instant::now();
    let guesses: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.after_wrong_token().await })
        })
        .collect();
    for g in guesses {
        g.await.unwrap();
    }
    assert_eq!(start.elapsed(), std::time::Duration::from_millis(1000));
}
