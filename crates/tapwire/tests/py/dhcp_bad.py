
import select, socket, struct, sys, time
REPS = int(sys.argv[1])
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(('tap0', 0))
MAC = tx.getsockname()[4]
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.bind(('tap0', 0))
GWMAC = bytes.fromhex('52550a000202')
def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def ip4(body, src, dst):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(body), 7, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + body
def dhcp_frame(payload, unicast=False):
    udp = struct.pack('!HHHH', 68, 67, 8 + len(payload), 0) + payload
    if unicast:
        return GWMAC + MAC + b'\x08\x00' + ip4(udp, '0.0.0.0', '10.0.2.2')
    return b'\xff' * 6 + MAC + b'\x08\x00' + ip4(udp, '0.0.0.0', '255.255.255.255')
def bootp(op=1, htype=1, hlen=6, magic=bytes([99, 130, 83, 99]), options=b'\x35\x01\x01\xff'):
    return (bytes([op, htype, hlen, 0]) + b'\x12\x34\x56\x78' + bytes(20) + MAC + bytes(10)
            + bytes(192) + magic + options)
DHCP = [
    b'',
    bootp()[:100],
    bootp()[:239],
    bootp(magic=bytes([99, 130, 83, 100])),
    bootp(op=2),
    bootp(htype=6),
    bootp(hlen=4),
    bootp(options=b'\x35\x01\x01'),                       # no end option
    bootp(options=b'\x35\x01\x01\x32\xc8\x0a'),           # option runs past the end
    bootp(options=b'\x0c\x03abc\xff'),                    # no message type
    bootp(options=b'\x35\x02\x01\x01\xff'),               # message type of length 2
    bootp(options=b'\x35\x01\x63\xff'),                   # unknown message type
    bootp(options=b'\x35\x01\x03\x32\x03\x0a\x00\x02\xff'),  # requested address of 3 bytes
]
def a6(s):
    return socket.inet_pton(socket.AF_INET6, s)
def icmp6(src, dst, typ, code, rest, hop, dmac):
    msg = bytes([typ, code, 0, 0]) + rest
    pseudo = a6(src) + a6(dst) + struct.pack('!I', len(msg)) + b'\0\0\0\x3a'
    c = csum(pseudo + msg)
    msg = msg[:2] + struct.pack('!H', c) + msg[4:]
    ip = struct.pack('!IHBB', 6 << 28, len(msg), 58, hop) + a6(src) + a6(dst)
    return dmac + MAC + b'\x86\xdd' + ip + msg
SRC = 'fe80::1:2:3:4'
SLLA = b'\x01\x01' + MAC
def ns(target, hop, code=0):
    t = a6(target)
    sn = bytes.fromhex('ff0200000000000000000001ff') + t[13:]  # solicited-node group
    return icmp6(SRC, socket.inet_ntop(socket.AF_INET6, sn), 135, code, bytes(4) + t + SLLA, hop,
                 b'\x33\x33' + sn[12:])
def rs(hop, code=0):
    return icmp6(SRC, 'ff02::2', 133, code, bytes(4) + SLLA, hop, b'\x33\x33\x00\x00\x00\x02')
def na(hop):
    return icmp6(SRC, 'ff02::1', 136, 0, b'\x20' + bytes(3) + a6(SRC) + b'\x02\x01' + MAC, hop,
                 b'\x33\x33\x00\x00\x00\x01')
NDP = [
    ns('fd00::2', 64),          # hop limit != 255: forged (off-link)
    ns('fd00::2', 1),
    ns('fd00::2', 255, code=1), # nonzero code
    ns('fd00::99', 255),        # target not ours
    rs(64),
    rs(255, code=1),
    na(64),
]
sent = {'dhcp': 0, 'ndp': 0}
for _ in range(REPS):
    for i, p in enumerate(DHCP):
        tx.send(dhcp_frame(p, unicast=bool(i % 2)))
        sent['dhcp'] += 1
    for f in NDP:
        tx.send(f)
        sent['ndp'] += 1
    time.sleep(0.01)
print('dhcp', sent['dhcp'])
print('ndp', sent['ndp'])
replies = []
end = time.time() + 1.0
while True:
    left = end - time.time()
    if left <= 0 or not select.select([rx], [], [], left)[0]:
        break
    f, a = rx.recvfrom(65536)
    if a[2] == socket.PACKET_OUTGOING or len(f) < 14:
        continue
    et = struct.unpack('!H', f[12:14])[0]
    if et == 0x0800 and len(f) >= 38 and f[23] == 17 and struct.unpack('!H', f[34:36])[0] == 67:
        replies.append('dhcp-reply')
    if et == 0x86dd and len(f) >= 55 and f[20] == 58 and f[54] in (134, 136):
        replies.append('icmp6-%d' % f[54])
print('replies', ' '.join(replies) or 'none')
