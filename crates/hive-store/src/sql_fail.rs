//! The SQL backends' internal failure type: a driver error, mapped to a portable
//! [`Error`] only at the trait boundary where the backend knows its target, or an error
//! that already is portable.

use crate::Error;

#[derive(Debug)]
pub(crate) enum Fail {
    Sql(sqlx::Error),
    Store(Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Store(e)
    }
}

impl From<hive_models::Error> for Fail {
    fn from(e: hive_models::Error) -> Self {
        Fail::Store(Error::Invalid(e))
    }
}

pub(crate) type R<T> = std::result::Result<T, Fail>;
