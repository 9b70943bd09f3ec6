//! [`PushEndpoint`]: registered job types as an axum route that Grafter's
//! pushes reach (feature `axum`).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    standard_webhooks, PushRequest, SignatureError, Verifier, RETRY_HEADER, SIGNATURE_HEADER,
};
use crate::job::{ErrorAction, Job, JobContext, JobError};
use crate::worker::{panic_message, Handler, Typed};

/// An HTTP endpoint that runs pushed jobs of the registered kinds.
pub struct PushEndpoint {
    verifier: Verifier,
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl PushEndpoint {
    /// An endpoint accepting requests signed as `verifier` checks.
    pub fn new(verifier: Verifier) -> Self {
        PushEndpoint {
            verifier,
            handlers: HashMap::new(),
        }
    }

    /// Runs jobs whose `kind` is `J::KIND` as `J`.
    pub fn register<J: Job>(mut self) -> Self {
        self.handlers
            .insert(J::KIND.to_owned(), Arc::new(Typed::<J>(PhantomData)));
        self
    }

    /// The endpoint as an axum route: `Router::new().route("/path", endpoint.into_route())`.
    pub fn into_route<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        let endpoint = Arc::new(self);
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let endpoint = endpoint.clone();
            async move { endpoint.handle(&headers, &body).await }
        })
    }

    /// Answers one push: its headers and raw body, exactly as received. For
    /// servers other than axum, call this and send back what it answers.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        let text = |name: &str| headers.get(name).map(HeaderValue::to_str);
        // Grafter-Signature when the request has it, else Standard Webhooks.
        let signature = match text(SIGNATURE_HEADER) {
            Some(Ok(header)) => self.verifier.verify(header, body),
            Some(Err(_)) => Err(SignatureError::Malformed("not visible ASCII")),
            None => match [
                text(standard_webhooks::ID_HEADER),
                text(standard_webhooks::TIMESTAMP_HEADER),
                text(standard_webhooks::SIGNATURE_HEADER),
            ] {
                [Some(Ok(id)), Some(Ok(timestamp)), Some(Ok(signature))] => self
                    .verifier
                    .verify_standard_webhooks([id, timestamp, signature], body),
                [None, None, None] => Err(SignatureError::Missing),
                _ => Err(SignatureError::Malformed(
                    "webhook-id, webhook-timestamp and webhook-signature must all be there, in visible ASCII",
                )),
            },
        };
        if let Err(error) = signature {
            // Grafter retries: a secret being fixed or rotated should not kill jobs.
            return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
        }
        let request: PushRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(error) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("not a Grafter push body: {error}"),
                )
                    .into_response()
            }
        };
        let Some(handler) = self.handlers.get(&request.kind) else {
            // A failed attempt, not a dead job: the kind may be in the next deploy.
            let message = format!(
                "no job kind '{}' is registered at this endpoint",
                request.kind
            );
            return (StatusCode::NOT_FOUND, message).into_response();
        };
        let cancel = CancellationToken::new();
        // Fires when Grafter hangs up and this future is dropped.
        let _hang_up = cancel.clone().drop_guard();
        let ctx = JobContext {
            id: request.id,
            attempt: request.attempt,
            max_attempts: request.max_attempts,
            queue: request.queue,
            progress: watch::channel(None).0,
            cancel,
            traceparent: None,
        };
        match AssertUnwindSafe(handler.run(request.args, ctx))
            .catch_unwind()
            .await
        {
            Ok(Ok(Some(output))) => axum::Json(output).into_response(),
            Ok(Ok(None)) => StatusCode::NO_CONTENT.into_response(),
            Ok(Err(error)) => failure(error),
            Err(panic) => (StatusCode::INTERNAL_SERVER_ERROR, panic_message(panic)).into_response(),
        }
    }
}

/// The answer that makes Grafter do what the job asked for.
fn failure(error: JobError) -> Response {
    let text = |status, message: String| {
        let mut response = (status, message).into_response();
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    let no_retry = |mut response: Response| {
        response
            .headers_mut()
            .insert(RETRY_HEADER, HeaderValue::from_static("false"));
        response
    };
    let retry_after = |mut response: Response, delay: Duration| {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(whole_seconds(delay)));
        response
    };
    let JobError { action, message } = error;
    match action {
        ErrorAction::Retry(None) => text(StatusCode::INTERNAL_SERVER_ERROR, message),
        ErrorAction::Retry(Some(delay)) => {
            retry_after(text(StatusCode::INTERNAL_SERVER_ERROR, message), delay)
        }
        ErrorAction::Fail => no_retry(text(StatusCode::UNPROCESSABLE_ENTITY, message)),
        ErrorAction::Cancel => no_retry(text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cancelled: {message}"),
        )),
        ErrorAction::Snooze(delay) => {
            retry_after(text(StatusCode::SERVICE_UNAVAILABLE, message), delay)
        }
    }
}

/// `Retry-After` counts whole seconds: round up, so a job never runs early.
fn whole_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_answer_as_the_contract_says() {
        let check =
            |error: JobError, status: StatusCode, retry: Option<&str>, after: Option<&str>| {
                let response = failure(error);
                assert_eq!(response.status(), status);
                let header = |name| {
                    response
                        .headers()
                        .get(name)
                        .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
                };
                assert_eq!(header(RETRY_HEADER).as_deref(), retry);
                assert_eq!(header(RETRY_AFTER.as_str()).as_deref(), after);
            };
        check(
            JobError::retry("smtp down"),
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            None,
        );
        check(
            JobError::retry_after("smtp down", Duration::from_millis(1_500)),
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            Some("2"),
        );
        check(
            JobError::fail("no such user"),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("false"),
            None,
        );
        check(
            JobError::cancel("stop"),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("false"),
            None,
        );
        check(
            JobError::snooze(Duration::from_secs(30)),
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("30"),
        );
    }
}
