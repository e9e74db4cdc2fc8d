//! The guest's link: [`tap`] (`/dev/net/tun` with a virtio-net header), [`netlink`]
//! (addresses, routes, MTU for `-c`), [`device`] (the smoltcp device adapter over the TAP),
//! [`capture`] (the pcap writer that sees every frame crossing the TAP), [`sock_diag`] (the
//! guest's `NETLINK_SOCK_DIAG` socket that lists its listeners for `-p auto`).

pub mod capture;
pub mod device;
pub mod netlink;
pub mod sock_diag;
pub mod tap;
