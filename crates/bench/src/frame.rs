//! The hot path's framing, by hand: masked client frames appended to a
//! reused write buffer, server frames parsed in place from a reused read
//! buffer, and message templates whose timestamp digits are patched in
//! place, so that no message allocates.
//!
//! Why by hand rather than tungstenite's `WebSocketStream` with `feed` +
//! `flush` (both kept: `pairs --framing tungstenite`): tungstenite turns
//! every frame into an owned `Message` (a `Bytes` per frame read, a
//! `String` per frame sent, UTF-8 checks, its own buffer copies). Measured
//! with `pairs -n 100 -k 4 --size 80`, 5 s, against the release gateway,
//! server and load generator pinned to a core each (a busy machine, two
//! runs each), user-space CPU per delivered message was 1.25-1.36 us with
//! tungstenite and 0.59-0.63 us by hand; kernel time, the same for both
//! (about 2.6 us: a loopback write also runs the receiver's TCP path),
//! dominates, so the whole is about 3.2 against 3.75 us per message. The
//! hand-rolled path takes 15% less of the load generator's core, and half
//! of what is in its control.

use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use wssgate_wire::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// Marks the timestamp in a message: `~t` then [`TS_DIGITS`] digits
/// (nanoseconds since the run's epoch), then [`SEQ_DIGITS`] digits of
/// sequence number when the scenario numbers its messages.
pub const MARKER: &[u8; 2] = b"~t";
/// Digits of the timestamp (10^16 ns is 115 days).
pub const TS_DIGITS: usize = 16;
/// Digits of the sequence number.
pub const SEQ_DIGITS: usize = 10;
/// The largest frame a server may send us.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Frame header length (mask key included) of a client frame with `len` payload bytes.
pub fn client_header_len(len: usize) -> usize {
    match len {
        0..=125 => 6,
        126..=0xffff => 8,
        _ => 14,
    }
}

/// The payload length that makes a client frame `size` bytes, header
/// included; at the two sizes where the header grows past the target, the
/// frame is a byte or two short.
pub fn payload_len_for(size: usize) -> usize {
    [6, 8, 14]
        .into_iter()
        .map(|h| size.saturating_sub(h))
        .find(|&p| client_header_len(p) + p == size)
        .unwrap_or_else(|| size.saturating_sub(8))
}

/// Appends a masked client frame with `payload`.
pub fn append_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    append_header(out, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

fn append_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
}

/// XORs `buf` with the mask key (RFC 6455 section 5.3).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let mut chunks = buf.chunks_exact_mut(4);
    for chunk in &mut chunks {
        for (b, m) in chunk.iter_mut().zip(mask) {
            *b ^= m;
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// Mask keys: a cheap xorshift per connection (servers only unmask; the
/// unpredictability RFC 6455 asks for protects proxies from browsers).
#[derive(Debug, Clone)]
pub struct Masker(u32);

impl Masker {
    /// A generator seeded from a connection index.
    pub fn new(seed: usize) -> Masker {
        Masker((seed as u32).wrapping_mul(0x9e37_79b9) | 1)
    }

    /// The next mask key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_ne_bytes()
    }
}

/// A message serialized once: `{"dst":DST,"msg":"~t<digits> xxx…"}`, padded
/// so that the whole client frame is `size` bytes.
#[derive(Debug, Clone)]
pub struct Template {
    payload: Vec<u8>,
    /// Offset of the first timestamp digit in `payload`.
    digits_at: usize,
    with_seq: bool,
}

impl Template {
    /// A template addressed to `dst` (a name or `#room`), `size` bytes per
    /// frame; `with_seq` adds sequence digits after the timestamp.
    pub fn new(dst: &str, size: usize, with_seq: bool) -> anyhow::Result<Template> {
        let dst_json = serde_json::to_string(dst).expect("a string serializes");
        let head = format!("{{\"dst\":{dst_json},\"msg\":\"~t");
        let digits = TS_DIGITS + if with_seq { SEQ_DIGITS } else { 0 };
        let tail = "\"}";
        let minimum = head.len() + digits + tail.len();
        let payload_len = payload_len_for(size);
        anyhow::ensure!(
            payload_len >= minimum,
            "--size {size} is too small: a frame for {dst:?} needs at least {} bytes",
            minimum + client_header_len(minimum)
        );
        anyhow::ensure!(size <= 1 << 20, "--size {size} is over 1 MiB");
        let mut payload = Vec::with_capacity(payload_len);
        payload.extend_from_slice(head.as_bytes());
        payload.resize(head.len() + digits, b'0');
        payload.resize(payload_len - tail.len(), b'x');
        payload.extend_from_slice(tail.as_bytes());
        Ok(Template {
            payload,
            digits_at: head.len(),
            with_seq,
        })
    }

    /// Bytes of one frame made from this template.
    pub fn frame_len(&self) -> usize {
        client_header_len(self.payload.len()) + self.payload.len()
    }

    /// Appends one masked frame carrying `ts_ns` (and `seq`).
    pub fn append(&self, out: &mut Vec<u8>, ts_ns: u64, seq: u64, mask: [u8; 4]) {
        append_header(out, OP_TEXT, self.payload.len(), mask);
        let start = out.len();
        self.append_payload(out, ts_ns, seq);
        apply_mask(&mut out[start..], mask);
    }

    /// Appends the unmasked JSON text carrying `ts_ns` (and `seq`).
    pub fn append_payload(&self, out: &mut Vec<u8>, ts_ns: u64, seq: u64) {
        let start = out.len();
        out.extend_from_slice(&self.payload);
        let digits = start + self.digits_at;
        write_digits(&mut out[digits..digits + TS_DIGITS], ts_ns);
        if self.with_seq {
            write_digits(
                &mut out[digits + TS_DIGITS..digits + TS_DIGITS + SEQ_DIGITS],
                seq,
            );
        }
    }
}

/// Writes `value` as zero-padded decimal filling `out` (high digits dropped).
fn write_digits(out: &mut [u8], mut value: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn read_digits(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit()
            .then(|| acc.wrapping_mul(10) + u64::from(d - b'0'))
    })
}

/// The timestamp (and sequence number, when `with_seq`) a message carries;
/// `None` for frames that are not the load generator's messages.
pub fn find_stamp(payload: &[u8], with_seq: bool) -> Option<(u64, u64)> {
    // A byte scan for '~' (vectorized) beats comparing every 2-byte window.
    let mut from = 0;
    let at = loop {
        let i = from + payload[from..].iter().position(|&b| b == MARKER[0])?;
        if payload.get(i + 1) == Some(&MARKER[1]) {
            break i + MARKER.len();
        }
        from = i + 1;
    };
    let ts = read_digits(payload.get(at..at + TS_DIGITS)?)?;
    let seq = if with_seq {
        read_digits(payload.get(at + TS_DIGITS..at + TS_DIGITS + SEQ_DIGITS)?)?
    } else {
        0
    };
    Some((ts, seq))
}

/// Why the server's byte stream is not WebSocket frames we can read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A masked server frame (RFC 6455 forbids it).
    #[error("the server sent a masked frame")]
    Masked,
    /// A frame over [`MAX_FRAME`].
    #[error("the server sent a frame of {0} bytes")]
    TooLarge(u64),
}

/// A reused read buffer and the frames in it: `fill` reads once, `next`
/// hands out each complete frame's opcode and payload without copying.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    /// A reader whose buffer starts at `capacity` bytes (it grows for a
    /// larger frame).
    pub fn new(capacity: usize) -> Reader {
        Reader {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// The bytes read but not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks the first `n` pending bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `stream` (making room first); `Ok(0)` at EOF.
    /// Cancel-safe: nothing is lost when the future is dropped.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> std::io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame (opcode and the payload's range in
    /// [`Reader::payload`]), consumed; `None` until more bytes are read.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Range<usize>)>, FrameError> {
        let buf = &self.buf[self.start..self.end];
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        if b1 & 0x80 != 0 {
            return Err(FrameError::Masked);
        }
        let (len, header) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if len > MAX_FRAME as u64 {
            return Err(FrameError::TooLarge(len));
        }
        let total = header + len as usize;
        if buf.len() < total {
            if self.buf.len() < total {
                // Make room for the whole frame before the next read.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                self.buf.resize(total.next_power_of_two(), 0);
            }
            return Ok(None);
        }
        let payload = self.start + header..self.start + total;
        self.start += total;
        Ok(Some((b0 & 0x0f, payload)))
    }

    /// The bytes of a range [`Reader::next_frame`] returned (valid until the next `fill`).
    pub fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Forgets consumed bytes once everything read was handled, so the
    /// next read starts at the front.
    pub fn compact(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
}

/// Hands the payload of every complete data frame (text, binary,
/// continuation) now in `reader` to `on_data`, answers pings into `out`
/// and compacts the reader. `Err` says why the connection is over: the
/// server's close frame, described, or a frame that does not parse.
pub fn drain(
    reader: &mut Reader,
    out: &mut Vec<u8>,
    masker: &mut Masker,
    mut on_data: impl FnMut(&[u8]),
) -> Result<(), String> {
    while let Some((opcode, range)) = reader.next_frame().map_err(|e| e.to_string())? {
        let payload = reader.payload(range);
        match opcode {
            OP_TEXT | OP_BINARY | OP_CONTINUATION => on_data(payload),
            OP_PING => append_frame(out, OP_PONG, payload, masker.next_key()),
            OP_CLOSE => return Err(describe_close(payload)),
            _ => {}
        }
    }
    reader.compact();
    Ok(())
}

/// What a server's close frame said, for an error message.
pub fn describe_close(payload: &[u8]) -> String {
    match payload {
        [a, b, reason @ ..] => format!(
            "closed by the server: {} {}",
            u16::from_be_bytes([*a, *b]),
            String::from_utf8_lossy(reason)
        ),
        _ => "closed by the server".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let len = (frame[1] & 0x7f) as usize;
        assert!(len < 126);
        let mask: [u8; 4] = frame[2..6].try_into().unwrap();
        let mut payload = frame[6..].to_vec();
        assert_eq!(payload.len(), len);
        apply_mask(&mut payload, mask);
        (frame[0], payload)
    }

    #[test]
    fn template_fills_the_size_and_carries_the_stamp() {
        let t = Template::new("bench-1", 80, false).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 1_234_567, 0, Masker::new(3).next_key());
        assert_eq!(out.len(), 80);
        assert_eq!(t.frame_len(), 80);
        let (b0, payload) = unmask(&out);
        assert_eq!(b0, 0x80 | OP_TEXT);
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["dst"], "bench-1");
        assert_eq!(find_stamp(&payload, false), Some((1_234_567, 0)));
    }

    #[test]
    fn sequence_digits_follow_the_timestamp() {
        let t = Template::new("#room", 200, true).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 42, 7, [1, 2, 3, 4]);
        assert_eq!(out.len(), 200);
        let mut payload = out[8..].to_vec();
        apply_mask(&mut payload, [1, 2, 3, 4]);
        assert_eq!(find_stamp(&payload, true), Some((42, 7)));
        // A server that re-serializes with spaces still carries the stamp.
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let pretty = serde_json::to_string_pretty(&json).unwrap();
        assert_eq!(find_stamp(pretty.as_bytes(), true), Some((42, 7)));
    }

    #[test]
    fn stray_markers_are_skipped() {
        let text = br#"{"dst":"a~b","msg":"~x~~t0000000000000042 pad"}"#;
        assert_eq!(find_stamp(text, false), Some((42, 0)));
        assert_eq!(find_stamp(b"~t12", false), None);
        assert_eq!(find_stamp(b"no marker~", false), None);
    }

    #[test]
    fn too_small_a_size_is_refused() {
        assert!(Template::new("a-rather-long-name", 30, false).is_err());
    }

    #[test]
    fn reader_splits_frames_across_reads_and_grows_for_large_ones() {
        let mut r = Reader::new(8);
        let mut server = Vec::new();
        server.extend_from_slice(&[0x81, 3]);
        server.extend_from_slice(b"abc");
        server.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        server.extend(std::iter::repeat_n(b'z', 256));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut src: &[u8] = &server;
            let mut seen = Vec::new();
            while seen.len() < 2 {
                match r.next_frame().unwrap() {
                    Some((op, range)) => seen.push((op, r.payload(range).to_vec())),
                    None => assert!(r.fill(&mut src).await.unwrap() > 0),
                }
            }
            assert_eq!(seen[0], (OP_TEXT, b"abc".to_vec()));
            assert_eq!(seen[1].1.len(), 256);
        });
    }

    #[test]
    fn masked_server_frames_are_refused() {
        let mut r = Reader::new(16);
        r.buf[..2].copy_from_slice(&[0x81, 0x83]);
        r.end = 2;
        assert!(matches!(r.next_frame(), Err(FrameError::Masked)));
    }
}
