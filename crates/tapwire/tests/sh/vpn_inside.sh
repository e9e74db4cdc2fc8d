#!/bin/sh
# Runs inside `tapwire run` (root in its own user+network namespace): bring up a wireguard-go
# tunnel to the peer, move a download and an upload through it, print what the test checks.
# Arguments: DIR (keys; the peer's public key in DIR/peer.pub), PEER_ENDPOINT, TUNNEL_PEER_IP.
set -eu
dir=$1 endpoint=$2 peer_ip=$3
mkdir -p /run/wireguard
# A private tmpfs for the UAPI socket (this mount namespace is tapwire run's own).
mount -t tmpfs tapwire-wg /run/wireguard
WG_PROCESS_FOREGROUND=1 wireguard-go wg0 >"$dir/wg0.log" 2>&1 &
wgpid=$!
i=0
until [ -S /run/wireguard/wg0.sock ]; do
    i=$((i + 1))
    [ $i -lt 500 ] || { echo "wireguard-go did not start" >&2; cat "$dir/wg0.log" >&2; exit 2; }
    sleep 0.02
done
wg set wg0 private-key "$dir/guest.key" \
    peer "$(cat "$dir/peer.pub")" endpoint "$endpoint" allowed-ips "$peer_ip/32"
ip addr add 10.99.0.2/24 dev wg0
ip link set wg0 up
python3 - "$peer_ip" <<'EOF'
import hashlib, os, socket, sys
peer = sys.argv[1]
# Download: the peer's source on 5000 sends until EOF.
s = socket.create_connection((peer, 5000), timeout=30)
h = hashlib.sha256()
n = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    h.update(b)
    n += len(b)
s.close()
print("download", n, h.hexdigest())
# Upload: random bytes to the peer's sink on 5001.
data = os.urandom(4 << 20)
s = socket.create_connection((peer, 5001), timeout=30)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
print("upload", len(data), hashlib.sha256(data).hexdigest())
EOF
wg show wg0 latest-handshakes | awk '{ print "handshake", $2 }'
wg show wg0 transfer | awk '{ print "transfer", $2, $3 }'
kill "$wgpid"
