//! Session and refresh tokens: HS256 JWTs with exactly Nakama's claims.
//!
//! Owns: the two signing keys, the two lifetimes, and the wire shape of the
//! claims (`tid`, `uid`, `usn`, `vrs`, `exp`, `iat`, in that order, each
//! omitted when empty or zero, as Go's `omitempty` does).
//!
//! Invariants:
//! * A token we mint is byte-for-byte what Nakama would mint for the same
//!   claims and key: header `{"alg":"HS256","typ":"JWT"}`, claims in struct
//!   order, `vrs` keys sorted (Go marshals maps sorted), and `<`, `>`, `&`,
//!   U+2028, U+2029 escaped as `\u003c` etc. The escaping also keeps the
//!   base64url payload free of the `-`/`_` characters that nakama-js 2.8.0
//!   cannot decode for the common cases (reference §10.4).
//! * A token minted by a real Nakama with the same key verifies here.
//! * Verification accepts HS256 only (`alg: none` and every other algorithm
//!   are rejected before the signature is looked at), requires `exp` and
//!   requires it to be strictly in the future (zero leeway, like Go's
//!   `jwt.WithExpirationRequired()`), ignores `iat`, and requires `uid` to
//!   parse as a UUID.
//! * Session and refresh tokens use different keys, so one never verifies as
//!   the other (unless an operator configures the same key for both, which
//!   Nakama allows too).
//!
//! Threads: [`Tokens`] is immutable after construction and shared as
//! `Arc<Tokens>` by every runtime thread; nothing here locks or blocks.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::UserId;

/// Session variables (`vrs`). Sorted, because Go marshals maps with sorted keys.
pub type Vars = BTreeMap<String, String>;

/// Go's `jwt.SigningMethodHS256` header, in Go's field order.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Why a token was refused (or, for [`TokenError::Signing`], not minted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or a part is not the JSON it should be.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than HS256 (including `none`).
    #[error("token algorithm is not HS256")]
    Algorithm,
    /// The signature does not match this key.
    #[error("token signature invalid")]
    Signature,
    /// No `exp` claim.
    #[error("token has no exp claim")]
    MissingExpiry,
    /// `exp` is now or in the past.
    #[error("token expired")]
    Expired,
    /// `uid` is missing or not a UUID.
    #[error("token uid is not a user id")]
    InvalidUserId,
    /// The HMAC could not be computed (never expected for HS256).
    #[error("token signing failed: {0}")]
    Signing(String),
}

/// The verified content of a session or refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    /// `tid`: shared by a session token and its paired refresh token. May be
    /// empty in tokens minted by old Nakama versions.
    pub token_id: String,
    /// `uid`.
    pub user_id: UserId,
    /// `usn`; empty when the token carries none.
    pub username: String,
    /// `vrs`; empty when absent.
    pub vars: Vars,
    /// `exp`, unix seconds.
    pub expires_at: i64,
    /// `iat`, unix seconds; 0 when absent (it is never checked).
    pub issued_at: i64,
}

/// A freshly minted token pair, as the REST API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSession {
    /// The session token (signed with the session key).
    pub token: String,
    /// The refresh token (signed with the refresh key, same `tid`).
    pub refresh_token: String,
}

/// One HS256 key in both directions.
struct Key {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(secret: &str) -> Key {
        Key {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }
}

/// Mints and verifies session and refresh tokens. Immutable; share it in an `Arc`.
pub struct Tokens {
    /// `session.encryption_key`.
    session: Key,
    /// `session.refresh_encryption_key`.
    refresh: Key,
    /// Session token lifetime, seconds.
    token_expiry_sec: i64,
    /// Refresh token lifetime, seconds.
    refresh_token_expiry_sec: i64,
    /// HS256 only, `exp` required, zero leeway, `aud` ignored (Nakama never looks at it).
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("token_expiry_sec", &self.token_expiry_sec)
            .field("refresh_token_expiry_sec", &self.refresh_token_expiry_sec)
            .finish_non_exhaustive()
    }
}

/// Claims as they are written: Go's struct order, Go's `omitempty`.
#[derive(Serialize)]
struct ClaimsOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    tid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    usn: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    vrs: &'a Vars,
    #[serde(skip_serializing_if = "is_zero")]
    exp: i64,
    #[serde(skip_serializing_if = "is_zero")]
    iat: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// Claims as they are read. `null` means absent, as in Go; unknown claims are ignored.
#[derive(Deserialize)]
struct ClaimsIn {
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    usn: Option<String>,
    #[serde(default)]
    vrs: Option<Vars>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
}

/// Current unix time in seconds (0 if the clock is before 1970).
fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Escapes `<`, `>`, `&`, U+2028 and U+2029 the way Go's `encoding/json` does.
/// These characters occur only inside strings in serde_json's output, so a
/// plain substitution over the whole document is exact.
fn go_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 32);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
    out
}

impl Tokens {
    /// Keys are used as raw bytes, like Nakama's `[]byte(key)`. Lifetimes are in seconds.
    pub fn new(
        encryption_key: &str,
        refresh_encryption_key: &str,
        token_expiry_sec: u64,
        refresh_token_expiry_sec: u64,
    ) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Tokens {
            session: Key::new(encryption_key),
            refresh: Key::new(refresh_encryption_key),
            token_expiry_sec: i64::try_from(token_expiry_sec).unwrap_or(i64::MAX / 2),
            refresh_token_expiry_sec: i64::try_from(refresh_token_expiry_sec)
                .unwrap_or(i64::MAX / 2),
            validation,
        }
    }

    /// Mints a session token and its refresh token with a fresh UUIDv4 `tid`.
    pub fn issue(
        &self,
        user_id: UserId,
        username: &str,
        vars: &Vars,
    ) -> Result<IssuedSession, TokenError> {
        let token_id = Uuid::new_v4().to_string();
        self.issue_pair(&token_id, user_id, username, vars, now_unix())
    }

    /// Mints a new pair for a verified refresh token, reusing its `tid` (a
    /// fresh one if it had none). `vars_override` replaces the old `vrs` when
    /// given. The username is `claims.username`; callers that looked the
    /// account up put its current name there first, as Nakama does.
    pub fn refresh(
        &self,
        claims: &SessionClaims,
        vars_override: Option<&Vars>,
    ) -> Result<IssuedSession, TokenError> {
        let token_id = if claims.token_id.is_empty() {
            Uuid::new_v4().to_string()
        } else {
            claims.token_id.clone()
        };
        let vars = vars_override.unwrap_or(&claims.vars);
        self.issue_pair(
            &token_id,
            claims.user_id,
            &claims.username,
            vars,
            now_unix(),
        )
    }

    /// Verifies a session token (session key).
    pub fn verify_session(&self, token: &str) -> Result<SessionClaims, TokenError> {
        self.verify(token, &self.session.decoding)
    }

    /// Verifies a refresh token (refresh key).
    pub fn verify_refresh(&self, token: &str) -> Result<SessionClaims, TokenError> {
        self.verify(token, &self.refresh.decoding)
    }

    fn issue_pair(
        &self,
        token_id: &str,
        user_id: UserId,
        username: &str,
        vars: &Vars,
        now: i64,
    ) -> Result<IssuedSession, TokenError> {
        let mut uid = [0u8; 36];
        let uid = user_id.encode(&mut uid);
        let mut claims = ClaimsOut {
            tid: token_id,
            uid,
            usn: username,
            vrs: vars,
            exp: now.saturating_add(self.token_expiry_sec),
            iat: now,
        };
        let token = encode(&self.session.encoding, &claims)?;
        claims.exp = now.saturating_add(self.refresh_token_expiry_sec);
        let refresh_token = encode(&self.refresh.encoding, &claims)?;
        Ok(IssuedSession {
            token,
            refresh_token,
        })
    }

    fn verify(&self, token: &str, key: &DecodingKey) -> Result<SessionClaims, TokenError> {
        let data = jsonwebtoken::decode::<ClaimsIn>(token, key, &self.validation)
            .map_err(|e| map_jwt_error(e.into_kind()))?;
        let claims = data.claims;
        let expires_at = claims.exp.ok_or(TokenError::MissingExpiry)?;
        // jsonwebtoken accepts exp == now; Go's validator (now.Before(exp)) does not.
        if expires_at <= now_unix() {
            return Err(TokenError::Expired);
        }
        let user_id = claims
            .uid
            .as_deref()
            .and_then(UserId::parse)
            .ok_or(TokenError::InvalidUserId)?;
        Ok(SessionClaims {
            token_id: claims.tid.unwrap_or_default(),
            user_id,
            username: claims.usn.unwrap_or_default(),
            vars: claims.vrs.unwrap_or_default(),
            expires_at,
            issued_at: claims.iat.unwrap_or(0),
        })
    }
}

/// Serializes and signs one token exactly as Go's `jwt.NewWithClaims(HS256, …).SignedString` would.
fn encode(key: &EncodingKey, claims: &ClaimsOut<'_>) -> Result<String, TokenError> {
    let json = serde_json::to_string(claims).map_err(|e| TokenError::Signing(e.to_string()))?;
    let json = go_escape(json);
    let mut message = String::with_capacity(64 + json.len() * 4 / 3 + 48);
    URL_SAFE_NO_PAD.encode_string(HEADER_JSON, &mut message);
    message.push('.');
    URL_SAFE_NO_PAD.encode_string(json.as_bytes(), &mut message);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::HS256)
        .map_err(|e| TokenError::Signing(e.to_string()))?;
    message.push('.');
    message.push_str(&signature);
    Ok(message)
}

fn map_jwt_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => TokenError::MissingExpiry,
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "defaultencryptionkey";
    const REFRESH_KEY: &str = "defaultrefreshencryptionkey";
    const USER: &str = "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f";

    fn tokens() -> Tokens {
        Tokens::new(KEY, REFRESH_KEY, 7200, 604_800)
    }

    fn user() -> UserId {
        UserId::parse(USER).expect("test uuid")
    }

    /// Builds a token by hand from raw header and claims JSON, signed with `key`.
    fn hand_built(header_json: &str, claims_json: &str, key: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(claims_json)
        );
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(key.as_bytes()),
            Algorithm::HS256,
        )
        .expect("sign");
        format!("{message}.{signature}")
    }

    fn payload_json(token: &str) -> String {
        let payload = token.split('.').nth(1).expect("payload part");
        String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("utf8")
    }

    #[test]
    fn issued_tokens_round_trip_with_shared_token_id() {
        let tokens = tokens();
        let mut vars = Vars::new();
        vars.insert("k".into(), "v".into());
        let issued = tokens.issue(user(), "alice", &vars).expect("issue");

        let session = tokens.verify_session(&issued.token).expect("session");
        let refresh = tokens
            .verify_refresh(&issued.refresh_token)
            .expect("refresh");
        assert_eq!(session.user_id, user());
        assert_eq!(session.username, "alice");
        assert_eq!(session.vars, vars);
        assert_eq!(session.token_id, refresh.token_id);
        assert!(Uuid::parse_str(&session.token_id).is_ok());
        assert!(session.expires_at > session.issued_at);
        assert!(refresh.expires_at > session.expires_at);
    }

    #[test]
    fn claims_are_written_in_nakama_order_without_empty_vars() {
        let issued = tokens()
            .issue(user(), "alice", &Vars::new())
            .expect("issue");
        let json = payload_json(&issued.token);
        let keys: Vec<&str> = ["\"tid\"", "\"uid\"", "\"usn\"", "\"exp\"", "\"iat\""]
            .into_iter()
            .collect();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| json.find(k).expect("claim present"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(!json.contains("vrs"), "{json}");
        let header = issued.token.split('.').next().expect("header");
        assert_eq!(header, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
    }

    #[test]
    fn encoding_matches_go_byte_for_byte() {
        let mut vars = Vars::new();
        vars.insert("z".into(), "1".into());
        vars.insert("a".into(), "x<y>&z".into());
        let claims = ClaimsOut {
            tid: "0b7c2c3e-7d0a-4b44-9c84-9a4a8a1f1c11",
            uid: USER,
            usn: "a>b",
            vrs: &vars,
            exp: 1_900_000_000,
            iat: 1_800_000_000,
        };
        let ours = encode(&EncodingKey::from_secret(KEY.as_bytes()), &claims).expect("encode");
        let go = hand_built(
            HEADER_JSON,
            concat!(
                r#"{"tid":"0b7c2c3e-7d0a-4b44-9c84-9a4a8a1f1c11","#,
                r#""uid":"4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f","usn":"a\u003eb","#,
                r#""vrs":{"a":"x\u003cy\u003e\u0026z","z":"1"},"exp":1900000000,"iat":1800000000}"#
            ),
            KEY,
        );
        assert_eq!(ours, go);
    }

    #[test]
    fn token_built_like_go_nakama_is_accepted() {
        // Go escapes <>& and omits an empty vrs; the claim set is exactly Nakama's.
        let exp = now_unix() + 60;
        let claims = format!(
            r#"{{"tid":"8d6f6c40-3c7e-4a55-8a43-1b1f2f4c5d6e","uid":"{USER}","usn":"p\u003c1\u0026","exp":{exp},"iat":{}}}"#,
            exp - 60
        );
        let token = hand_built(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, KEY);
        let verified = tokens().verify_session(&token).expect("accepted");
        assert_eq!(verified.user_id, user());
        assert_eq!(verified.username, "p<1&");
        assert!(verified.vars.is_empty());
        assert_eq!(verified.token_id, "8d6f6c40-3c7e-4a55-8a43-1b1f2f4c5d6e");
        assert_eq!(verified.expires_at, exp);
    }

    #[test]
    fn token_from_old_nakama_without_tid_or_iat_is_accepted() {
        let exp = now_unix() + 60;
        let claims = format!(r#"{{"uid":"{USER}","usn":"bob","vrs":{{"a":"b"}},"exp":{exp}}}"#);
        let token = hand_built(HEADER_JSON, &claims, KEY);
        let verified = tokens().verify_session(&token).expect("accepted");
        assert_eq!(verified.token_id, "");
        assert_eq!(verified.issued_at, 0);
        assert_eq!(verified.vars.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn wrong_key_is_rejected() {
        let issued = tokens()
            .issue(user(), "alice", &Vars::new())
            .expect("issue");
        let other = Tokens::new("another-key", REFRESH_KEY, 60, 60);
        assert_eq!(
            other.verify_session(&issued.token),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn expired_token_is_rejected() {
        let now = now_unix();
        for exp in [now - 10, now] {
            let claims = format!(
                r#"{{"uid":"{USER}","usn":"a","exp":{exp},"iat":{}}}"#,
                now - 100
            );
            let token = hand_built(HEADER_JSON, &claims, KEY);
            assert_eq!(
                tokens().verify_session(&token),
                Err(TokenError::Expired),
                "exp {exp}"
            );
        }
    }

    #[test]
    fn alg_none_is_rejected() {
        let exp = now_unix() + 600;
        let message = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"uid":"{USER}","exp":{exp}}}"#))
        );
        assert!(tokens().verify_session(&message).is_err());
        let other_alg = hand_built(
            r#"{"alg":"HS384","typ":"JWT"}"#,
            &format!(r#"{{"uid":"{USER}","exp":{exp}}}"#),
            KEY,
        );
        assert_eq!(
            tokens().verify_session(&other_alg),
            Err(TokenError::Algorithm)
        );
    }

    #[test]
    fn missing_exp_is_rejected() {
        let token = hand_built(HEADER_JSON, &format!(r#"{{"uid":"{USER}"}}"#), KEY);
        assert_eq!(
            tokens().verify_session(&token),
            Err(TokenError::MissingExpiry)
        );
    }

    #[test]
    fn missing_or_malformed_uid_is_rejected() {
        let exp = now_unix() + 600;
        for claims in [
            format!(r#"{{"usn":"a","exp":{exp}}}"#),
            format!(r#"{{"uid":"","exp":{exp}}}"#),
            format!(r#"{{"uid":"not-a-uuid","exp":{exp}}}"#),
        ] {
            let token = hand_built(HEADER_JSON, &claims, KEY);
            assert_eq!(
                tokens().verify_session(&token),
                Err(TokenError::InvalidUserId),
                "{claims}"
            );
        }
        // The forms gofrs accepts are accepted.
        let braced = format!(r#"{{"uid":"{{{}}}","exp":{exp}}}"#, USER.replace('-', ""));
        let token = hand_built(HEADER_JSON, &braced, KEY);
        assert_eq!(
            tokens().verify_session(&token).map(|c| c.user_id),
            Ok(user())
        );
    }

    #[test]
    fn refresh_and_session_tokens_are_not_interchangeable() {
        let tokens = tokens();
        let issued = tokens.issue(user(), "alice", &Vars::new()).expect("issue");
        assert_eq!(
            tokens.verify_session(&issued.refresh_token),
            Err(TokenError::Signature)
        );
        assert_eq!(
            tokens.verify_refresh(&issued.token),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn refresh_reuses_token_id_and_applies_vars() {
        let tokens = tokens();
        let mut vars = Vars::new();
        vars.insert("a".into(), "1".into());
        let issued = tokens.issue(user(), "alice", &vars).expect("issue");
        let old = tokens
            .verify_refresh(&issued.refresh_token)
            .expect("refresh");

        let kept = tokens.refresh(&old, None).expect("refresh");
        let kept = tokens.verify_session(&kept.token).expect("session");
        assert_eq!(kept.token_id, old.token_id);
        assert_eq!(kept.vars, vars);

        let mut new_vars = Vars::new();
        new_vars.insert("b".into(), "2".into());
        let replaced = tokens.refresh(&old, Some(&new_vars)).expect("refresh");
        let replaced_refresh = tokens
            .verify_refresh(&replaced.refresh_token)
            .expect("refresh");
        assert_eq!(replaced_refresh.token_id, old.token_id);
        assert_eq!(replaced_refresh.vars, new_vars);
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in ["", "a.b", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9.e30"] {
            assert!(tokens().verify_session(bad).is_err(), "{bad:?}");
        }
    }
}
