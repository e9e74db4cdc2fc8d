//! The Internet checksum (RFC 1071) shared by the classifier and the builders.
//!
//! # Theory of operation
//! [`checksum`] folds a caller's partial sum into smoltcp's one's-complement sum of the data and
//! returns it complemented, so the same call both computes a checksum (over a header whose
//! checksum field is zero) and verifies one (0 means right). [`pseudo_header_sum`] is the
//! unfolded sum of the TCP/UDP/ICMPv6 pseudo-header (addresses, protocol, length) of either
//! family, passed as `initial`.
#![forbid(unsafe_code)]

use std::net::IpAddr;

/// Internet checksum (RFC 1071) of `data`, starting from a partial sum `initial`.
/// Returns the folded, complemented value: 0 for a buffer whose checksum field is right.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    use smoltcp::wire::checksum as ck;
    let initial = (initial & 0xffff) + (initial >> 16);
    let initial = ((initial & 0xffff) + (initial >> 16)) as u16;
    !ck::combine(&[ck::data(data), initial])
}

pub(super) fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let words = |a: IpAddr| -> u32 {
        match a {
            IpAddr::V4(a) => a
                .octets()
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum(),
            IpAddr::V6(a) => a
                .octets()
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum(),
        }
    };
    words(src) + words(dst) + u32::from(proto) + (len as u32 & 0xffff) + (len as u32 >> 16)
}
