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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_and_ipv4_header_fixtures() {
        // RFC 1071 section 3's example: the sum is 0xddf2, so the checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data, 0), !0xddf2);
        // A real IPv4 header (checksum field zero), then the same header with it filled in.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr, 0), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&hdr, 0), 0);
        // An odd byte counts as the high half of a word.
        assert_eq!(checksum(&[0x01], 0), !0x0100);
    }

    #[test]
    fn initial_sums_fold_their_carries() {
        // 0x1_fffe folds to 0xffff: the same as starting from 0xffff.
        assert_eq!(
            checksum(&[0x12, 0x34], 0x1_fffe),
            checksum(&[0x12, 0x34], 0xffff)
        );
        assert_eq!(checksum(&[], 0x1_fffe), 0);
        // A large unfolded sum (several carries) equals its folded value.
        let words: u32 = 0xffff * 300;
        let folded = {
            let f = (words & 0xffff) + (words >> 16);
            (f & 0xffff) + (f >> 16)
        };
        assert_eq!(checksum(b"abcd", words), checksum(b"abcd", folded));
    }

    #[test]
    fn pseudo_header_sums() {
        // 10.0.2.100 -> 10.0.2.2, UDP, 13 bytes: the words added up, unfolded.
        let src = IpAddr::from([10, 0, 2, 100]);
        let dst = IpAddr::from([10, 0, 2, 2]);
        assert_eq!(
            pseudo_header_sum(src, dst, 17, 13),
            0x0a00 + 0x0264 + 0x0a00 + 0x0202 + 17 + 13
        );
        // The order of the addresses does not matter; the length's high half is added too.
        assert_eq!(
            pseudo_header_sum(dst, src, 17, 0x1_0005),
            pseudo_header_sum(src, dst, 17, 6)
        );
        let a6: IpAddr = "fd00::2".parse().unwrap();
        let b6: IpAddr = "fe80::1:3".parse().unwrap();
        assert_eq!(
            pseudo_header_sum(a6, b6, 58, 8),
            0xfd00 + 2 + 0xfe80 + 1 + 3 + 58 + 8
        );
    }
}
