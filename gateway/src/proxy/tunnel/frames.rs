//! WebSocket frame boundaries (RFC 6455 §5.2), read from the headers only:
//! payloads pass untouched (never unmasked, never copied). The tunnel
//! needs two facts from them: how large the message a client is sending
//! has grown (`max_message_bytes`, summed across fragments, control
//! frames apart), and whether a stream stands between two frames, the only
//! place a close frame of the gateway's own can go.

/// A message grew past the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooBig;

/// One direction's frame parser.
#[derive(Debug, Default)]
pub struct Frames {
    /// Header bytes of the frame being read, while it is incomplete.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// Payload bytes of the data message in progress so far.
    message: u64,
    /// Messages larger than this are refused (0: no limit).
    max: u64,
}

impl Frames {
    /// A parser refusing messages over `max` bytes (0: none refused).
    pub fn new(max: u64) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// Whether the bytes seen so far end exactly at a frame's end.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Reads the frame structure of `data`, the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), TooBig> {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = (data.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                data = &data[n as usize..];
                continue;
            }
            let take = (self.need() - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == self.need() {
                self.frame()?;
            }
        }
        Ok(())
    }

    /// Bytes the current header needs, as far as it is known.
    fn need(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + mask
    }

    /// A whole header is in: account for its frame.
    fn frame(&mut self) -> Result<(), TooBig> {
        let h = &self.header;
        let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.header_len = 0;
        self.payload_left = len;
        // Control frames (close, ping, pong) may come between fragments and
        // are not part of the message.
        if opcode & 0x08 == 0 {
            self.message = if opcode == 0 {
                self.message.saturating_add(len)
            } else {
                len
            };
            if self.max != 0 && self.message > self.max {
                return Err(TooBig);
            }
            if fin {
                self.message = 0;
            }
        }
        Ok(())
    }
}

/// A close frame with `code`, as a server sends it (unmasked).
pub fn server_close(code: u16) -> [u8; 4] {
    let [a, b] = code.to_be_bytes();
    [0x88, 2, a, b]
}

/// A close frame with `code`, as a client sends it (masked with `key`).
pub fn client_close(code: u16, key: [u8; 4]) -> [u8; 8] {
    let [a, b] = code.to_be_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        a ^ key[0],
        b ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn boundaries_hold_across_any_split() {
        let stream: Vec<u8> = [
            frame(true, 1, true, 5),
            frame(true, 2, true, 300),
            frame(true, 9, true, 0),
            frame(true, 2, true, 70_000),
        ]
        .concat();
        let ends = [11, 11 + 308, 11 + 308 + 6, stream.len()];
        for step in [1, 2, 3, 7, 13, 4096] {
            let mut f = Frames::new(0);
            let mut at = 0;
            for chunk in stream.chunks(step) {
                f.feed(chunk).expect("no limit");
                at += chunk.len();
                assert_eq!(f.at_boundary(), ends.contains(&at), "step {step} at {at}");
            }
        }
    }

    #[test]
    fn a_message_is_its_fragments_summed_and_control_frames_do_not_count() {
        let mut f = Frames::new(1000);
        f.feed(&frame(false, 1, true, 600)).expect("600 so far");
        f.feed(&frame(true, 9, true, 100)).expect("a ping between");
        assert_eq!(f.feed(&frame(true, 0, true, 401)), Err(TooBig));
        let mut f = Frames::new(1000);
        f.feed(&frame(false, 2, true, 600)).expect("600");
        f.feed(&frame(true, 0, true, 400)).expect("exactly 1000");
        // A new message starts from zero.
        f.feed(&frame(true, 2, true, 1000)).expect("another 1000");
        // Refused on the header, before any of its payload.
        assert_eq!(f.feed(&frame(true, 2, true, 1001)[..8]), Err(TooBig));
        // A 64-bit length cannot wrap the sum.
        let mut f = Frames::new(1000);
        let mut huge = vec![0x02, 0x7f];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(f.feed(&huge), Err(TooBig));
    }

    #[test]
    fn close_frames() {
        assert_eq!(server_close(1009), [0x88, 2, 0x03, 0xf1]);
        let c = client_close(1001, [9, 8, 7, 6]);
        assert_eq!(c[..6], [0x88, 0x82, 9, 8, 7, 6]);
        assert_eq!([c[6] ^ 9, c[7] ^ 8], 1001u16.to_be_bytes());
    }
}
