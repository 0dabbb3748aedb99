#!/bin/sh
# PID 1 of each pod: HAProxy in daemon mode, reloaded in place on SIGHUP, soft-
# stopped on SIGTERM. Needs only a POSIX sh, haproxy and sleep in the image.
#
# A reload starts a new HAProxy process with -sf: it binds its own socket on
# :8080 beside the old one (SO_REUSEPORT, same uid, same network namespace: the
# pod's), the steer agent promotes it as it listens, and the old process closes
# its listener (its queue moves to the new socket) and exits when its
# connections are done.
cfg=/etc/haproxy/haproxy.cfg
pidfile=/run/haproxy/haproxy.pid

reload() {
    # A config that does not parse leaves the running generation alone.
    haproxy -c -q -f "$cfg" || return 0
    read -r pids < "$pidfile"
    haproxy -D -f "$cfg" -p "$pidfile" -sf $pids
}

running() {
    for comm in /proc/[0-9]*/comm; do
        read -r name < "$comm" 2>/dev/null && [ "$name" = haproxy ] && return 0
    done
    return 1
}

stop() {
    read -r pids < "$pidfile"
    kill -USR1 $pids 2>/dev/null
    while running; do sleep 1; done
    exit 0
}

trap reload HUP
trap stop TERM INT
haproxy -D -f "$cfg" -p "$pidfile" || exit 1
# Waiting in `wait` lets the traps run at once; it also reaps the HAProxy
# processes that exit after a reload (they are our children once daemonised).
while :; do
    sleep 1 &
    wait $!
done
