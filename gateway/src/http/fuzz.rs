//! The bodies of the fuzz targets (`gateway/fuzz`), here so unit tests run
//! them too on fixed inputs and they cannot rot.

use super::{Framing, chunked::Decoder, request, response};

/// Parses a request head; checks what an accepted head promises. Whether
/// it accepted one (the unit tests count them: a parser that refuses
/// everything would pass the checks).
pub fn request(data: &[u8]) -> bool {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let limits = request::HeadLimits {
        max_request_line: 256,
        max_head: 2048,
    };
    if let Ok(Some(h)) = request::parse(data, &mut hdrs, &limits) {
        assert!(h.len <= data.len());
        assert!(data[..h.len].ends_with(b"\r\n\r\n"));
        assert!(
            !data[..h.len]
                .windows(2)
                .any(|w| w[1] == b'\n' && w[0] != b'\r')
        );
        let te = h
            .headers
            .iter()
            .any(|x| x.name.eq_ignore_ascii_case("transfer-encoding"));
        let cl = h
            .headers
            .iter()
            .filter(|x| x.name.eq_ignore_ascii_case("content-length"))
            .count();
        assert!(!(te && cl > 0), "CL and TE accepted together");
        assert!(cl <= 1, "repeated Content-Length accepted");
        if te {
            assert_eq!(h.framing, Framing::Chunked);
        }
        return true;
    }
    false
}

/// Parses a response head (as for GET and for HEAD); whether one was
/// accepted.
pub fn response(data: &[u8]) -> bool {
    let mut accepted = false;
    for head in [false, true] {
        let mut hdrs = [httparse::EMPTY_HEADER; 64];
        if let Ok(Some(r)) = response::parse(data, &mut hdrs, 4096, head) {
            assert!(r.len <= data.len());
            if head {
                assert_eq!(r.framing, Framing::None);
            }
            accepted = true;
        }
    }
    accepted
}

/// Decodes a chunked body whole and split at every third byte; both must
/// agree. Whether the body was complete and valid.
pub fn chunked(data: &[u8]) -> bool {
    let mut whole = Decoder::new();
    let mut out_whole = Vec::new();
    let r_whole = whole.feed(data, Some(&mut out_whole));
    let mut split = Decoder::new();
    let mut out_split = Vec::new();
    let mut r_split = Ok(());
    let mut consumed = 0;
    for piece in data.chunks(3) {
        match split.feed(piece, Some(&mut out_split)) {
            Ok(p) => {
                consumed += p.consumed;
                if p.done {
                    break;
                }
            }
            Err(e) => {
                r_split = Err(e);
                break;
            }
        }
    }
    match (r_whole, r_split) {
        (Ok(p), Ok(())) => {
            assert_eq!(p.done, split.is_done());
            if p.done {
                assert_eq!(p.consumed, consumed);
                assert_eq!(out_whole, out_split);
            }
            p.done
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            false
        }
        // A prefix that is valid so far versus an error found later is fine
        // only if the whole input was not finished.
        (Ok(p), Err(_)) => {
            assert!(!p.done || p.consumed < data.len());
            false
        }
        (Err(_), Ok(())) => {
            assert!(!split.is_done());
            false
        }
    }
}

/// The seeds and 300 deterministic mutations of each: what every fuzz
/// body also runs on in the unit tests.
#[cfg(test)]
pub(crate) fn mutated(seeds: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut x: u32 = 0x9e37_79b9;
    for s in seeds {
        out.push(s.to_vec());
        for _ in 0..300 {
            let mut v = s.to_vec();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = (x as usize) % v.len().max(1);
                match x % 4 {
                    0 if !v.is_empty() => v[i] = (x >> 8) as u8,
                    1 => v.insert(i, b"\r\n: ;0"[(x as usize >> 4) % 6]),
                    2 if v.len() > 1 => {
                        v.remove(i);
                    }
                    _ => v.truncate(i),
                }
            }
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    fn inputs() -> Vec<Vec<u8>> {
        super::mutated(&[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"5;a=b\r\nhello\r\n0\r\nX: y\r\n\r\n",
        ])
    }

    #[test]
    fn fuzz_bodies_hold_on_mutated_seeds() {
        let (mut requests, mut responses, mut bodies) = (0, 0, 0);
        let inputs = inputs();
        for input in &inputs {
            requests += usize::from(super::request(input));
            responses += usize::from(super::response(input));
            bodies += usize::from(super::chunked(input));
        }
        // The checks ran on accepted inputs, not only on refusals: the
        // seeds and some of their mutants parse (18, 9 and 6 of 1,204
        // today; a parser that refuses everything gets none).
        assert!(
            requests >= 10,
            "{requests} of {} requests accepted",
            inputs.len()
        );
        assert!(responses >= 5, "{responses} responses accepted");
        assert!(bodies >= 4, "{bodies} chunked bodies complete");
    }
}
