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
        assert!(Security::for_bind(addr.parse().unwrap(), Some("t".into())).is_ok());
    }
    for addr in ["127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080"] {
        assert!(
            Security::for_bind(addr.parse().unwrap(), None).is_ok(),
            "{addr}"
        );
    }
    let e = Security::for_bind("127.0.0.1:1".parse().unwrap(), Some(" ".into())).unwrap_err();
    assert!(matches!(e, Error::EmptyToken));
}

#[test]
fn the_token_is_read_from_header_bearer_or_cookie_only_when_equal() {
    let s = Security::for_bind("0.0.0.0:1".parse().unwrap(), Some("sekrit".into())).unwrap();
    let with = |name: header::HeaderName, v: &str| {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    };
    assert!(s.authorised(&with(HEADER.parse().unwrap(), "sekrit")));
    assert!(s.authorised(&with(header::AUTHORIZATION, "Bearer sekrit")));
    assert!(s.authorised(&with(header::COOKIE, "a=b; hive_token=sekrit")));
    assert!(!s.authorised(&with(header::COOKIE, "hive_token=sekri")));
    assert!(!s.authorised(&with(HEADER.parse().unwrap(), "sekrit2")));
    assert!(!s.authorised(&HeaderMap::new()));
    assert!(
        !format!("{s:?}").contains("sekrit"),
        "Debug never shows the token"
    );
    let random = Security::for_bind("127.0.0.1:1".parse().unwrap(), None).unwrap();
    assert!(!random.accepts(""));
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
