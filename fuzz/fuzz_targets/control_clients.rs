//! The control server's connection handling, sans I/O: a sequence of operations (accepts,
//! partial writes, shutdowns, oversize requests, clients leaving, time passing, sweeps) from
//! many interleaved clients driven against `tapwire_proto::control::clients::Clients`, the
//! table the server's socket loop obeys. A shadow model checks, after every operation:
//! - never more than `MAX_CLIENTS`; `Accept` exactly when below it;
//! - a client whose request is complete is never chosen for eviction, and an evicted client
//!   has stalled (`STALL_MS` without a complete request) and is the oldest such;
//! - each request is handed out at most once, equals the bytes sent (cut at
//!   `MAX_REQUEST + 1`), and is complete for a reason: EOF, oversize, or one JSON value;
//! - at most `MAX_REQUEST + 1` bytes are ever buffered per client; expiry is exact.
//!
//! Input: one byte per operation (low 3 bits: kind; the rest: a client or a size), data bytes
//! taken from the input itself.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tapwire_proto::control::clients::{
    Admit, Clients, Phase, CLIENT_TIMEOUT_MS, MAX_CLIENTS, STALL_MS,
};
use tapwire_proto::control::MAX_REQUEST;

#[derive(Debug)]
struct Shadow {
    sent: Vec<u8>,
    since: u64,
    done: bool,
}

fn pick(model: &BTreeMap<usize, Shadow>, sel: u8) -> Option<usize> {
    if model.is_empty() {
        return None;
    }
    model.keys().nth(sel as usize % model.len()).copied()
}

fuzz_target!(|data: &[u8]| {
    let mut t: Clients<u32> = Clients::new();
    let mut model: BTreeMap<usize, Shadow> = BTreeMap::new();
    let mut now = 0u64;
    let mut next_io = 0u32;
    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        i += 1;
        let arg = op >> 3;
        match op & 7 {
            // A connection waits: ask, obey.
            0 => {
                let admit = t.admit(now);
                let stalled: Vec<(u64, usize)> = model
                    .iter()
                    .filter(|(_, s)| !s.done && now.saturating_sub(s.since) >= STALL_MS)
                    .map(|(k, s)| (s.since, *k))
                    .collect();
                match admit {
                    Admit::Accept => assert!(model.len() < MAX_CLIENTS),
                    Admit::Full => {
                        assert_eq!(model.len(), MAX_CLIENTS);
                        assert!(stalled.is_empty(), "Full with stalled clients {stalled:?}");
                        continue;
                    }
                    Admit::Evict(k) => {
                        assert_eq!(model.len(), MAX_CLIENTS);
                        let s = model.get(&k).expect("evicts a known client");
                        assert!(!s.done, "evicted a client whose request arrived");
                        let oldest = stalled.iter().map(|(since, _)| *since).min();
                        assert_eq!(Some(s.since), oldest, "not the oldest stalled client");
                        assert_eq!(t.phase(k), Some(Phase::Reading));
                        model.remove(&k);
                        assert!(t.remove(k).is_some());
                    }
                }
                let k = t.insert(next_io, now);
                next_io += 1;
                let old = model.insert(
                    k,
                    Shadow {
                        sent: Vec::new(),
                        since: now,
                        done: false,
                    },
                );
                assert!(old.is_none(), "key {k} reused while live");
            }
            // Bytes from a client: `arg` selects it, the next byte is a length (x32 when its
            // top bit is set, for oversize requests); data comes from the input.
            1 | 2 => {
                let Some(k) = pick(&model, arg) else { continue };
                let len_b = data.get(i).copied().unwrap_or(0);
                i += 1;
                let len = if len_b & 0x80 != 0 {
                    (len_b & 0x7f) as usize * 32
                } else {
                    len_b as usize
                };
                // The length byte may have been the input's last (then `i` is past the end).
                let start = i.min(data.len());
                let end = (start + len).min(data.len());
                let chunk: Vec<u8> = if len_b & 0x80 != 0 {
                    vec![b' '; len]
                } else {
                    data[start..end].to_vec()
                };
                if len_b & 0x80 == 0 {
                    i = end;
                }
                let eof = op & 7 == 2;
                let s = model.get_mut(&k).unwrap();
                let was_done = s.done;
                if !was_done {
                    s.sent.extend_from_slice(&chunk);
                }
                let got = t.received(k, &chunk, eof);
                assert!(t.buffered(k) <= MAX_REQUEST + 1);
                match got {
                    Some(req) => {
                        assert!(!was_done, "request handed out twice");
                        let cut = &s.sent[..s.sent.len().min(MAX_REQUEST + 1)];
                        assert_eq!(req, cut, "request bytes");
                        let json = serde_json::from_slice::<serde_json::Value>(&req).is_ok();
                        assert!(eof || req.len() > MAX_REQUEST || json, "completed for no reason");
                        s.done = true;
                        assert_eq!(t.phase(k), Some(Phase::Replying));
                    }
                    None => {
                        if !was_done {
                            assert!(!eof, "EOF did not complete the request");
                            assert!(s.sent.len() <= MAX_REQUEST, "oversize not completed");
                        }
                    }
                }
            }
            // A client leaves (reply written, or it hung up).
            3 => {
                let Some(k) = pick(&model, arg) else { continue };
                model.remove(&k);
                assert!(t.remove(k).is_some());
                assert!(t.remove(k).is_none());
            }
            // Time passes.
            4 => now += u64::from(arg) * 97,
            5 => now += u64::from(arg) * 1013,
            // The sweep.
            6 => {
                let mut exp = t.expired(now);
                exp.sort_unstable();
                let want: Vec<usize> = model
                    .iter()
                    .filter(|(_, s)| now.saturating_sub(s.since) > CLIENT_TIMEOUT_MS)
                    .map(|(k, _)| *k)
                    .collect();
                assert_eq!(exp, want, "expiry");
                for k in exp {
                    model.remove(&k);
                    t.remove(k);
                }
            }
            // Fill up: accept until the table says no (many clients at once).
            _ => {
                while t.admit(now) == Admit::Accept {
                    let k = t.insert(next_io, now);
                    next_io += 1;
                    model.insert(
                        k,
                        Shadow {
                            sent: Vec::new(),
                            since: now,
                            done: false,
                        },
                    );
                }
                assert_eq!(t.len(), MAX_CLIENTS);
            }
        }
        assert_eq!(t.len(), model.len());
        assert!(t.len() <= MAX_CLIENTS);
        for (k, s) in &model {
            let phase = if s.done { Phase::Replying } else { Phase::Reading };
            assert_eq!(t.phase(*k), Some(phase));
        }
    }
});
