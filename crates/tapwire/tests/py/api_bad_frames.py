
import socket, struct, sys
n_ck, n_et, n_mac = map(int, sys.argv[1:4])
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
tx.bind(('tap0', 0))
me = tx.getsockname()[4]
gw = bytes.fromhex('52550a000202')
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def ip(bad):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 28, 7, 0, 64, 17, 0,
                    socket.inet_aton('10.0.2.100'), socket.inet_aton('10.0.2.2'))
    c = csum(h) ^ (0x1234 if bad else 0)
    return h[:10] + struct.pack('!H', c) + h[12:] + struct.pack('!HHHH', 40000, 9, 8, 0)
for i in range(n_ck):
    tx.send(gw + me + b'\x08\x00' + ip(True))
for i in range(n_et):
    tx.send(gw + me + b'\x88\xb5' + bytes(46))
for i in range(n_mac):
    tx.send(bytes.fromhex('020000000001') + me + b'\x08\x00' + ip(False))
print('sent', n_ck + n_et + n_mac)
