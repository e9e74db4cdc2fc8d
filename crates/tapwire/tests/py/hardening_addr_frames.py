# Hand-made frames on tap0 to the given destinations (argv: SRC6 PORT CTRL_PORT MODE DST...):
# for each DST a TCP SYN and a UDP datagram to DST:PORT, IPv6 frames for IPv6 destinations,
# IPv4 frames (from 10.0.2.100) for IPv4 ones; then the same pair to each CTRL:CTRL_PORT of the
# CTRL= arguments (the positive control: those must arrive). MODE "connect" also tries a plain
# connect() and sendto() to every DST from AF_INET6 sockets (bypass mode decides those).
# Prints one line "sent=N connects=... " at the end.
import socket, struct, sys, time
src6, port, cport, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dsts = [a for a in sys.argv[5:] if not a.startswith('CTRL=')]
ctrls = [a[5:] for a in sys.argv[5:] if a.startswith('CTRL=')]
GW_MAC = bytes.fromhex('52550a000202')
SRC4 = '10.0.2.100'
def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(('tap0', 0))
MAC = tx.getsockname()[4]
def l4(proto, dport, sport):
    if proto == 6:
        return struct.pack('!HHIIBBHHH', sport, dport, 1000, 0, 6 << 4, 0x02, 65535, 0, 0) + \
            bytes([2, 4, 5, 0xb4])
    data = b'tapwire-addr-probe'
    return struct.pack('!HHHH', sport, dport, 8 + len(data), 0) + data
def frame(dst, proto, dport, sport):
    seg = bytearray(l4(proto, dport, sport))
    at = 16 if proto == 6 else 6
    if ':' in dst:
        s, d = socket.inet_pton(socket.AF_INET6, src6), socket.inet_pton(socket.AF_INET6, dst)
        pseudo = s + d + struct.pack('!IxxxB', len(seg), proto)
        c = csum(pseudo + bytes(seg)) or 0xffff
        seg[at:at + 2] = struct.pack('!H', c)
        ip = struct.pack('!IHBB', 6 << 28, len(seg), proto, 64) + s + d
        return GW_MAC + MAC + b'\x86\xdd' + ip + bytes(seg)
    s, d = socket.inet_aton(SRC4), socket.inet_aton(dst)
    pseudo = s + d + struct.pack('!xBH', proto, len(seg))
    c = csum(pseudo + bytes(seg)) or 0xffff
    seg[at:at + 2] = struct.pack('!H', c)
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(seg), 1, 0x4000, 64, proto, 0, s, d)
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return GW_MAC + MAC + b'\x08\x00' + h + bytes(seg)
sent = 0
sport = 40000
for rnd in range(3):
    for dst in dsts:
        for proto in (6, 17):
            sport += 1
            tx.send(frame(dst, proto, port, sport))
            sent += 1
    for c in ctrls:
        for proto in (6, 17):
            sport += 1
            tx.send(frame(c, proto, cport, sport))
            sent += 1
    time.sleep(0.3)
res = []
if mode == 'connect':
    for dst in dsts:
        fam = socket.AF_INET6 if ':' in dst else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect((dst, port))
            res.append('%s/tcp=connected' % dst)
        except OSError as e:
            res.append('%s/tcp=%s' % (dst, e.errno))
        s.close()
        u = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            u.sendto(b'tapwire-addr-probe', (dst, port))
            res.append('%s/udp=sent' % dst)
        except OSError as e:
            res.append('%s/udp=%s' % (dst, e.errno))
        u.close()
time.sleep(0.5)
print('sent=%d %s' % (sent, ' '.join(res)), flush=True)
