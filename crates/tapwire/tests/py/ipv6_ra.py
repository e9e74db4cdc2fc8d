
import select, socket, struct, sys, time
wait = float(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'tap0')
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
idx = socket.if_nametoindex('tap0')
s.sendto(struct.pack('!BBHI', 133, 0, 0, 0), ('ff02::2', 0, 0, idx))
print('sent-rs 1')
end = time.time() + wait
while True:
    left = end - time.time()
    if left <= 0 or not select.select([s], [], [], left)[0]:
        print('no-ra 1')
        sys.exit(0)
    data, anc, _, addr = s.recvmsg(4096, socket.CMSG_SPACE(4))
    if len(data) < 16 or data[0] != 134:
        continue
    for lvl, typ, d in anc:
        if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_HOPLIMIT:
            print('hoplimit', struct.unpack('i', d[:4])[0])
    print('src', addr[0].split('%')[0])
    print('code', data[1])
    print('cur_hop_limit', data[4])
    print('router_lifetime', struct.unpack('!H', data[6:8])[0])
    o = data[16:]
    while len(o) >= 2:
        t, l = o[0], o[1] * 8
        if l == 0 or l > len(o):
            print('bad-option', t)
            break
        b = o[:l]
        if t == 1:
            print('slla', b[2:8].hex())
        elif t == 3:
            print('prefix', '%s/%d' % (socket.inet_ntop(socket.AF_INET6, b[16:32]), b[2]))
            print('prefix_flags', hex(b[3]))
            print('prefix_valid', struct.unpack('!I', b[4:8])[0])
            print('prefix_preferred', struct.unpack('!I', b[8:12])[0])
        elif t == 5:
            print('mtu', struct.unpack('!I', b[4:8])[0])
        elif t == 25:
            print('rdnss_lifetime', struct.unpack('!I', b[4:8])[0])
            print('rdnss', ' '.join(socket.inet_ntop(socket.AF_INET6, b[8 + 16 * k:24 + 16 * k])
                                    for k in range((l - 8) // 16)))
        else:
            print('option', t)
        o = o[l:]
    sys.exit(0)
