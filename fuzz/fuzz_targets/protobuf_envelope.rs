//! Any bytes through the protobuf decoders: never a panic. What decodes must
//! re-encode and decode to the same request.
#![no_main]

use herald::protocol::protobuf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data.to_vec();
    if let Ok(request) = protobuf::decode(&mut input) {
        let mut wire = Vec::new();
        protobuf::encode_request(&request, &mut wire);
        match protobuf::decode(&mut wire) {
            Ok(again) => assert_eq!(again, request),
            Err(error) => panic!("re-encoded request does not decode: {error}"),
        }
    }
    let mut input = data.to_vec();
    let _ = protobuf::decode_server_message(&mut input);
});
