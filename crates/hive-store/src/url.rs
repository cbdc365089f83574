//! [`DatabaseUrl`]: a connection URL that never prints its password.

use std::fmt;

/// A database URL. `Display` and `Debug` replace the password with `***`, so it is safe
/// in logs and error messages; only [`DatabaseUrl::expose`] gives the real string.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The full URL with its password, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`: the one before the host, and a
    /// `password=` query parameter (which the drivers read too).
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                if u.password().is_some() {
                    // Setting a password only fails for URLs that cannot carry one.
                    let _ = u.set_password(Some("***"));
                }
                if u.query_pairs().any(|(k, _)| is_password(&k)) {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if is_password(&k) { "***".into() } else { v };
                            (k.into_owned(), v.into_owned())
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                u.to_string()
            }
            // Unparseable: hide everything between "://" and "@", where credentials sit,
            // and whatever follows a `password=`.
            Err(_) => {
                let shown = match (self.0.find("://"), self.0.rfind('@')) {
                    (Some(s), Some(a)) if a > s => {
                        format!("{}://***{}", &self.0[..s], &self.0[a..])
                    }
                    _ => self.0.clone(),
                };
                match shown.to_ascii_lowercase().find("password=") {
                    Some(at) => format!("{}password=***", &shown[..at]),
                    None => shown,
                }
            }
        }
    }

    /// The password the URL carries, before the host or as a `password=` parameter, for
    /// scrubbing it out of a driver's messages.
    pub fn password(&self) -> Option<String> {
        let u = url::Url::parse(&self.0).ok()?;
        let before_host = u.password().filter(|p| !p.is_empty()).map(|p| {
            url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map_or_else(|| p.to_owned(), |(_, v)| v.into_owned())
        });
        before_host.or_else(|| {
            u.query_pairs()
                .find(|(k, v)| is_password(k) && !v.is_empty())
                .map(|(_, v)| v.into_owned())
        })
    }

    /// `host:port` (or the path for file databases), for `unavailable` errors.
    pub fn target(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(u) if u.host_str().is_some() => format!(
                "{}:{}",
                u.host_str().unwrap_or_default(),
                u.port().unwrap_or(5432)
            ),
            _ => self.redacted(),
        }
    }
}

fn is_password(key: &str) -> bool {
    key.eq_ignore_ascii_case("password")
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_prints() {
        let u = DatabaseUrl::new("postgres://bob:s3cr3t-sentinel@db.example:6543/hive");
        for shown in [u.to_string(), format!("{u:?}"), u.target(), u.redacted()] {
            assert!(!shown.contains("s3cr3t-sentinel"), "{shown}");
        }
        assert_eq!(u.target(), "db.example:6543");
        assert!(u.to_string().contains("bob:***@db.example"));
        let odd = DatabaseUrl::new("postgres://bob:s3cr3t-sentinel@[bad");
        assert!(!odd.to_string().contains("s3cr3t-sentinel"));
    }

    /// A password given as a query parameter (the drivers read `?password=` too) is
    /// hidden as well, and found for scrubbing.
    #[test]
    fn a_password_parameter_never_prints() {
        let u = DatabaseUrl::new(
            "postgres://bob@db:5432/hive?sslmode=require&password=s3cr3t-sentinel",
        );
        for shown in [u.to_string(), format!("{u:?}"), u.target(), u.redacted()] {
            assert!(!shown.contains("s3cr3t-sentinel"), "{shown}");
        }
        assert!(u.to_string().contains("sslmode=require"), "{u}");
        assert_eq!(u.password().as_deref(), Some("s3cr3t-sentinel"));
        let odd = DatabaseUrl::new("postgres://bob@[bad/hive?PASSWORD=s3cr3t-sentinel");
        assert!(!odd.to_string().contains("s3cr3t-sentinel"), "{odd}");
        let both = DatabaseUrl::new("postgres://bob:p%40ss@db/hive");
        assert_eq!(both.password().as_deref(), Some("p@ss"));
    }
}
