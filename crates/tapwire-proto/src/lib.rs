//! tapwire-proto: tapwire's protocol logic, sans I/O.
//!
//! Everything here is deterministic state driven by bytes and a caller-supplied `now`: no
//! sockets, no files, no clock reads, no `unsafe` (checked by the compiler below, and by
//! `cargo tree -p tapwire-proto` showing no I/O crate). The daemon (`tapwire`) owns the I/O.
//! - [`wire`]: the shared frame types and offsets; in its submodules the validation and
//!   classification of every guest frame, the reply frames, fragmentation of outgoing packets
//!   and the Internet checksum (all re-exported as `wire::X`).
//! - [`vnet`]: the virtio-net header and the offloads it carries; [`train`]: plain UDP
//!   datagrams coalesced into `UDP_SEGMENT`/USO trains.
//! - [`reassembly`]: IPv4/IPv6 fragment reassembly.
//! - [`flow`]: the flow table with idle expiry; [`nat`]: destination translation;
//!   [`destination`]: what an address means to the host kernel (the one address policy).
//! - [`neighbour`]: the guest's neighbour entries kept honest (ARP/NDP poisoning).
//! - [`dhcp`]: the DHCP server; [`dns`]: resolv.conf parsing and upstream failover.
//! - [`control`]: control-socket requests and replies; [`config`]: the virtual network;
//!   [`to_host`]: `--forward-to-host` values and the host's loopback listeners.
//! - [`schedule`]: the engine's dirty list and timer heap; [`spin`]: when it busy-polls.
//! - [`bypass`]: bypass mode's decision (routes, published binds, the peer table);
//!   [`sockaddr`]: raw `struct sockaddr` decoding and encoding (re-exported by `bypass`).
//! - [`route`]: `RTM_GETROUTE` bytes, so bypass asks the namespace's kernel where a
//!   destination goes.
//! - [`autopublish`]: which guest listeners `-p auto` publishes; [`sock_diag`]: the netlink
//!   messages that list them.
//! - [`linux`]: the Linux ABI numbers (errno, address families) the logic speaks in.
#![forbid(unsafe_code)]

pub mod autopublish;
pub mod budget;
pub mod bypass;
pub mod config;
pub mod control;
pub mod destination;
pub mod dhcp;
pub mod dns;
pub mod flow;
pub mod linux;
pub mod nat;
pub mod neighbour;
pub mod reassembly;
pub mod refused;
pub mod route;
pub mod schedule;
pub mod sock_diag;
pub mod sockaddr;
pub mod spin;
pub mod to_host;
pub mod train;
pub mod udp_lifetime;
pub mod vnet;
pub mod wire;
