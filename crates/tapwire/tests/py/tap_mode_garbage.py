
R = random.Random(int(sys.argv[1]))
LPORT, CLOSED = int(sys.argv[2]), int(sys.argv[3])
def rb(n):
    return bytes(R.getrandbits(8) for _ in range(n))
DSTS = [GW, DNS, '10.0.2.50', '10.0.2.255', '255.255.255.255', '224.0.0.1', '0.0.0.0',
        '127.0.0.1', GUEST, '10.0.3.1']
F = []
# random bytes (to our MAC, or broadcast)
for i in range(250):
    f = bytearray(rb(R.randrange(14, 1515)))
    f[0:6] = DMAC if i % 5 else BCAST
    F.append(bytes(f))
# odd ethertypes (incl. VLAN, MPLS, LLDP, IPv6, ARP and IPv4 with random payloads)
for i in range(150):
    et = R.choice([0x0000, 0x05dc, 0x0600, 0x8100, 0x88a8, 0x88cc, 0x8847, 0x86dd, 0x0806,
                   0x0800, 0xffff, R.randrange(65536)])
    F.append(eth(rb(R.randrange(0, 1500)), et))
# ARP: truncated, odd operations and lengths, non-unicast or foreign senders
def arp(op, sha, spa, tpa, hlen=6, plen=4):
    return struct.pack('!HHBBH', 1, 0x0800, hlen, plen, op) + sha + aton(spa) + b'\0' * 6 + aton(tpa)
for i in range(100):
    k = i % 5
    if k == 0:
        body = rb(R.randrange(0, 28))
    elif k == 1:
        body = arp(R.choice([0, 3, 4, 0xffff]), MYMAC, GUEST, GW)
    elif k == 2:
        body = arp(1, MYMAC, GUEST, GW, hlen=R.choice([0, 4, 8, 255]), plen=R.choice([0, 6, 16]))
    elif k == 3:
        # Other (non-guest) senders: claiming the guest's own address with another MAC would
        # legitimately redirect the gateway's replies, as on any LAN.
        body = arp(1, rb(6), '10.0.2.%d' % R.randrange(101, 250), R.choice([GW, DNS]))
    else:
        body = arp(1, MYMAC, R.choice(['0.0.0.0', '255.255.255.255', '10.0.3.1', '224.0.0.1']), GW)
    F.append(eth(body, 0x0806, dst=BCAST if i % 2 else DMAC))
# broken IPv4 headers
for i in range(200):
    k = i % 8
    body = udp(40000 + i, 7, b'x' * 10)
    if k == 0:
        p = rb(R.randrange(0, 20))
    elif k == 1:
        p = ip(17, body, ver=R.choice([0, 5, 6, 15]))
    elif k == 2:
        p = ip(17, body, ihl=R.randrange(0, 5))
    elif k == 3:
        p = ip(17, body, ihl=15)
    elif k == 4:
        p = ip(17, body, tot=R.choice([65535, 1500, 200, 39]))
    elif k == 5:
        p = ip(17, body, tot=R.randrange(0, 20))
    elif k == 6:
        p = ip(17, body, good=False)
    else:
        p = ip(17, body, ttl=0)
    F.append(eth(p))
# IPv4 options (valid checksums)
for i in range(100):
    opts = rb(4 * R.randrange(1, 11))
    body = [tcp(41000 + i, CLOSED, 0x02), udp(41000 + i, CLOSED, b'opt'),
            icmp(8, 0, b'\x12\x34\0\1', b'ping')][i % 3]
    F.append(eth(ip([6, 17, 1][i % 3], body, opts=opts)))
# fragments (valid checksums): first, middle, last, DF+MF, reserved bit, past 64 KiB
for i in range(150):
    k = i % 6
    payload = udp(42000 + i, 7, rb(R.randrange(8, 1000)))
    frag = [0x2000, 0x2000 | R.randrange(1, 0x1fff), R.randrange(1, 0x2000), 0x6000, 0xa000,
            0x1fff][k]
    if k in (0, 1, 3):
        payload = payload[:8 * R.randrange(1, 20)]
    F.append(eth(ip(17, payload, frag=frag, ident=i)))
# TCP: truncated headers, bad data offsets, bad checksums
for i in range(120):
    F.append(eth(ip(6, tcp(43000 + i, CLOSED, 0x02)[:R.randrange(0, 20)])))
for i in range(60):
    F.append(eth(ip(6, tcp(43200 + i, CLOSED, 0x02, doff=R.choice([0, 1, 4, 6, 15])))))
for i in range(60):
    F.append(eth(ip(6, tcp(43300 + i, LPORT, 0x02, good=False))))
# every flag combination (SYN+FIN, SYN+RST, no flags, all flags...), random seq/ack, data
for fl in range(256):
    F.append(eth(ip(6, tcp(44000 + fl, R.choice([CLOSED, LPORT]), fl, seq=R.getrandbits(32),
                           ack=R.getrandbits(32), data=rb(R.randrange(0, 64))))))
# SYNs with malformed options to a listening port (smoltcp parses them)
BAD_OPTS = [b'\x02\x00\x00\x00', b'\x02\x01\x05\xb4', b'\x02\xff\x05\xb4', b'\x03\x03\xff\x00',
            b'\x04\x00\x00\x00', b'\x08\x03\x00\x00', b'\x05\x02\x00\x00', b'\x01' * 40,
            b'\x00' * 40, b'\xfe\x01\x00\x00', b'\x03\x02\x01\x00', b'\x02\x04\x00\x00',
            b'\x05\x0a\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00', b'\x08\x0a' + b'\xff' * 8]
for i in range(120):
    o = R.choice(BAD_OPTS) if i % 4 else rb(4 * R.randrange(1, 11))
    o = (o + b'\0' * (-len(o) % 4))[:40]
    F.append(eth(ip(6, tcp(45000 + i, LPORT, 0x02, opts=o, data=rb(R.randrange(0, 32))))))
# UDP: truncated, lengths that lie, bad/zero checksums, zero ports, odd destinations
for i in range(150):
    k = i % 6
    d = rb(R.randrange(0, 200))
    dst = GW
    if k == 0:
        b = udp(46000 + i, 7, d)[:R.randrange(0, 8)]
    elif k == 1:
        b = udp(46000 + i, 7, d, length=len(d) + 8 + R.randrange(1, 3000))
    elif k == 2:
        b = udp(46000 + i, 7, d, length=R.randrange(0, 8))
    elif k == 3:
        b = udp(46000 + i, 7, d, good=False)
    elif k == 4:
        b = udp(R.choice([0, 46000 + i]), R.choice([0, 7]), d, zero=True)
    else:
        dst = R.choice(DSTS)
        b = udp(46000 + i, R.choice([CLOSED, 53, 7, 65535]), d, dst=dst)
    F.append(eth(ip(17, b, dst=dst)))
# ICMP: truncated, bad checksums, other types, odd codes, echo of any size, echo elsewhere
for i in range(150):
    k = i % 6
    dst = GW
    if k == 0:
        m = icmp(8, 0)[:R.randrange(0, 8)]
    elif k == 1:
        m = icmp(8, 0, b'\x12\x34\0\1', rb(20), good=False)
    elif k == 2:
        m = icmp(R.choice([0, 3, 4, 5, 11, 12, 13, 17, 255]), R.randrange(0, 16), rb(4),
                 rb(R.randrange(0, 100)))
    elif k == 3:
        m = icmp(8, R.randrange(1, 256), rb(4), rb(10))
    elif k == 4:
        m = icmp(8, 0, rb(4), rb(R.randrange(0, 1450)))
    else:
        dst = R.choice(['10.0.2.50', '10.0.3.1', GUEST, DNS])
        m = icmp(8, 0, rb(4), rb(R.randrange(0, 100)))
    F.append(eth(ip(1, m, dst=dst)))
# spoofed sources (incl. the gateway itself: a "land" SYN), foreign and multicast MACs
for i in range(100):
    src = R.choice(['0.0.0.0', '255.255.255.255', '127.0.0.1', '224.0.0.5', GW, DNS,
                    '10.0.2.77', '10.0.3.9'])
    b = [tcp(47000 + i, CLOSED, 0x02, src=src), udp(47000 + i, CLOSED, b'spoof', src=src)][i % 2]
    mac = R.choice([DMAC, BCAST, b'\x01\x00\x5e\x00\x00\x01', b'\x02\x00\x00\x00\x00\x09'])
    F.append(eth(ip([6, 17][i % 2], b, src=src), dst=mac))
# IPv6 garbage, full-MTU frames, and frames bigger than the MTU (the kernel refuses those)
for i in range(50):
    F.append(eth(rb(R.randrange(0, 1500)), 0x86dd))
for i in range(20):
    F.append(eth(ip(17, udp(48000 + i, CLOSED, rb(1472)))))
    F.append(eth(ip(17, udp(48100 + i, CLOSED, rb(1600)))))
R.shuffle(F)
for f in F:
    send(f)
sys.stderr.write('send errors: %r\n' % errors)
print('frames=%d sent=%d failed=%d bytes=%d dropped=%d stalled=%d' % (len(F), sent, failed, nbytes,
      tap_tx_dropped() - TX0[1], stalled))
