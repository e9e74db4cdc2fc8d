
R = random.Random(99)
dst, dport, count, sport0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
wait = float(sys.argv[5])
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
try:
    rx.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
except OSError:
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
rx.bind(('tap0', 0x0800))
rx.setblocking(False)
rsts, others = set(), 0
def drain():
    global others
    while True:
        try:
            f = rx.recv(4096)
        except BlockingIOError:
            return
        if len(f) < 54 or f[23] != 6 or f[26:30] != aton(dst):
            continue
        t = f[14 + (f[14] & 15) * 4:]
        sp, dp = struct.unpack('!HH', t[:4])
        if sp != dport:
            continue
        if t[13] & 0x04:
            rsts.add(dp)
        else:
            others += 1
ports = list(range(sport0, sport0 + count))
R.shuffle(ports)
dropped0 = tap_tx_dropped()
t0 = time.time()
for i, sp in enumerate(ports):
    send(eth(ip(6, tcp(sp, dport, 0x02, dst=dst, seq=R.getrandbits(32)), dst=dst, ident=i)))
    if i % 100 == 99:
        drain()
        time.sleep(0.01)
t1 = time.time()
dropped = tap_tx_dropped() - dropped0
while time.time() < t1 + wait and len(rsts) < count - dropped:
    drain()
    time.sleep(0.02)
print('sent=%d failed=%d dropped=%d rst=%d other=%d send_ms=%d' % (sent, failed, dropped,
      len(rsts), others, (t1 - t0) * 1000))
