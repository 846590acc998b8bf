//! The REST endpoints a status client needs (reference §9):
//! `POST /v2/account/authenticate/custom`, `POST /v2/account/authenticate/device`
//! and `POST /v2/account/session/refresh`.
//!
//! Owns: Basic-auth server-key checks, request parsing (body capped at
//! `max_body_bytes`, query parsed like Go's `url.ParseQuery` plus
//! grpc-gateway's field rules), Nakama's validation rules, and every error
//! text a REST client can see, in grpc-gateway's shape
//! `{"code":<grpc code>,"message":"…"}`. The router (elsewhere) matches
//! method and path, then calls [`authenticate`] or [`refresh`], and adds the
//! CORS headers itself.
//!
//! Invariants:
//! * Every client-visible text is Nakama's, byte for byte, and is spelled out
//!   only in [`messages`]. Store failures are logged with `tracing::error!`
//!   and answered with Nakama's generic 500 text; the detail never reaches
//!   the client.
//! * A body is never buffered beyond `max_body_bytes`: a larger
//!   `Content-Length` is refused before reading, and a chunked body is cut
//!   off as soon as it passes the cap.
//! * An account is announced to the engine (`register_user`) before the
//!   response is sent, so a follow issued right after it finds the user.
//!
//! One deliberate difference from Nakama: the server key is checked first.
//! Nakama's gateway parses the body and query before its interceptor looks at
//! the key, so a request that is both unauthenticated and malformed gets 400
//! there and 401 here. Herald never parses bodies of unauthenticated callers.
//!
//! Threads: handlers run on whichever runtime thread the router runs them;
//! they share only the immutable [`RestContext`].

use std::borrow::Cow;
use std::sync::Arc;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{AccountError, Accounts, IdKind, Tokens, Vars};
use crate::engine::stats::{AuthResult, ShardStats};
use crate::engine::EngineHandle;

/// Nakama's `socket.max_request_size_bytes` default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Everything the REST handlers need. Built once at start-up.
pub struct RestContext {
    /// Mints session and refresh tokens, verifies refresh tokens.
    pub tokens: Arc<Tokens>,
    /// Finds and creates accounts.
    pub accounts: Accounts,
    /// Compared (constant time) with the Basic-auth user name.
    pub server_key: String,
    /// Told about each authenticated account before the response goes out.
    pub engine: EngineHandle,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// The counters of the shard thread serving the request: authenticate
    /// outcomes go to `herald_auth_total{result}`.
    pub stats: Arc<ShardStats>,
}

/// Client-visible texts, as Nakama writes them (`server/api.go`
/// `securityInterceptorFunc`, `server/api_authenticate.go`,
/// `server/core_authenticate.go`, `server/api_session.go`,
/// `server/core_session.go`), plus Herald's own where Nakama has none.
pub mod messages {
    pub const SERVER_KEY_REQUIRED: &str = "Server key required";
    pub const SERVER_KEY_INVALID: &str = "Server key invalid";

    pub const CUSTOM_ID_REQUIRED: &str = "Custom ID is required.";
    pub const CUSTOM_ID_INVALID_CHARS: &str =
        "Custom ID invalid, no spaces or control characters allowed.";
    pub const CUSTOM_ID_INVALID_LENGTH: &str = "Custom ID invalid, must be 6-128 bytes.";
    pub const DEVICE_ID_REQUIRED: &str = "Device ID is required.";
    pub const DEVICE_ID_INVALID_CHARS: &str =
        "Device ID invalid, no spaces or control characters allowed.";
    pub const DEVICE_ID_INVALID_LENGTH: &str = "Device ID invalid, must be 10-128 bytes.";
    /// Nakama's text, although spaces are in fact allowed in usernames.
    pub const USERNAME_INVALID_CHARS: &str =
        "Username invalid, no spaces or control characters allowed.";
    pub const USERNAME_INVALID_LENGTH: &str = "Username invalid, must be 1-128 bytes.";
    /// Herald's: Go would pass the bytes on and fail in the database.
    pub const USERNAME_INVALID_UTF8: &str = "Username invalid, must be valid UTF-8.";

    pub const USER_NOT_FOUND: &str = "User account not found.";
    pub const USERNAME_TAKEN: &str = "Username is already in use.";
    pub const AUTHENTICATE_FAILED: &str = "Error finding or creating user account.";

    pub const REFRESH_TOKEN_REQUIRED: &str = "Refresh token is required.";
    pub const REFRESH_TOKEN_INVALID: &str = "Refresh token invalid or expired.";
    pub const REFRESH_LOOKUP_FAILED: &str = "Error finding user account.";

    /// Herald's: Nakama's gateway reports `http: request body too large` as a decode error.
    pub const BODY_TOO_LARGE: &str = "Request body too large.";
}

/// gRPC status codes used here (grpc-gateway maps them to HTTP).
pub mod grpc_code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const INTERNAL: i32 = 13;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// A refused REST request: one variant per gRPC code Herald answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// gRPC 3 → 400.
    #[error("{0}")]
    InvalidArgument(Cow<'static, str>),
    /// gRPC 16 → 401, with `WWW-Authenticate: <message>`.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// gRPC 5 → 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// gRPC 6 → 409.
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// HTTP 413 (gRPC 3, as Nakama reports an over-long body).
    #[error("{}", messages::BODY_TOO_LARGE)]
    BodyTooLarge,
    /// gRPC 13 → 500. The cause is logged where it happens.
    #[error("{0}")]
    Internal(&'static str),
}

impl RestError {
    /// The gRPC code in the JSON body.
    pub fn grpc_code(&self) -> i32 {
        match self {
            RestError::InvalidArgument(_) | RestError::BodyTooLarge => grpc_code::INVALID_ARGUMENT,
            RestError::Unauthenticated(_) => grpc_code::UNAUTHENTICATED,
            RestError::NotFound(_) => grpc_code::NOT_FOUND,
            RestError::AlreadyExists(_) => grpc_code::ALREADY_EXISTS,
            RestError::Internal(_) => grpc_code::INTERNAL,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            RestError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            other => http_status(other.grpc_code()),
        }
    }

    /// The error as grpc-gateway would send it.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        error_response(self.status(), self.grpc_code(), &self.to_string())
    }
}

/// grpc-gateway's `HTTPStatusFromCode` for the codes Herald uses.
pub fn http_status(grpc_code: i32) -> StatusCode {
    match grpc_code {
        grpc_code::INVALID_ARGUMENT => StatusCode::BAD_REQUEST,
        grpc_code::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
        grpc_code::PERMISSION_DENIED => StatusCode::FORBIDDEN,
        grpc_code::NOT_FOUND => StatusCode::NOT_FOUND,
        grpc_code::ALREADY_EXISTS => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i32,
    message: &'a str,
}

/// `{"code":N,"message":"…"}` with `status`; on 401 also `WWW-Authenticate: <message>`.
pub fn error_response(status: StatusCode, grpc_code: i32, message: &str) -> Response<Full<Bytes>> {
    let mut response = json_response(
        status,
        &ErrorBody {
            code: grpc_code,
            message,
        },
    );
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(value) = HeaderValue::from_str(message) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
    }
    response
}

pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    // Serializing these plain structs cannot fail; fall back to an empty object anyway.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// api.proto `Session`: snake_case, `created` omitted when false.
#[derive(Serialize)]
struct SessionBody<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    created: bool,
    token: &'a str,
    refresh_token: &'a str,
}

/// `AccountCustom` / `AccountDevice`. Unknown fields are ignored (Nakama's
/// gateway uses `DiscardUnknown`); `null` means absent.
#[derive(Deserialize)]
struct AccountBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    vars: Option<Vars>,
}

/// `SessionRefreshRequest`.
#[derive(Deserialize)]
struct RefreshBody {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    vars: Option<Vars>,
}

/// `POST /v2/account/authenticate/{custom,device}`.
pub async fn authenticate(
    ctx: &RestContext,
    kind: IdKind,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (response, result) = match authenticate_request(ctx, kind, req).await {
        Ok((response, true)) => (response, AuthResult::Created),
        Ok((response, false)) => (response, AuthResult::Existing),
        Err(error @ RestError::Internal(_)) => (error.into_response(), AuthResult::Error),
        Err(error) => (error.into_response(), AuthResult::Rejected),
    };
    ctx.stats.auth(result);
    response
}

/// `POST /v2/account/session/refresh`.
pub async fn refresh(ctx: &RestContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match refresh_request(ctx, req).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// The response, and whether the account was created.
async fn authenticate_request(
    ctx: &RestContext,
    kind: IdKind,
    req: Request<Incoming>,
) -> Result<(Response<Full<Bytes>>, bool), RestError> {
    let (parts, body) = req.into_parts();
    check_server_key(&parts.headers, &ctx.server_key)?;
    // grpc-gateway order: body, then query, then the handler's checks.
    let account: Option<AccountBody> = read_json(&parts.headers, body, ctx.max_body_bytes).await?;
    let query = AuthQuery::parse(parts.uri.query())?;
    let (id, vars) = match account {
        Some(account) => (
            account.id.unwrap_or_default(),
            account.vars.unwrap_or_default(),
        ),
        None => (String::new(), Vars::new()),
    };
    validate_id(kind, &id)?;
    let username = match query.username {
        Some(name) if !name.is_empty() => Some(validate_username(name)?),
        _ => None,
    };

    let account = ctx
        .accounts
        .authenticate(kind, id, username, query.create)
        .await
        .map_err(|error| match error {
            AccountError::NotFound => RestError::NotFound(messages::USER_NOT_FOUND),
            AccountError::UsernameTaken => RestError::AlreadyExists(messages::USERNAME_TAKEN),
            AccountError::Store(_) | AccountError::Closed => {
                tracing::error!(%error, ?kind, "authenticate failed in the account store");
                RestError::Internal(messages::AUTHENTICATE_FAILED)
            }
        })?;
    let issued = ctx
        .tokens
        .issue(account.user_id, &account.username, &vars)
        .map_err(|error| {
            tracing::error!(%error, "cannot sign a session token");
            RestError::Internal(messages::AUTHENTICATE_FAILED)
        })?;
    // Announce before answering: a follow sent right after this response must find the user.
    // Repeating it for an existing account is harmless.
    ctx.engine
        .register_user(account.user_id, &account.username)
        .await;
    let response = json_response(
        StatusCode::OK,
        &SessionBody {
            created: account.created,
            token: &issued.token,
            refresh_token: &issued.refresh_token,
        },
    );
    Ok((response, account.created))
}

async fn refresh_request(
    ctx: &RestContext,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, RestError> {
    let (parts, body) = req.into_parts();
    check_server_key(&parts.headers, &ctx.server_key)?;
    let request: Option<RefreshBody> = read_json(&parts.headers, body, ctx.max_body_bytes).await?;
    let (token, vars) = match request {
        Some(request) => (request.token.unwrap_or_default(), request.vars),
        None => (String::new(), None),
    };
    if token.is_empty() {
        return Err(RestError::InvalidArgument(
            messages::REFRESH_TOKEN_REQUIRED.into(),
        ));
    }
    let mut claims = ctx
        .tokens
        .verify_refresh(&token)
        .map_err(|_| RestError::Unauthenticated(messages::REFRESH_TOKEN_INVALID))?;
    let account = ctx
        .accounts
        .get(claims.user_id)
        .await
        .map_err(|error| {
            tracing::error!(%error, user_id = %claims.user_id, "session refresh failed in the account store");
            RestError::Internal(messages::REFRESH_LOOKUP_FAILED)
        })?
        .ok_or(RestError::NotFound(messages::USER_NOT_FOUND))?;
    // Nakama puts the account's current username in the new tokens.
    if !account.username.is_empty() {
        claims.username = account.username;
    }
    let issued = ctx
        .tokens
        .refresh(&claims, vars.as_ref())
        .map_err(|error| {
            tracing::error!(%error, "cannot sign a session token");
            RestError::Internal(messages::REFRESH_LOOKUP_FAILED)
        })?;
    Ok(json_response(
        StatusCode::OK,
        &SessionBody {
            created: false,
            token: &issued.token,
            refresh_token: &issued.refresh_token,
        },
    ))
}

/// Base64 as Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Nakama's server-key check: exactly one `Authorization` header, `Basic
/// base64(user:password)`, user equal to the server key (password ignored).
fn check_server_key(headers: &HeaderMap, server_key: &str) -> Result<(), RestError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(RestError::Unauthenticated(messages::SERVER_KEY_REQUIRED));
    };
    match basic_auth_user(value.as_bytes()) {
        Some(user) if constant_time_eq(&user, server_key.as_bytes()) => Ok(()),
        _ => Err(RestError::Unauthenticated(messages::SERVER_KEY_INVALID)),
    }
}

/// The user part of a Basic credential, like Go's `parseBasicAuth`: the
/// prefix is case-sensitive, and a credential without `:` is malformed.
fn basic_auth_user(header: &[u8]) -> Option<Vec<u8>> {
    let encoded = header.strip_prefix(b"Basic ")?;
    let mut decoded = GO_STD_BASE64.decode(encoded).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    decoded.truncate(colon);
    Some(decoded)
}

/// Compares in time that depends only on the secret's length.
pub(crate) fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = given.len() ^ secret.len();
    for (index, expected) in secret.iter().enumerate() {
        let actual = given.get(index).copied().unwrap_or(0);
        diff |= usize::from(actual ^ expected);
        diff = std::hint::black_box(diff);
    }
    diff == 0
}

/// Reads the whole body (at most `max` bytes) and parses its first JSON
/// value, as grpc-gateway's decoder does: an empty body or `null` is `None`,
/// unknown fields are ignored, anything after the first value is ignored.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &hyper::HeaderMap,
    body: Incoming,
    max: usize,
) -> Result<Option<T>, RestError> {
    let encoding = content_encoding(headers)?;
    if body.size_hint().lower() > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(RestError::BodyTooLarge);
    }
    let bytes = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(RestError::BodyTooLarge);
        }
        Err(error) => {
            return Err(RestError::InvalidArgument(
                format!("Could not read request body: {error}").into(),
            ));
        }
    };
    match encoding {
        Encoding::Identity => parse_json(&bytes),
        compressed => parse_json(&inflate(compressed, &bytes, max)?),
    }
}

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

fn content_encoding(headers: &hyper::HeaderMap) -> Result<Encoding, RestError> {
    let Some(value) = headers.get(hyper::header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    match value
        .to_str()
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Ok("" | "identity") => Ok(Encoding::Identity),
        Ok("gzip" | "x-gzip") => Ok(Encoding::Gzip),
        Ok("deflate") => Ok(Encoding::Deflate),
        _ => Err(RestError::InvalidArgument(
            "Unsupported Content-Encoding: use gzip, deflate or none".into(),
        )),
    }
}

/// Inflates a compressed body, never past `max` bytes: a compression bomb
/// is refused with 413 after at most `max` bytes of output, whatever it
/// claims to hold. (Nakama inflates without a bound.)
fn inflate(encoding: Encoding, bytes: &[u8], max: usize) -> Result<Vec<u8>, RestError> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(bytes)),
        _ => Box::new(flate2::read::ZlibDecoder::new(bytes)),
    };
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    match reader.take(limit).read_to_end(&mut out) {
        Ok(_) if out.len() > max => Err(RestError::BodyTooLarge),
        Ok(_) => Ok(out),
        Err(error) => Err(RestError::InvalidArgument(
            format!("Could not decompress request body: {error}").into(),
        )),
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, RestError> {
    // serde would also build a struct from a JSON array; protobuf JSON accepts only an object.
    if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        if *first != b'{' && *first != b'n' {
            return Err(RestError::InvalidArgument(
                "Invalid JSON request body: expected an object".into(),
            ));
        }
    }
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Option<T>>();
    match values.next() {
        None => Ok(None),
        Some(Ok(value)) => Ok(value),
        Some(Err(error)) => Err(RestError::InvalidArgument(
            format!("Invalid JSON request body: {error}").into(),
        )),
    }
}

/// The query of an authenticate call.
#[derive(Debug, PartialEq, Eq)]
struct AuthQuery {
    /// `create`; absent means true.
    create: bool,
    /// `username`; only used when an account is created.
    username: Option<String>,
}

impl AuthQuery {
    /// Parses like Go's `url.ParseQuery` (pairs split on `&`, empty pairs
    /// skipped, `+` is a space, `%XX` escapes) followed by grpc-gateway's
    /// field rules (one value per field, `create` as `strconv.ParseBool`).
    /// Unknown parameters are ignored.
    fn parse(query: Option<&str>) -> Result<AuthQuery, RestError> {
        let mut create: Vec<Vec<u8>> = Vec::new();
        let mut username: Vec<Vec<u8>> = Vec::new();
        let mut first_error: Option<String> = None;
        for pair in query.unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            if pair.contains(';') {
                first_error.get_or_insert_with(|| "invalid semicolon separator in query".into());
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = match query_unescape(key) {
                Ok(key) => key,
                Err(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            let value = match query_unescape(value) {
                Ok(value) => value,
                Err(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            };
            match key.as_slice() {
                b"create" => create.push(value),
                b"username" => username.push(value),
                _ => {}
            }
        }
        if let Some(error) = first_error {
            return Err(RestError::InvalidArgument(error.into()));
        }

        let create = match single_value("create", create)? {
            None => true,
            Some(raw) => {
                let text = String::from_utf8_lossy(&raw);
                parse_go_bool(&text).ok_or_else(|| {
                    RestError::InvalidArgument(
                        format!(
                            "parsing field \"create\": strconv.ParseBool: parsing {text:?}: invalid syntax"
                        )
                        .into(),
                    )
                })?
            }
        };
        let username =
            match single_value("username", username)? {
                None => None,
                Some(raw) => Some(String::from_utf8(raw).map_err(|_| {
                    RestError::InvalidArgument(messages::USERNAME_INVALID_UTF8.into())
                })?),
            };
        Ok(AuthQuery { create, username })
    }
}

/// grpc-gateway refuses a repeated scalar field.
fn single_value(field: &str, mut values: Vec<Vec<u8>>) -> Result<Option<Vec<u8>>, RestError> {
    if values.len() > 1 {
        let joined: Vec<String> = values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        return Err(RestError::InvalidArgument(
            format!(
                "too many values for field \"{field}\": {}",
                joined.join(", ")
            )
            .into(),
        ));
    }
    Ok(values.pop())
}

/// Go's `url.QueryUnescape`: `+` → space, `%XX` → byte; a bad escape is an error.
fn query_unescape(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            b'%' => {
                let hi = bytes.get(index + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(index + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi << 4) | lo);
                        index += 3;
                    }
                    _ => {
                        let end = (index + 3).min(bytes.len());
                        let bad = String::from_utf8_lossy(&bytes[index..end]);
                        return Err(format!("invalid URL escape {bad:?}"));
                    }
                }
            }
            other => {
                out.push(other);
                index += 1;
            }
        }
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Nakama's custom/device id rules: present, no ASCII whitespace or control
/// characters (POSIX `[[:cntrl:]]|[[:space:]]`, ASCII only), length in bytes.
fn validate_id(kind: IdKind, id: &str) -> Result<(), RestError> {
    let (required, invalid_chars, invalid_length, min_len) = match kind {
        IdKind::Custom => (
            messages::CUSTOM_ID_REQUIRED,
            messages::CUSTOM_ID_INVALID_CHARS,
            messages::CUSTOM_ID_INVALID_LENGTH,
            6,
        ),
        IdKind::Device => (
            messages::DEVICE_ID_REQUIRED,
            messages::DEVICE_ID_INVALID_CHARS,
            messages::DEVICE_ID_INVALID_LENGTH,
            10,
        ),
    };
    if id.is_empty() {
        Err(RestError::InvalidArgument(required.into()))
    } else if id.bytes().any(|b| b <= b' ' || b == 0x7f) {
        Err(RestError::InvalidArgument(invalid_chars.into()))
    } else if id.len() < min_len || id.len() > 128 {
        Err(RestError::InvalidArgument(invalid_length.into()))
    } else {
        Ok(())
    }
}

/// Nakama's username rules for a non-empty requested username.
///
/// Nakama's pattern is `([[:cntrl:]]|[[\t\n\r\f\v]])+`: ASCII control
/// characters are refused (spaces are allowed, despite the message). Its
/// second alternative parses as the class `[[\t\n\r\f\v]` followed by a
/// literal `]`, so any username containing `[]` is refused as well; Herald
/// keeps that quirk so both servers accept the same names.
fn validate_username(name: String) -> Result<String, RestError> {
    if name.bytes().any(|b| b < b' ' || b == 0x7f) || name.contains("[]") {
        Err(RestError::InvalidArgument(
            messages::USERNAME_INVALID_CHARS.into(),
        ))
    } else if name.len() > 128 {
        Err(RestError::InvalidArgument(
            messages::USERNAME_INVALID_LENGTH.into(),
        ))
    } else {
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = encoder.write_all(bytes);
        encoder.finish().unwrap_or_default()
    }

    #[test]
    fn gzip_bodies_are_inflated() {
        let body = br#"{"id":"custom-id-1"}"#;
        assert_eq!(
            inflate(Encoding::Gzip, &gzip(body), 1024).ok().as_deref(),
            Some(&body[..])
        );
    }

    #[test]
    fn a_compression_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![b' '; 50 << 20]);
        assert!(bomb.len() < 256 * 1024);
        assert!(matches!(
            inflate(Encoding::Gzip, &bomb, 256 * 1024),
            Err(RestError::BodyTooLarge)
        ));
    }

    #[test]
    fn unknown_encodings_are_refused() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            hyper::header::CONTENT_ENCODING,
            hyper::header::HeaderValue::from_static("br"),
        );
        assert!(content_encoding(&headers).is_err());
        headers.insert(
            hyper::header::CONTENT_ENCODING,
            hyper::header::HeaderValue::from_static("GZIP"),
        );
        assert_eq!(content_encoding(&headers).ok(), Some(Encoding::Gzip));
    }

    fn headers_with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        }
        headers
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn server_key_is_the_basic_auth_user() {
        let key = "defaultkey";
        assert_eq!(
            check_server_key(&headers_with(&["Basic ZGVmYXVsdGtleTo="]), key),
            Ok(())
        );
        assert_eq!(
            check_server_key(&headers_with(&[&basic("defaultkey:anything:at:all")]), key),
            Ok(())
        );
    }

    #[test]
    fn missing_server_key_is_required() {
        let required = Err(RestError::Unauthenticated(messages::SERVER_KEY_REQUIRED));
        assert_eq!(check_server_key(&HeaderMap::new(), "k"), required);
        let two = headers_with(&[&basic("k:"), &basic("k:")]);
        assert_eq!(check_server_key(&two, "k"), required);
    }

    #[test]
    fn wrong_or_malformed_server_key_is_invalid() {
        let invalid = Err(RestError::Unauthenticated(messages::SERVER_KEY_INVALID));
        for value in [
            basic("wrongkey:"),
            basic("defaultke:"),
            basic("defaultkeyy:"),
            basic("defaultkey"),
            "basic ZGVmYXVsdGtleTo=".to_string(),
            "Bearer ZGVmYXVsdGtleTo=".to_string(),
            "Basic ZGVmYXVsdGtleTo".to_string(),
            "Basic !!!!".to_string(),
            "Basic ".to_string(),
            String::new(),
        ] {
            assert_eq!(
                check_server_key(&headers_with(&[&value]), "defaultkey"),
                invalid,
                "{value:?}"
            );
        }
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }

    #[test]
    fn create_parses_like_go_parse_bool() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(text), Some(true), "{text}");
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(text), Some(false), "{text}");
        }
        for text in ["", "yes", "tRUE", " true", "2"] {
            assert_eq!(parse_go_bool(text), None, "{text}");
        }
    }

    #[test]
    fn query_as_nakama_js_sends_it() {
        let query = AuthQuery::parse(Some("create=true&username=alice&")).expect("parse");
        assert_eq!(
            query,
            AuthQuery {
                create: true,
                username: Some("alice".into())
            }
        );
        let query = AuthQuery::parse(Some("create=false&")).expect("parse");
        assert_eq!(
            query,
            AuthQuery {
                create: false,
                username: None
            }
        );
        assert_eq!(
            AuthQuery::parse(None).expect("parse"),
            AuthQuery {
                create: true,
                username: None
            }
        );
    }

    #[test]
    fn query_values_are_unescaped_and_unknown_keys_ignored() {
        let query = AuthQuery::parse(Some("username=a%20b+c%2B&lang=en&&x")).expect("parse");
        assert_eq!(query.username.as_deref(), Some("a b c+"));
        assert!(query.create);
    }

    #[test]
    fn bad_query_values_are_invalid_arguments() {
        let cases = [
            (
                "create=yes",
                "parsing field \"create\": strconv.ParseBool: parsing \"yes\": invalid syntax",
            ),
            (
                "create=",
                "parsing field \"create\": strconv.ParseBool: parsing \"\": invalid syntax",
            ),
            (
                "create=true&create=false",
                "too many values for field \"create\": true, false",
            ),
            ("username=%zz", "invalid URL escape \"%zz\""),
            ("username=%4", "invalid URL escape \"%4\""),
            ("username=%ff", messages::USERNAME_INVALID_UTF8),
        ];
        for (query, message) in cases {
            assert_eq!(
                AuthQuery::parse(Some(query)),
                Err(RestError::InvalidArgument(message.to_string().into())),
                "{query}"
            );
        }
    }

    #[test]
    fn ids_follow_nakama_rules() {
        let bad = |m: &'static str| Err(RestError::InvalidArgument(m.into()));
        assert_eq!(
            validate_id(IdKind::Custom, ""),
            bad(messages::CUSTOM_ID_REQUIRED)
        );
        assert_eq!(
            validate_id(IdKind::Device, ""),
            bad(messages::DEVICE_ID_REQUIRED)
        );
        assert_eq!(
            validate_id(IdKind::Custom, "abcde"),
            bad(messages::CUSTOM_ID_INVALID_LENGTH)
        );
        assert_eq!(validate_id(IdKind::Custom, "abcdef"), Ok(()));
        assert_eq!(
            validate_id(IdKind::Device, "abcdefghi"),
            bad(messages::DEVICE_ID_INVALID_LENGTH)
        );
        assert_eq!(validate_id(IdKind::Device, "abcdefghij"), Ok(()));
        assert_eq!(validate_id(IdKind::Custom, &"x".repeat(128)), Ok(()));
        assert_eq!(
            validate_id(IdKind::Custom, &"x".repeat(129)),
            bad(messages::CUSTOM_ID_INVALID_LENGTH)
        );
        for id in [
            "has space",
            "tab\there",
            "nl\nhere",
            "del\u{7f}here",
            "nul\0here",
        ] {
            assert_eq!(
                validate_id(IdKind::Custom, id),
                bad(messages::CUSTOM_ID_INVALID_CHARS),
                "{id:?}"
            );
        }
        // Length is in bytes; non-ASCII is allowed.
        assert_eq!(validate_id(IdKind::Custom, "ééé"), Ok(()));
        assert_eq!(
            validate_id(IdKind::Custom, "éé"),
            bad(messages::CUSTOM_ID_INVALID_LENGTH)
        );
        // Characters checks come before length checks.
        assert_eq!(
            validate_id(IdKind::Custom, "a b"),
            bad(messages::CUSTOM_ID_INVALID_CHARS)
        );
    }

    #[test]
    fn usernames_follow_nakama_rules() {
        let bad = |m: &'static str| Err(RestError::InvalidArgument(m.into()));
        assert_eq!(validate_username("alice".into()), Ok("alice".into()));
        assert_eq!(
            validate_username("with space".into()),
            Ok("with space".into())
        );
        assert_eq!(validate_username("x".repeat(128)), Ok("x".repeat(128)));
        assert_eq!(
            validate_username("x".repeat(129)),
            bad(messages::USERNAME_INVALID_LENGTH)
        );
        for name in ["tab\t", "line\n", "bell\u{7}", "del\u{7f}", "quirk[]"] {
            assert_eq!(
                validate_username(name.into()),
                bad(messages::USERNAME_INVALID_CHARS),
                "{name:?}"
            );
        }
        assert_eq!(validate_username("[x]".into()), Ok("[x]".into()));
    }

    #[test]
    fn bodies_parse_like_the_gateway() {
        let parsed: Option<AccountBody> = parse_json(b"").expect("empty");
        assert!(parsed.is_none());
        let parsed: Option<AccountBody> = parse_json(b"  \n").expect("whitespace");
        assert!(parsed.is_none());
        let parsed: Option<AccountBody> = parse_json(b"null").expect("null");
        assert!(parsed.is_none());
        let parsed: Option<AccountBody> =
            parse_json(br#"{"id":"abc","vars":{"k":"v"},"extra":[1,2]}"#).expect("unknown field");
        let parsed = parsed.expect("body");
        assert_eq!(parsed.id.as_deref(), Some("abc"));
        assert_eq!(
            parsed.vars.and_then(|v| v.get("k").cloned()).as_deref(),
            Some("v")
        );
        let parsed: Option<AccountBody> = parse_json(br#"{"id":null}"#).expect("null id");
        assert!(parsed.and_then(|b| b.id).is_none());
        for bad in [
            &b"{"[..],
            b"[]",
            b"[\"abcdef\"]",
            b"\"abcdef\"",
            b"{\"id\":5}",
            b"{\"vars\":{\"k\":1}}",
            b"nope",
            b"nul",
        ] {
            let result: Result<Option<AccountBody>, _> = parse_json(bad);
            assert!(
                matches!(result, Err(RestError::InvalidArgument(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn error_responses_have_grpc_gateway_shape() {
        let response = RestError::Unauthenticated(messages::SERVER_KEY_INVALID).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Server key invalid"[..])
        );
        assert_eq!(
            response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let response = RestError::AlreadyExists(messages::USERNAME_TAKEN).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(
            RestError::BodyTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            http_status(grpc_code::PERMISSION_DENIED),
            StatusCode::FORBIDDEN
        );
        assert_eq!(http_status(grpc_code::NOT_FOUND), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(grpc_code::INTERNAL),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
