//! How an operation's error is answered, by pages and API alike: the HTTP status its
//! variant calls for, and what the caller is told. A caller's mistake is named to it; a
//! fault of the server or its database is logged in full and answered with a generic
//! message, since the driver's text says nothing the caller can act on and may describe
//! the database's insides.

use axum::http::StatusCode;
use hive_client::ops::Error as OpError;
use hive_client::store::Error as StoreError;

/// What a caller is told about a fault it cannot fix.
pub(crate) const INTERNAL: &str = "internal error; see the server's log";

/// The status `e` answers with, and the message the caller sees: 400 for input that
/// breaks a rule, 404 for a missing row, 409 for a conflict with the current state, 503
/// for a database that may answer later, and 500 (logged here) for everything else.
pub(crate) fn classify(e: &OpError) -> (StatusCode, String) {
    let status = match e {
        OpError::Invalid(_)
        | OpError::UnknownTaskType { .. }
        | OpError::Store(StoreError::Invalid(_) | StoreError::Rejected(_)) => {
            StatusCode::BAD_REQUEST
        }
        OpError::NotFound { .. } | OpError::Store(StoreError::NotFound { .. }) => {
            StatusCode::NOT_FOUND
        }
        // The request is at odds with what is stored (a stale run, a name taken): asking
        // again as is will not help. A lost race is transient, below.
        OpError::StaleRun { .. }
        | OpError::Store(StoreError::StaleRun { .. } | StoreError::Conflict(_)) => {
            StatusCode::CONFLICT
        }
        e if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        e => {
            tracing::error!(error = %e, "the dashboard could not answer a request");
            return (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL.to_owned());
        }
    };
    (status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_error_has_its_status_and_faults_say_nothing_inside() {
        let invalid = OpError::Invalid(hive_client::models::Error::InvalidField {
            field: "title".into(),
            reason: "empty".into(),
        });
        let store = |e: StoreError| OpError::Store(e);
        let target = || "db:5432".to_owned();
        let cases = [
            (invalid, StatusCode::BAD_REQUEST),
            (
                OpError::UnknownTaskType {
                    task_type: "mial".into(),
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                store(StoreError::Rejected("limit out of range".into())),
                StatusCode::BAD_REQUEST,
            ),
            (
                OpError::NotFound {
                    entity: "task",
                    id: "t1".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (
                store(StoreError::Conflict("a schedule named `x` exists".into())),
                StatusCode::CONFLICT,
            ),
            (
                OpError::StaleRun {
                    run_id: hive_client::models::RunId::new(),
                },
                StatusCode::CONFLICT,
            ),
            (
                store(StoreError::Contended(
                    "deadlock detected (SQLSTATE 40P01)".into(),
                )),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                store(StoreError::Unavailable {
                    target: target(),
                    reason: "connection refused".into(),
                }),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (e, want) in cases {
            let (status, message) = classify(&e);
            assert_eq!(status, want, "{e}");
            assert_eq!(message, e.to_string(), "the caller's own mistake is named");
        }
        for e in [
            store(StoreError::Database(
                "relation \"tasks\" has a secret".into(),
            )),
            store(StoreError::Corrupt {
                table: "tasks",
                reason: "bad status `x`".into(),
            }),
            store(StoreError::Misconfigured {
                target: target(),
                reason: "password authentication failed".into(),
            }),
            store(StoreError::Closed { target: target() }),
        ] {
            assert_eq!(
                classify(&e),
                (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL.to_owned()),
                "{e}"
            );
        }
    }
}
