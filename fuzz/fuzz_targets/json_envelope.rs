//! Any bytes through the JSON decoders: never a panic. What decodes must
//! re-encode and decode to the same request.
#![no_main]

use herald::protocol::{json, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data.to_vec();
    if let Ok(request) = json::decode(&mut input) {
        round_trips(&request);
    }
    let mut input = data.to_vec();
    let _ = json::decode_server_message(&mut input);
});

fn round_trips(request: &Request) {
    let mut wire = Vec::new();
    json::encode_request(request, &mut wire);
    match json::decode(&mut wire) {
        Ok(again) => assert_eq!(&again, request),
        Err(error) => panic!("re-encoded request does not decode: {error}"),
    }
}
