#!/bin/sh
OUT='@OUT@'
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface" || echo "apply_error=addr" >> "$OUT"
    if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu" || echo "apply_error=mtu" >> "$OUT"; fi
    if [ -n "$router" ]; then
        ip route replace default via "$router" dev "$interface" || echo "apply_error=route" >> "$OUT"
    fi
    ;;
esac
{
    echo "event=$1"
    env | grep -E '^(interface|ip|siaddr|subnet|router|dns|mtu|lease|serverid|broadcast|domain|hostname)='
    echo end
} >> "$OUT"
exit 0
