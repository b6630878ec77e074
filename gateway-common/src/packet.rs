//! Packet logic both the XDP program and host tests compile: payload
//! classification and the TCP RST the program answers plain HTTP with.
//!
//! Everything here is plain arithmetic on fixed-size arrays, so the verifier
//! sees bounded code and the host tests exercise the very same functions.

/// Ethernet header length without a VLAN tag.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad service tag (treated like 802.1Q: one tag).
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Length of an IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;
/// IPv6 extension headers the program walks to find TCP behind them.
pub const IPV6_HOP_BY_HOP: u8 = 0;
/// See [`IPV6_HOP_BY_HOP`].
pub const IPV6_ROUTING: u8 = 43;
/// See [`IPV6_HOP_BY_HOP`].
pub const IPV6_FRAGMENT: u8 = 44;
/// See [`IPV6_HOP_BY_HOP`].
pub const IPV6_AUTH: u8 = 51;
/// See [`IPV6_HOP_BY_HOP`].
pub const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked at most; a chain longer than this is dropped
/// (RFC 9098: long chains are what filters are evaded with).
pub const MAX_EXT_HEADERS: usize = 6;

/// What one IPv6 extension header says: its length in bytes (from its
/// first two bytes: next header, length field) when it is one the program
/// walks, `None` when `next` is not an extension header.
#[inline(always)]
pub fn ext_header_len(next: u8, len_field: u8) -> Option<usize> {
    match next {
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => Some((usize::from(len_field) + 1) * 8),
        IPV6_FRAGMENT => Some(8),
        // RFC 4302 §2.2: in 4-octet units, minus 2.
        IPV6_AUTH => Some((usize::from(len_field) + 2) * 4),
        _ => None,
    }
}

/// An IPv6 source as the maps key it: its prefix under `mask` (host bits
/// zero), except an IPv4-mapped address, kept whole.
#[inline(always)]
pub fn masked_v6(src: [u8; 16], mask: &[u8; 16]) -> [u8; 16] {
    let mapped = src[0] == 0
        && src[1] == 0
        && src[2] == 0
        && src[3] == 0
        && src[4] == 0
        && src[5] == 0
        && src[6] == 0
        && src[7] == 0
        && src[8] == 0
        && src[9] == 0
        && src[10] == 0xff
        && src[11] == 0xff;
    if mapped {
        return src;
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = src[i] & mask[i];
        i += 1;
    }
    out
}

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// What the first bytes of a TCP payload look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A TLS record header (content type 20..=23, version 3.x).
    TlsRecord,
    /// The start of an HTTP/1.x request line (or the h2c preface).
    HttpRequest,
    /// Anything else.
    Other,
}

/// Request methods recognised by their first four bytes (RFC 9110 §9 plus
/// PATCH and the HTTP/2 prior-knowledge preface `PRI *`).
const HTTP_PREFIXES: [[u8; 4]; 10] = [
    *b"GET ", *b"POST", *b"PUT ", *b"HEAD", *b"DELE", *b"OPTI", *b"PATC", *b"CONN", *b"TRAC",
    *b"PRI ",
];

/// Classifies a payload by its first four bytes.
#[inline(always)]
pub fn classify(head: [u8; 4]) -> Payload {
    // RFC 8446 §5.1: ContentType 20..=23, legacy_record_version 0x03 0x0{0..4}.
    if (0x14..=0x17).contains(&head[0]) && head[1] == 0x03 && head[2] <= 0x04 {
        return Payload::TlsRecord;
    }
    let mut i = 0;
    while i < HTTP_PREFIXES.len() {
        if HTTP_PREFIXES[i] == head {
            return Payload::HttpRequest;
        }
        i += 1;
    }
    Payload::Other
}

/// Bytes of a mid-connection TCP payload the kernel inspects before it
/// calls the payload plain HTTP; shorter payloads always pass.
pub const REQUEST_LINE_PROBE: usize = 10;

/// Classifies a segment's payload anywhere in a connection, where TLS
/// ciphertext can begin with any bytes: a TLS record header, or the shape
/// of a request line (method, one space, a target's first byte, then
/// printable ASCII) in the first [`REQUEST_LINE_PROBE`] bytes. Random
/// ciphertext matches with odds of about 1.3 in 10^12 per segment (README),
/// where a four-byte method prefix matched about 2.3 in 10^9.
#[inline(always)]
pub fn classify_segment(p: &[u8; REQUEST_LINE_PROBE]) -> Payload {
    if (0x14..=0x17).contains(&p[0]) && p[1] == 0x03 && p[2] <= 0x04 {
        return Payload::TlsRecord;
    }
    let t = method_len(p);
    if t == 0 || t >= REQUEST_LINE_PROBE {
        return Payload::Other;
    }
    // origin-form `/`, asterisk-form `*`, absolute-form `http:`, or
    // authority-form for CONNECT (a name or an IPv6 literal).
    let first = p[t];
    if !(first == b'/' || first == b'*' || first == b'[' || first.is_ascii_alphanumeric()) {
        return Payload::Other;
    }
    let mut i = t + 1;
    while i < REQUEST_LINE_PROBE {
        if !(0x20..=0x7e).contains(&p[i]) {
            return Payload::Other;
        }
        i += 1;
    }
    Payload::HttpRequest
}

/// Length of the method and its space at the start of `p`, or 0.
#[inline(always)]
fn method_len(p: &[u8; REQUEST_LINE_PROBE]) -> usize {
    let m: &[u8] = match (p[0], p[1]) {
        (b'G', _) => b"GET ",
        (b'P', b'O') => b"POST ",
        (b'P', b'U') => b"PUT ",
        (b'P', b'A') => b"PATCH ",
        (b'P', b'R') => b"PRI ",
        (b'H', _) => b"HEAD ",
        (b'D', _) => b"DELETE ",
        (b'O', _) => b"OPTIONS ",
        (b'C', _) => b"CONNECT ",
        (b'T', _) => b"TRACE ",
        _ => return 0,
    };
    let mut i = 0;
    while i < m.len() && i < REQUEST_LINE_PROBE {
        if p[i] != m[i] {
            return 0;
        }
        i += 1;
    }
    m.len()
}

/// The fields of an offending segment that its RST answer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Source port of the offending segment (host order).
    pub src_port: u16,
    /// Destination port of the offending segment (host order).
    pub dst_port: u16,
    /// Its sequence number.
    pub seq: u32,
    /// Its acknowledgment number.
    pub ack_seq: u32,
    /// Its flags byte.
    pub flags: u8,
    /// Its payload length in bytes.
    pub payload_len: u32,
}

/// Adds a byte slice to a one's-complement sum, 16 bits at a time.
#[inline(always)]
fn sum_words<const N: usize>(mut acc: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    acc
}

/// Folds a 32-bit one's-complement sum and complements it (RFC 1071).
#[inline(always)]
pub fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The RST's TCP header, checksum left zero. RFC 9293 §3.10.7.1: if the
/// offending segment has ACK, the reset takes its sequence number from that
/// ACK; otherwise sequence 0 with ACK of everything the segment occupied.
#[inline(always)]
fn rst_tcp_header(seg: &SegmentInfo) -> [u8; TCP_HLEN] {
    let mut occupied = seg.payload_len;
    if seg.flags & tcp_flags::SYN != 0 {
        occupied += 1;
    }
    if seg.flags & tcp_flags::FIN != 0 {
        occupied += 1;
    }
    let (seq, ack, flags) = if seg.flags & tcp_flags::ACK != 0 {
        (seg.ack_seq, 0u32, tcp_flags::RST)
    } else {
        (
            0u32,
            seg.seq.wrapping_add(occupied),
            tcp_flags::RST | tcp_flags::ACK,
        )
    };
    let sp = seg.dst_port.to_be_bytes();
    let dp = seg.src_port.to_be_bytes();
    let s = seq.to_be_bytes();
    let a = ack.to_be_bytes();
    [
        sp[0], sp[1], dp[0], dp[1], s[0], s[1], s[2], s[3], a[0], a[1], a[2], a[3],
        0x50, // data offset 5 words, no options
        flags, 0, 0, // window 0
        0, 0, // checksum, filled in below
        0, 0, // urgent pointer
    ]
}

/// The RST's TCP header with its checksum over the pseudo-header of
/// `local` → `peer` (RFC 9293 §3.1; the same sum for IPv4 and IPv6).
#[inline(always)]
fn rst_tcp_segment<const N: usize>(
    local: &[u8; N],
    peer: &[u8; N],
    seg: &SegmentInfo,
) -> [u8; TCP_HLEN] {
    let mut tcp = rst_tcp_header(seg);
    let mut acc = sum_words(0, local);
    acc = sum_words(acc, peer);
    acc += u32::from(IPPROTO_TCP) + TCP_HLEN as u32;
    let c = fold(sum_words(acc, &tcp)).to_be_bytes();
    tcp[16] = c[0];
    tcp[17] = c[1];
    tcp
}

/// IPv4 + TCP headers of the RST answering `seg`, sent from `local` (the
/// offending segment's destination) to `peer` (its source).
#[inline(always)]
pub fn rst_v4(local: [u8; 4], peer: [u8; 4], seg: &SegmentInfo) -> ([u8; 20], [u8; TCP_HLEN]) {
    let total = (20 + TCP_HLEN) as u16;
    let t = total.to_be_bytes();
    let mut ip = [
        0x45,
        0,
        t[0],
        t[1],
        0,
        0,
        0x40,
        0, // id 0, DF
        64,
        IPPROTO_TCP,
        0,
        0,
        local[0],
        local[1],
        local[2],
        local[3],
        peer[0],
        peer[1],
        peer[2],
        peer[3],
    ];
    let c = fold(sum_words(0, &ip)).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];

    (ip, rst_tcp_segment(&local, &peer, seg))
}

/// IPv6 + TCP headers of the RST answering `seg` (see [`rst_v4`]).
#[inline(always)]
pub fn rst_v6(local: [u8; 16], peer: [u8; 16], seg: &SegmentInfo) -> ([u8; 40], [u8; TCP_HLEN]) {
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[5] = TCP_HLEN as u8; // payload length
    ip[6] = IPPROTO_TCP;
    ip[7] = 64; // hop limit
    let mut i = 0;
    while i < 16 {
        ip[8 + i] = local[i];
        ip[24 + i] = peer[i];
        i += 1;
    }
    (ip, rst_tcp_segment(&local, &peer, seg))
}

/// Whether a verdict expiring at `expires_at_ns` still holds at `now_ns`.
#[inline(always)]
pub const fn verdict_live(expires_at_ns: u64, now_ns: u64) -> bool {
    now_ns < expires_at_ns
}

/// GCRA (a token bucket written as one timestamp) decision for a source
/// whose theoretical arrival time was `tat_before` when this SYN claimed its
/// slot: admitted when that slot is no further ahead of `now` than the burst
/// tolerance allows.
#[inline(always)]
pub const fn gcra_admits(tat_before: u64, now_ns: u64, tolerance_ns: u64) -> bool {
    tat_before.saturating_sub(now_ns) <= tolerance_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent checksum: sums a whole buffer, result 0 when valid.
    fn verify(buf: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in buf.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = u32::from(*pair.get(1).unwrap_or(&0));
            acc += hi | lo;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn extension_headers_have_their_lengths_and_sources_their_prefix() {
        assert_eq!(ext_header_len(IPV6_DEST_OPTS, 0), Some(8));
        assert_eq!(ext_header_len(IPV6_HOP_BY_HOP, 2), Some(24));
        assert_eq!(ext_header_len(IPV6_FRAGMENT, 99), Some(8));
        assert_eq!(ext_header_len(IPV6_AUTH, 4), Some(24));
        assert_eq!(ext_header_len(IPPROTO_TCP, 0), None);
        let mut mask = [0u8; 16];
        mask[..8].fill(0xff);
        let src = [0x20, 1, 0x0d, 0xb8, 0, 7, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            masked_v6(src, &mask),
            [0x20, 1, 0x0d, 0xb8, 0, 7, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1];
        assert_eq!(masked_v6(mapped, &mask), mapped);
    }

    #[test]
    fn classifies_tls_and_http() {
        assert_eq!(classify([0x16, 0x03, 0x01, 0x02]), Payload::TlsRecord);
        assert_eq!(classify([0x17, 0x03, 0x03, 0x00]), Payload::TlsRecord);
        assert_eq!(classify(*b"GET "), Payload::HttpRequest);
        assert_eq!(classify(*b"POST"), Payload::HttpRequest);
        assert_eq!(classify(*b"PRI "), Payload::HttpRequest);
        assert_eq!(classify(*b"GETX"), Payload::Other);
        assert_eq!(classify([0x16, 0x02, 0x01, 0x00]), Payload::Other);
        assert_eq!(classify([0, 0, 0, 0]), Payload::Other);
    }

    #[test]
    fn segments_need_the_shape_of_a_request_line() {
        let seg = |b: &[u8; REQUEST_LINE_PROBE]| classify_segment(b);
        assert_eq!(seg(b"GET / HTTP"), Payload::HttpRequest);
        assert_eq!(seg(b"GET /index"), Payload::HttpRequest);
        assert_eq!(seg(b"POST /api "), Payload::HttpRequest);
        assert_eq!(seg(b"OPTIONS * "), Payload::HttpRequest);
        assert_eq!(seg(b"DELETE /x "), Payload::HttpRequest);
        assert_eq!(seg(b"CONNECT a:"), Payload::HttpRequest);
        assert_eq!(seg(b"PRI * HTTP"), Payload::HttpRequest);
        assert_eq!(seg(b"GET http:/"), Payload::HttpRequest);
        // Ciphertext that happens to start with a method word.
        assert_eq!(seg(b"GET \x00\x9f\x13\xee\x01\x02"), Payload::Other);
        assert_eq!(seg(b"GET /\x00\x9f\x13\xee\x01"), Payload::Other);
        assert_eq!(seg(b"POST\x01\x02\x03\x04\x05\x06"), Payload::Other);
        assert_eq!(seg(b"GET  / HTT"), Payload::Other);
        assert_eq!(seg(b"GETX / HTT"), Payload::Other);
        assert_eq!(
            seg(&[0x17, 0x03, 0x03, 0, 0x20, 0, 0, 0, 0, 0]),
            Payload::TlsRecord
        );
    }

    #[test]
    fn rst_v4_checksums_are_valid() {
        let seg = SegmentInfo {
            src_port: 40000,
            dst_port: 8443,
            seq: 1000,
            ack_seq: 555,
            flags: tcp_flags::ACK | 0x08,
            payload_len: 18,
        };
        let (ip, tcp) = rst_v4([198, 18, 0, 1], [198, 18, 0, 2], &seg);
        assert_eq!(verify(&ip), 0xffff);
        let mut pseudo = vec![198, 18, 0, 1, 198, 18, 0, 2, 0, 6, 0, 20];
        pseudo.extend_from_slice(&tcp);
        assert_eq!(verify(&pseudo), 0xffff);
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 8443);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40000);
        // ACK was set: sequence comes from it, RST alone.
        assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 555);
        assert_eq!(tcp[13], tcp_flags::RST);
    }

    #[test]
    fn rst_without_ack_acknowledges_the_segment() {
        let seg = SegmentInfo {
            src_port: 1,
            dst_port: 2,
            seq: u32::MAX,
            ack_seq: 0,
            flags: tcp_flags::SYN,
            payload_len: 0,
        };
        let (_, tcp) = rst_v4([1, 2, 3, 4], [5, 6, 7, 8], &seg);
        assert_eq!(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]), 0);
        assert_eq!(tcp[13], tcp_flags::RST | tcp_flags::ACK);
    }

    #[test]
    fn rst_v6_checksum_is_valid() {
        let local = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let peer = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let seg = SegmentInfo {
            src_port: 5555,
            dst_port: 443,
            seq: 7,
            ack_seq: 9,
            flags: tcp_flags::ACK,
            payload_len: 100,
        };
        let (ip, tcp) = rst_v6(local, peer, &seg);
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(&ip[8..24], &local);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&local);
        pseudo.extend_from_slice(&peer);
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        pseudo.extend_from_slice(&tcp);
        assert_eq!(verify(&pseudo), 0xffff);
    }

    #[test]
    fn expired_verdict_does_not_hold() {
        assert!(verdict_live(100, 99));
        assert!(!verdict_live(100, 100));
        assert!(!verdict_live(100, 101));
    }

    #[test]
    fn gcra_admits_within_tolerance() {
        assert!(gcra_admits(50, 100, 0)); // idle source
        assert!(gcra_admits(100, 100, 0));
        assert!(gcra_admits(130, 100, 30));
        assert!(!gcra_admits(131, 100, 30));
    }
}
