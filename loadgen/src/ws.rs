//! RFC 6455 framing by hand: server frames are parsed in place (unmasked,
//! 7/16/64-bit lengths), client frames are built masked.

/// Opcodes.
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// Set on a server frame is a protocol error (counted, payload unmasked).
    pub mask: Option<[u8; 4]>,
    /// Header bytes, including the mask key.
    pub header_len: usize,
    pub payload_len: usize,
}

impl Header {
    pub fn total(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// How many bytes of `b` are needed before the next step of parsing can
/// happen: 2 for the first bytes, then the full header, then the full frame.
/// Returns `Err(())` for a length that does not fit in memory.
pub fn needed(b: &[u8]) -> Result<usize, ()> {
    if b.len() < 2 {
        return Ok(2);
    }
    let hl = header_len(b[1]);
    if b.len() < hl {
        return Ok(hl);
    }
    match parse_header(b)? {
        Some(h) => Ok(h.total()),
        None => Ok(hl),
    }
}

fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Parses a header from the start of `b`. `Ok(None)` when `b` is too short.
/// `Err(())` when the 64-bit length is absurd (more than 1 GiB).
#[inline]
pub fn parse_header(b: &[u8]) -> Result<Option<Header>, ()> {
    if b.len() < 2 {
        return Ok(None);
    }
    let b0 = b[0];
    let b1 = b[1];
    let hl = header_len(b1);
    if b.len() < hl {
        return Ok(None);
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 => {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(x), 10)
        }
        n => (n as u64, 2),
    };
    if len > (1 << 30) {
        return Err(());
    }
    let mask = if b1 & 0x80 != 0 {
        let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        header_len: at,
        payload_len: len as usize,
    }))
}

/// XORs `data` with the mask key (also used to unmask).
#[inline]
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let k = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ k;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// Appends one masked client frame to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// A cheap xorshift generator for mask keys (RFC 6455 wants unpredictable
/// keys against cache poisoning by proxies; there are none on loopback).
#[derive(Debug, Clone)]
pub struct MaskGen(u64);

impl MaskGen {
    pub fn new(seed: u64) -> MaskGen {
        MaskGen(seed | 1)
    }
    #[inline]
    pub fn next(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x as u32).to_ne_bytes()
    }
}

/// An unmasked frame as a server sends it (`fin` clear: a fragment), for tests.
#[cfg(test)]
pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
    let n = payload.len();
    if n < 126 {
        v.push(n as u8);
    } else if n <= 65535 {
        v.push(126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_all_length_forms() {
        for n in [0usize, 5, 125, 126, 1000, 65535, 65536, 200_000] {
            let f = server_frame(true, OP_TEXT, &vec![b'x'; n]);
            let h = parse_header(&f).expect("ok").expect("complete");
            assert_eq!(h.payload_len, n);
            assert_eq!(h.total(), f.len());
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            assert_eq!(needed(&f[..1]), Ok(2));
            assert_eq!(needed(&f), Ok(f.len()));
        }
    }

    #[test]
    fn masked_frame_round_trips() {
        let mut out = Vec::new();
        let payload = b"{\"status_update\":{\"status\":\"1:2:3\"}}";
        push_frame(&mut out, OP_TEXT, payload, [1, 2, 3, 4]);
        let h = parse_header(&out).expect("ok").expect("complete");
        let key = h.mask.expect("masked");
        let mut body = out[h.header_len..].to_vec();
        apply_mask(&mut body, key);
        assert_eq!(body, payload);
    }
}
