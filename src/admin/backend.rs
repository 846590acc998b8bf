//! The backend API: calls a game backend makes to Herald, on the admin
//! listener, protected by `--http-key`.
//!
//! * `GET /v2/status?user_ids=ID,ID,…` → who is online and with what.
//! * `POST /v2/session/{session_id}/disconnect` (`{"reason":"…"}`) → closes a session.
//!
//! The key is accepted as `?http_key=KEY` (Nakama's convention for its
//! runtime `http_key`) or as `Authorization: Bearer KEY`; the query wins when
//! both are present, as in Nakama. It is compared in constant time. Errors
//! have the REST endpoints' shape, `{"code":<grpc code>,"message":"…"}`.
//!
//! Both calls ask the shards through their inboxes and wait for the answer
//! on this (admin) thread, never on a shard thread. The wait is bounded
//! ([`SHARD_ANSWER_TIMEOUT`]): a shard that has stopped (shutdown) never
//! answers, and the call must not hang.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::engine::{CloseCause, EngineHandle};
use crate::ids::{SessionId, UserId};
use crate::transport::rest::{self, constant_time_eq, read_json, RestError};

/// Most user ids in one status query.
pub const MAX_STATUS_USERS: usize = 1000;
/// Largest disconnect request body accepted.
pub const MAX_BODY_BYTES: usize = 4096;
/// How long a call waits for the shards.
pub const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Client-visible texts of the backend API.
pub mod messages {
    pub const HTTP_KEY_REQUIRED: &str = "HTTP key required";
    pub const HTTP_KEY_INVALID: &str = "HTTP key invalid";
    pub const USER_IDS_REQUIRED: &str = "user_ids is required.";
    pub const TOO_MANY_USER_IDS: &str = "At most 1000 user IDs per call.";
    pub const SESSION_ID_INVALID: &str = "Invalid session ID.";
    pub const SESSION_NOT_FOUND: &str = "Session not found.";
    pub const NOT_READY: &str = "Herald is not ready.";
    pub const SHARDS_TIMED_OUT: &str = "The shards did not answer in time.";
}

/// gRPC `UNAVAILABLE`, for 503 answers.
const UNAVAILABLE: i32 = 14;

type Body = Full<Bytes>;

/// Checks the HTTP key (see the module doc); the error is the 401 to send.
pub fn check_http_key(
    query: Option<&str>,
    headers: &HeaderMap,
    key: &str,
) -> Result<(), Box<Response<Body>>> {
    let from_query = query.and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "http_key")
            .map(|(_, value)| value.into_owned().into_bytes())
    });
    let given = from_query.or_else(|| {
        let value = headers.get(AUTHORIZATION)?.as_bytes();
        let (scheme, token) = value.split_at(value.len().min(7));
        Some(if scheme.eq_ignore_ascii_case(b"bearer ") {
            token.to_vec()
        } else {
            // Present but not a bearer token: a wrong key, not a missing one.
            Vec::new()
        })
    });
    let message = match given {
        None => messages::HTTP_KEY_REQUIRED,
        Some(given) if !given.is_empty() && constant_time_eq(&given, key.as_bytes()) => {
            return Ok(())
        }
        Some(_) => messages::HTTP_KEY_INVALID,
    };
    let mut response = rest::error_response(StatusCode::UNAUTHORIZED, 16, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(response))
}

/// `{"users":[…]}`, one entry per requested id, in request order.
#[derive(Serialize)]
struct StatusBody<'a> {
    users: Vec<UserBody<'a>>,
}

#[derive(Serialize)]
struct UserBody<'a> {
    user_id: String,
    online: bool,
    sessions: Vec<SessionBody<'a>>,
}

#[derive(Serialize)]
struct SessionBody<'a> {
    session_id: String,
    status: &'a str,
}

/// `GET /v2/status?user_ids=…`: comma-separated ids (the parameter may also
/// repeat), at most [`MAX_STATUS_USERS`]. Unknown users are offline.
pub async fn status(engine: &EngineHandle, query: Option<&str>) -> Response<Body> {
    let users = match parse_user_ids(query) {
        Ok(users) => users,
        Err(error) => return error.into_response(),
    };
    let Ok(statuses) =
        tokio::time::timeout(SHARD_ANSWER_TIMEOUT, engine.query_status(&users)).await
    else {
        return unavailable(messages::SHARDS_TIMED_OUT);
    };
    let body = StatusBody {
        users: statuses
            .iter()
            .map(|user| UserBody {
                user_id: user.user_id.to_string(),
                online: user.online(),
                sessions: user
                    .sessions
                    .iter()
                    .map(|(session, status)| SessionBody {
                        session_id: session.to_string(),
                        status: status.as_ref(),
                    })
                    .collect(),
            })
            .collect(),
    };
    rest::json_response(StatusCode::OK, &body)
}

/// The `user_ids` of a status query, in order, duplicates kept.
fn parse_user_ids(query: Option<&str>) -> Result<Vec<UserId>, RestError> {
    let mut present = false;
    let mut users = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name != "user_ids" {
            continue;
        }
        present = true;
        for id in value.split(',').map(str::trim) {
            if id.is_empty() && value.trim().is_empty() {
                continue; // `user_ids=`: an empty list
            }
            if users.len() == MAX_STATUS_USERS {
                return Err(RestError::InvalidArgument(
                    messages::TOO_MANY_USER_IDS.into(),
                ));
            }
            let user = UserId::parse(id).ok_or_else(|| {
                RestError::InvalidArgument(format!("Invalid user ID: {id:?}.").into())
            })?;
            users.push(user);
        }
    }
    if !present {
        return Err(RestError::InvalidArgument(
            messages::USER_IDS_REQUIRED.into(),
        ));
    }
    Ok(users)
}

/// The body of a disconnect call; all of it optional.
#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v2/session/{session_id}/disconnect`: closes the session with
/// `reason` (the websocket close reason, cut to 123 bytes; empty means
/// `server-side session disconnect`). 204, or 404 if no such session is open.
pub async fn disconnect(
    engine: &EngineHandle,
    session_id: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    let Some(session) = SessionId::parse(session_id) else {
        return RestError::InvalidArgument(messages::SESSION_ID_INVALID.into()).into_response();
    };
    let (parts, body) = request.into_parts();
    let body: Option<DisconnectBody> = match read_json(&parts.headers, body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let reason = body.and_then(|b| b.reason).unwrap_or_default();
    let kicked = async {
        match engine.cluster() {
            // The session may live on any node.
            Some(cluster) => cluster.kick(session, reason.clone()).await,
            None => {
                engine
                    .kick(session, CloseCause::Kicked(reason.clone()))
                    .await
            }
        }
    };
    match tokio::time::timeout(SHARD_ANSWER_TIMEOUT, kicked).await {
        Ok(true) => {
            tracing::info!(session_id = %session, %reason, "session disconnected through the backend API");
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Ok(false) => RestError::NotFound(messages::SESSION_NOT_FOUND).into_response(),
        Err(_) => unavailable(messages::SHARDS_TIMED_OUT),
    }
}

/// 503 with `{"code":14,"message":…}`.
pub fn unavailable(message: &str) -> Response<Body> {
    rest::error_response(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "backendkey";

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    fn refusal(query: Option<&str>, authorization: Option<&str>) -> Option<StatusCode> {
        check_http_key(query, &headers(authorization), KEY)
            .err()
            .map(|response| response.status())
    }

    #[test]
    fn the_key_is_accepted_in_the_query_or_as_a_bearer_token() {
        assert_eq!(refusal(Some("http_key=backendkey"), None), None);
        assert_eq!(refusal(Some("user_ids=a&http_key=backendkey"), None), None);
        assert_eq!(refusal(None, Some("Bearer backendkey")), None);
        assert_eq!(refusal(None, Some("bearer backendkey")), None);
    }

    #[test]
    fn a_missing_or_wrong_key_is_refused() {
        for (query, authorization) in [
            (None, None),
            (Some("http_key="), None),
            (Some("http_key=backendke"), None),
            (Some("http_key=backendkeyy"), None),
            (None, Some("Bearer nope")),
            (None, Some("Basic YmFja2VuZGtleTo=")),
            (None, Some("Bearer")),
            // The query wins over the header.
            (Some("http_key=wrong"), Some("Bearer backendkey")),
        ] {
            assert_eq!(
                refusal(query, authorization),
                Some(StatusCode::UNAUTHORIZED),
                "{query:?} {authorization:?}"
            );
        }
    }

    #[test]
    fn user_ids_keep_their_order_and_duplicates() {
        let a = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";
        let b = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a02";
        let users = parse_user_ids(Some(&format!("user_ids={b},{a},{b}"))).expect("parses");
        let text: Vec<String> = users.iter().map(ToString::to_string).collect();
        assert_eq!(text, [b, a, b]);
        let repeated = parse_user_ids(Some(&format!("user_ids={a}&user_ids={b}"))).expect("parses");
        assert_eq!(repeated.len(), 2);
        assert_eq!(
            parse_user_ids(Some("user_ids=")).expect("parses"),
            Vec::new()
        );
    }

    #[test]
    fn bad_user_ids_are_refused() {
        assert!(parse_user_ids(None).is_err());
        assert!(parse_user_ids(Some("user_id=x")).is_err());
        assert!(parse_user_ids(Some("user_ids=not-a-uuid")).is_err());
        let a = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";
        assert!(parse_user_ids(Some(&format!("user_ids={a},,{a}"))).is_err());
        let many = vec![a; MAX_STATUS_USERS].join(",");
        assert_eq!(
            parse_user_ids(Some(&format!("user_ids={many}"))).map(|u| u.len()),
            Ok(1000)
        );
        assert_eq!(
            parse_user_ids(Some(&format!("user_ids={many},{a}"))),
            Err(RestError::InvalidArgument(
                messages::TOO_MANY_USER_IDS.into()
            ))
        );
    }
}
