//! Any byte stream through the websocket frame reader, split at arbitrary
//! points as reads would split it: never a panic, never an out-of-bounds
//! position, and every message within the size limit.
#![no_main]

use herald::transport::frame_reader::{FrameReader, WsEvent};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else { return };
    let mut reader = FrameReader::new(MAX_MESSAGE);
    let mut buffer: Vec<u8> = Vec::new();
    for chunk in stream.chunks(usize::from(split).max(1)) {
        buffer.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let before = pos;
            match reader.next(&mut buffer, &mut pos) {
                Ok(Some(WsEvent::Message { payload, .. })) => assert!(payload.len() <= MAX_MESSAGE),
                Ok(Some(WsEvent::Ping(payload))) => assert!(payload.len() <= 125),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(pos > before && pos <= buffer.len());
        }
        buffer.drain(..pos);
    }
});
