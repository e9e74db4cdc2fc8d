//! The engine at the frame level, without root: each test runs the real `Engine` in a thread
//! behind a fake TAP (a `SOCK_SEQPACKET` socketpair, as the engine fuzz target does), writes
//! guest Ethernet frames into it and checks, byte by byte and checksum by checksum, the frames
//! the engine writes back and what real host sockets on 127.0.0.1 see (the gateway address
//! stands for host loopback). It proves that ARP, DHCP, NDP/RA and ping of the gateway are
//! answered; that guest TCP connections reach host listeners with data intact both ways,
//! honour back-pressure both ways and pass FIN and RST both ways; that UDP is NAT'ed to host
//! sockets and back and its bindings expire; and that malformed frames are dropped, counted,
//! and leave the engine serving. Nothing leaves host loopback: the DNS forwarder is off and
//! only the gateway is addressed. Needs no namespace, no `/dev/net/tun`, no privilege.

#[path = "engine_frames/frames.rs"]
mod frames;
#[path = "engine_frames/guest_tcp.rs"]
mod guest_tcp;
#[path = "engine_frames/harness.rs"]
mod harness;
#[path = "engine_frames/link.rs"]
mod link;
#[path = "engine_frames/malformed.rs"]
mod malformed;
#[path = "engine_frames/tcp.rs"]
mod tcp;
#[path = "engine_frames/tcp_pressure.rs"]
mod tcp_pressure;
#[path = "engine_frames/udp_icmp.rs"]
mod udp_icmp;
