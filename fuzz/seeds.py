#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*), deterministically.

    python3 fuzz/seeds.py          # from the repository root or fuzz/

Frames are valid (checksums right) unless the name says otherwise, so the fuzzer starts from
inputs that reach deep into each protocol: ARP, TCP handshakes and data to the gateway, UDP to
the DNS forwarder and elsewhere, ICMP echo, DHCP, IPv6 ND/RS/TCP/UDP, fragments, options.
Multi-frame inputs use the framing of fuzz_targets/common.rs: a big-endian u16 length before
each chunk. The engine target's first byte selects the configuration (MTU, flags).
"""
import os
import socket
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, 'corpus')

GUEST_MAC = bytes([0x02, 0, 0, 0, 0, 0x01])
HOST_MAC = bytes([0x52, 0x55, 10, 0, 2, 2])
BCAST = b'\xff' * 6
GUEST = bytes([10, 0, 2, 100])
GW = bytes([10, 0, 2, 2])
DNS = bytes([10, 0, 2, 3])
PEER = bytes([192, 168, 77, 2])
GUEST6 = bytes.fromhex('fd000000000000000000000000000064')
GW6 = bytes.fromhex('fd000000000000000000000000000002')
LL6 = bytes.fromhex('fe800000000000000000000000000064')
ALLR6 = bytes.fromhex('ff020000000000000000000000000002')


def csum(data):
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff


def eth(payload, ethertype=0x0800, dst=HOST_MAC, src=GUEST_MAC):
    return dst + src + struct.pack('!H', ethertype) + payload


def ip(proto, payload, src=GUEST, dst=GW, ident=1, flags_frag=0x4000, ttl=64, options=b''):
    ihl = 5 + len(options) // 4
    h = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, 4 * ihl + len(payload), ident, flags_frag,
                    ttl, proto, 0, src, dst) + options
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + payload


def l4sum(proto, seg, src, dst):
    if len(src) == 4:
        pseudo = src + dst + struct.pack('!BBH', 0, proto, len(seg))
    else:
        pseudo = src + dst + struct.pack('!IxxxB', len(seg), proto)
    return csum(pseudo + seg)


def tcp(sport, dport, flags, seq=1000, ack=0, data=b'', src=GUEST, dst=GW, window=65535,
        options=b''):
    off = (20 + len(options)) // 4
    h = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, off << 4, flags, window, 0, 0) + options
    seg = h + data
    c = l4sum(6, seg, src, dst)
    return seg[:16] + struct.pack('!H', c) + seg[18:]


def udp(sport, dport, data, src=GUEST, dst=GW):
    seg = struct.pack('!HHHH', sport, dport, 8 + len(data), 0) + data
    c = l4sum(17, seg, src, dst) or 0xffff
    return seg[:6] + struct.pack('!H', c) + seg[8:]


def icmp_echo(ident, seq, data=b'ping'):
    m = struct.pack('!BBHHH', 8, 0, 0, ident, seq) + data
    return m[:2] + struct.pack('!H', csum(m)) + m[4:]


def arp_request(target=GW):
    return eth(struct.pack('!HHBBH6s4s6s4s', 1, 0x0800, 6, 4, 1, GUEST_MAC, GUEST, b'\0' * 6,
                           target), 0x0806, dst=BCAST)


def dns_query(name, ident=0x1234, qtype=1):
    q = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0'
    return struct.pack('!HHHHHH', ident, 0x0100, 1, 0, 0, 0) + q + struct.pack('!HH', qtype, 1)


def dhcp(msg_type, xid=0x3903f326, mac=GUEST_MAC, requested=None, server=None, ciaddr=b'\0' * 4,
         extra=b''):
    h = struct.pack('!BBBBIHH4s4s4s4s16s64s128s', 1, 1, 6, 0, xid, 0, 0x8000, ciaddr,
                    b'\0' * 4, b'\0' * 4, b'\0' * 4, mac + b'\0' * 10, b'', b'')
    opts = bytes([53, 1, msg_type])
    if requested:
        opts += bytes([50, 4]) + requested
    if server:
        opts += bytes([54, 4]) + server
    opts += bytes([55, 4, 1, 3, 6, 26]) + extra + b'\xff'
    return h + bytes([99, 130, 83, 99]) + opts


def dhcp_frame(payload):
    return eth(ip(17, udp(68, 67, payload, src=b'\0' * 4, dst=b'\xff' * 4), src=b'\0' * 4,
                  dst=b'\xff' * 4), dst=BCAST)


def ip6(nh, payload, src=GUEST6, dst=GW6, hop=64):
    return struct.pack('!IHBB16s16s', 0x60000000, len(payload), nh, hop, src, dst) + payload


def icmp6(typ, code, body, src, dst):
    m = struct.pack('!BBH', typ, code, 0) + body
    c = l4sum(58, m, src, dst)
    return m[:2] + struct.pack('!H', c) + m[4:]


def router_solicit():
    body = b'\0' * 4 + bytes([1, 1]) + GUEST_MAC
    return eth(ip6(58, icmp6(133, 0, body, LL6, ALLR6), src=LL6, dst=ALLR6, hop=255), 0x86dd,
               dst=bytes([0x33, 0x33, 0, 0, 0, 2]))


def neighbor_solicit(target=GW6):
    body = b'\0' * 4 + target + bytes([1, 1]) + GUEST_MAC
    snm = bytes.fromhex('ff0200000000000000000001ff') + target[-3:]
    return eth(ip6(58, icmp6(135, 0, body, GUEST6, snm), dst=snm, hop=255), 0x86dd,
               dst=bytes([0x33, 0x33, 0xff]) + target[-3:])


def framed(*chunks):
    return b''.join(struct.pack('!H', len(c)) + c for c in chunks)


SYN, ACK, PSH, FIN, RST = 0x02, 0x10, 0x08, 0x01, 0x04
MSS = bytes([2, 4, 0x05, 0xb4])
WS = bytes([1, 3, 3, 7])
SACKOK = bytes([4, 2, 1, 1])


def engine_seeds():
    s = {}
    s['arp'] = framed(arp_request(), arp_request(DNS))
    s['tcp-handshake-data'] = framed(
        arp_request(),
        tcp(40000, 80, SYN, options=MSS + SACKOK + WS + b'\0'),
        tcp(40000, 80, ACK, seq=1001, ack=1),
        tcp(40000, 80, PSH | ACK, seq=1001, ack=1, data=b'GET / HTTP/1.0\r\n\r\n'),
        tcp(40000, 80, FIN | ACK, seq=1019, ack=1),
        tcp(40000, 80, RST, seq=1020))
    s['tcp-syn-flood'] = framed(*[tcp(30000 + i, 9, SYN, seq=i * 7919) for i in range(64)])
    s['tcp-syn-peer'] = framed(tcp(40001, 443, SYN, dst=PEER), tcp(40002, 22, SYN | ACK, dst=PEER))
    s['tcp-odd-flags'] = framed(*[tcp(41000 + f, 80, f) for f in (0, 0x03, 0x06, 0x29, 0xff)])
    s['udp-dns'] = framed(eth(ip(17, udp(5353, 53, dns_query('example.test')), dst=DNS)),
                          eth(ip(17, udp(5354, 53, dns_query('x.test', 7, 28)), dst=DNS)))
    s['udp-host'] = framed(eth(ip(17, udp(6000, 7, b'hello'))),
                           eth(ip(17, udp(6001, 9, b'x' * 1400, dst=PEER), dst=PEER)),
                           eth(ip(17, udp(6000, 7, b''))))
    s['udp-fragments'] = framed(
        eth(ip(17, udp(6002, 7, b'y' * 1472)[:1480], flags_frag=0x2000, ident=77)),
        eth(ip(17, b'z' * 100, flags_frag=185, ident=77)))
    s['icmp-echo'] = framed(eth(ip(1, icmp_echo(1, 1))), eth(ip(1, icmp_echo(2, 1), dst=DNS)),
                            eth(ip(1, icmp_echo(3, 1, b'p' * 1000), dst=PEER)))
    s['ip-options'] = framed(eth(ip(17, udp(6003, 7, b'opt'), options=b'\x01\x01\x01\x00')))
    s['dhcp'] = framed(dhcp_frame(dhcp(1)),
                       dhcp_frame(dhcp(3, requested=bytes([10, 0, 2, 15]), server=GW)))
    s['ipv6'] = framed(router_solicit(), neighbor_solicit(),
                       eth(ip6(6, tcp(40010, 80, SYN, src=GUEST6, dst=GW6)), 0x86dd),
                       eth(ip6(17, udp(6010, 53, dns_query('v6.test'), src=GUEST6,
                                       dst=bytes.fromhex('fd000000000000000000000000000003'))),
                           0x86dd))
    s['bad-checksums'] = framed(eth(ip(6, b'\0' * 20)), eth(ip(17, b'\0' * 8)),
                                eth(b'\x45' + b'\0' * 19))
    s['truncated'] = framed(b'\0' * 14, eth(b'\x45\x00'), eth(b''), b'\x01')
    # config byte first: 0 = MTU 1500, 1 = 65520, 2 = 576, 3 = 1280; +4 no DNS; +8 no host
    # loopback; +16 IPv6.
    out = {}
    for name, frames in s.items():
        cfg = 16 if name.startswith('ipv6') else 0
        out[name] = bytes([cfg]) + frames
    out['big-mtu-udp'] = bytes([1]) + framed(eth(ip(17, udp(6004, 7, b'b' * 8000))))
    out['no-loopback-syn'] = bytes([8]) + framed(tcp(40020, 80, SYN))
    return out


def classify_seeds():
    # Chunk = one config byte (odd: IPv6 on) + one frame.
    out = {}
    for name, data in engine_seeds().items():
        cfg, rest = data[0], data[1:]
        i = 0
        while len(rest) >= 2:
            n = struct.unpack('!H', rest[:2])[0]
            frame, rest = rest[2:2 + n], rest[2 + n:]
            out['%s-%d' % (name, i)] = bytes([1 if cfg & 16 else 0]) + frame
            i += 1
    return out


def control_seeds():
    return {
        'add-tcp': b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1",'
                   b'"host_port":18080,"guest_addr":"10.0.2.100","guest_port":80}}',
        'add-udp-v6': b'{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"::1",'
                      b'"host_port":18081,"guest_port":53}}',
        'add-float-port': b'{"execute":"add_hostfwd","arguments":{"proto":"tcp",'
                          b'"host_port":18082.0,"guest_port":22}}',
        'list': b'{"execute":"list_hostfwd"}',
        'remove': b'{"execute":"remove_hostfwd","arguments":{"id":1}}',
        'connections': b'{"execute":"list_connections"}',
        'stats': b'{"execute":"get_stats"}',
        'unknown': b'{"execute":"quit"}',
        'not-json': b'{"execute":',
        'nested': b'[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
        'big-number': b'{"execute":"remove_hostfwd","arguments":{"id":1e308}}',
    }


def resolv_seeds():
    return {
        'plain': b'nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.test\n',
        'v6-zone': b'# comment\nnameserver fe80::1%eth0\nnameserver 192.0.2.1 ; trailing\n',
        'garbage': b'nameserver\nnameserver 300.1.1.1\n\tnameserver\t10.0.0.1\r\nnameserverx 192.0.2.9\n',
        'empty': b'',
    }


def dhcp_seeds():
    # Chunk = one time-step byte + the DHCP payload.
    req15 = bytes([10, 0, 2, 15])
    return {
        'discover-request': framed(b'\0' + dhcp(1), b'\1' + dhcp(3, requested=req15, server=GW)),
        'inform': framed(b'\0' + dhcp(8, ciaddr=bytes([10, 0, 2, 50]))),
        'release-decline': framed(b'\0' + dhcp(1), b'\0' + dhcp(3, requested=req15),
                                  b'\5' + dhcp(7, ciaddr=req15), b'\0' + dhcp(4, requested=req15)),
        'other-server': framed(b'\0' + dhcp(3, server=bytes([10, 0, 2, 9]))),
        'pool-exhaustion': framed(*[b'\0' + dhcp(1, mac=bytes([2, 0, 0, 0, 1, i]), xid=i)
                                    for i in range(20)]),
        'long-options': framed(b'\0' + dhcp(1, extra=bytes([12, 255]) + b'h' * 255 +
                                            bytes([0] * 8))),
    }


def sockaddr_seeds():
    # Config byte (bit 0 AF_INET6 socket, bit 1 datagram, bit 2 --disable-host-loopback), then
    # the raw sockaddr in host byte order for the family (x86_64/aarch64: little endian).
    def sin(ip, port):
        return struct.pack('<H', 2) + struct.pack('!H', port) + bytes(ip) + b'\0' * 8

    def sin6(ip, port, scope=0, flow=0):
        return (struct.pack('<H', 10) + struct.pack('!H', port) + struct.pack('<I', flow) +
                bytes(ip) + struct.pack('<I', scope))
    mapped = lambda v4: b'\0' * 10 + b'\xff\xff' + bytes(v4)
    return {
        'v4-gateway': b'\0' + sin(GW, 80),
        'v4-gateway-noloop': b'\4' + sin(GW, 80),
        'v4-peer': b'\0' + sin(PEER, 443),
        'v4-loopback': b'\0' + sin([127, 0, 0, 1], 22),
        'v4-guest-net': b'\0' + sin([10, 0, 2, 50], 80),
        'v6-gateway': b'\1' + sin6(GW6, 80),
        'v6-mapped-loopback': b'\1' + sin6(mapped([127, 0, 0, 1]), 80),
        'v6-mapped-gateway': b'\1' + sin6(mapped(GW), 80),
        'v6-rfc2133': b'\1' + sin6(GW6, 80)[:24],
        'v6-udp-v4addr': b'\3' + sin(PEER, 53),
        'unspec': b'\2' + b'\0\0' + b'\0' * 14,
        'unix': b'\0' + struct.pack('<H', 1) + b'/run/x\0',
        'short': b'\0' + struct.pack('<H', 2) + b'\0',
    }


def destination_seeds():
    # cfg byte (bit 0 --disable-host-loopback, bit 1 -6, bit 2 --disable-dns, bits 3-4 network),
    # port (big endian), then a 4- or 16-byte address.
    out = {}
    spellings = {
        'mapped-lo': '::ffff:127.0.0.1', 'mapped-lo2': '::ffff:127.0.0.2',
        'mapped-any': '::ffff:0.0.0.0', 'compat-lo': '::127.0.0.1',
        'nat64-lo': '64:ff9b::7f00:1', 'lo6': '::1', 'any6': '::',
        'mapped-gw': '::ffff:10.0.2.2', 'gw6': 'fd00::2', 'dns6': 'fd00::3',
        'remote6': '2001:db8::1', 'mapped-remote': '::ffff:192.0.2.1',
    }
    for name, a in spellings.items():
        for cfg in (2, 3):
            out['%s-%d' % (name, cfg)] = bytes([cfg]) + struct.pack('!H', 80) + \
                socket.inet_pton(socket.AF_INET6, a)
    for name, a in {'lo': '127.0.0.1', 'any': '0.0.0.0', 'gw': '10.0.2.2', 'dns': '10.0.2.3',
                    'bcast': '255.255.255.255', 'remote': '192.0.2.1'}.items():
        for cfg in (0, 1):
            out['v4-%s-%d' % (name, cfg)] = bytes([cfg]) + struct.pack('!H', 53) + \
                socket.inet_aton(a)
    return out


def main():
    sets = {
        'engine': engine_seeds(),
        'classify': classify_seeds(),
        'control': control_seeds(),
        'resolv_conf': resolv_seeds(),
        'dhcp': dhcp_seeds(),
        'sockaddr': sockaddr_seeds(),
        'destination_policy': destination_seeds(),
    }
    for target, seeds in sets.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, 'seed-' + name), 'wb') as f:
                f.write(data)
        print('%s: %d seeds' % (target, len(seeds)))


if __name__ == '__main__':
    main()
