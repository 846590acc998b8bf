//! Any string as a session or refresh token: never a panic, never accepted
//! (the fuzzer cannot forge an HS256 signature).
#![no_main]

use herald::auth::Tokens;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new("fuzz-session-key", "fuzz-refresh-key", 60, 3600))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    assert!(tokens().verify_session(&text).is_err());
    assert!(tokens().verify_refresh(&text).is_err());
});
