//! DNS wire format, just enough for an A query and its answers.

use super::*;

// DNS wire format (just enough for an A query).
// ---------------------------------------------------------------------------------------------

/// A recursive A query for `name` with transaction id `id`.
pub fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; QDCOUNT=1
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, QTYPE=A, QCLASS=IN
    q
}

/// The IPv4 addresses in the answer section of a DNS response with id `id`.
pub fn dns_answers(resp: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, String> {
    if resp.len() < 12 {
        return Err(format!("short DNS response ({} B)", resp.len()));
    }
    if resp[0..2] != id.to_be_bytes() {
        return Err("DNS response id mismatch".into());
    }
    let rcode = resp[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("DNS rcode {rcode}"));
    }
    let qd = u16::from_be_bytes([resp[4], resp[5]]);
    let an = u16::from_be_bytes([resp[6], resp[7]]);
    let mut p = 12;
    let skip_name = |p: &mut usize| -> Result<(), String> {
        loop {
            let l = *resp.get(*p).ok_or("truncated name")? as usize;
            if l == 0 {
                *p += 1;
                return Ok(());
            }
            if l & 0xc0 == 0xc0 {
                *p += 2;
                return Ok(());
            }
            *p += 1 + l;
        }
    };
    for _ in 0..qd {
        skip_name(&mut p)?;
        p += 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        skip_name(&mut p)?;
        let f = resp.get(p..p + 10).ok_or("truncated answer")?;
        let (ty, len) = (
            u16::from_be_bytes([f[0], f[1]]),
            u16::from_be_bytes([f[8], f[9]]) as usize,
        );
        p += 10;
        let rd = resp.get(p..p + len).ok_or("truncated rdata")?;
        if ty == 1 && len == 4 {
            out.push(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]));
        }
        p += len;
    }
    Ok(out)
}
