#!/bin/bash
# The harness itself, without virtmount: two private libvirtd instances (one
# also on loopback TCP), images, domains, a TCG guest that idles in SeaBIOS,
# stop and restart of an instance with its domains kept.  When this fails
# the machine, not virtmount, is what the other tests would be measuring.
VMT_NO_VIRTMOUNT=1
source "$(dirname "$0")/lib.sh"
vmt_init

lv_start a
lv_start b --tcp
assert_true "a and b are different daemons" test "$(lv_pid a)" != "$(lv_pid b)"

# Both reachable, and isolated from each other.
mk_image "$VMT_DIR/a-raw.img" raw 16M
mk_image "$VMT_DIR/a-q.qcow2" qcow2 32M
lv_define a one \
    "$(disk_xml "$VMT_DIR/a-raw.img" raw vda virtio)" \
    "$(disk_xml "$VMT_DIR/a-q.qcow2" qcow2 vdb virtio sn-b)" \
    "$(cdrom_xml hdc)"
lv_define b two
assert_eq "domains of a" "one" "$(lv_virsh a list --all --name | sed '/^$/d')"
assert_eq "domains of b" "two" "$(lv_virsh b list --all --name | sed '/^$/d')"
assert_eq "b over TCP" "two" \
    "$(virsh -q -c "$(lv_tcp_uri b)" list --all --name | sed '/^$/d')"
assert_eq "capacity of the qcow2 disk" 33554432 "$(domblk_capacity a one vdb)"
assert_eq "capacity of the raw disk" 16777216 "$(domblk_capacity a one vda)"

# A guest that runs (TCG), and its qemu lives in a's namespace only.
lv_virsh a start one >/dev/null
assert_eq "state after start" "running" "$(lv_virsh a domstate one | sed '/^$/d')"
qpid=$(cat "${LV_BASE[a]}/run/qemu/one.pid")
pid_alive "$qpid" || fail "qemu of domain one (pid $qpid) is not running"
sleep 1
assert_eq "still running after 1 s (idles in firmware)" "running" \
    "$(lv_virsh a domstate one | sed '/^$/d')"
[[ ! -e /run/libvirt/qemu/one.pid ]] || fail "private /run/libvirt leaked into the real one"

# Stop b: unreachable; restart: same port, same domains.
lv_stop b
if virsh -q -c "$(lv_tcp_uri b)" list --all --name >/dev/null 2>&1; then
    fail "b still answers after lv_stop"
fi
lv_start b
assert_eq "b's domain kept across restart" "two" \
    "$(virsh -q -c "$(lv_tcp_uri b)" list --all --name | sed '/^$/d')"

# Stopping a destroys its running guest: no qemu outlives the daemon.
lv_stop a
wait_pid_gone "$qpid" 10 || fail "qemu pid $qpid survived lv_stop a"
lv_start a
assert_eq "a's domain kept, shut off" "shut off" "$(lv_virsh a domstate one | sed '/^$/d')"
say "harness OK"
