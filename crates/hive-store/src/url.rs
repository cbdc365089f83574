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

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                // Setting a password only fails for URLs that cannot carry one.
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(_) => self.0.clone(),
            // Unparseable: hide everything between "://" and "@", where credentials sit.
            Err(_) => match (self.0.find("://"), self.0.rfind('@')) {
                (Some(s), Some(a)) if a > s => format!("{}://***{}", &self.0[..s], &self.0[a..]),
                _ => self.0.clone(),
            },
        }
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
}
