#!/bin/bash
# Bounded memory (issue 5): with -o cache_mb=2, walking a tree of 100 000
# entries (find -ls, twice) keeps virtmount's RSS under
#
#     RSS after the plug + cache_mb + 16 MiB
#
# The 16 MiB is what does not depend on how many files were seen: libfuse's
# worker threads (up to 10 idle, each with a request buffer of max_write,
# 1 MiB, plus its stack and malloc arena), the reply buffers of a request in
# flight (a read of up to 1 MiB, a readdirplus page), and the listing of the
# directory being read, held from opendir to releasedir (1 000 entries here:
# under 1 MiB).  What the cache bounds -- the nodes of guest files the kernel
# knows -- must stay within cache_mb: 100 000 of them take ~45 MB.  The
# second walk must not end higher than the first (a leak would).
#
# The tree is 100 directories of 1 000 files: each directory is smaller than
# the cache, as in a real guest.  A single directory of 100 000 entries
# (test-files.sh has one) is not walked here: with a cache smaller than its
# nodes, every stat that find makes after reading it is a round trip to the
# appliance (the kernel was made to forget the entry), ~7 minutes under TCG.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
source "$(dirname "$0")/files.sh"
vmt_init

command -v mke2fs >/dev/null || skip "mke2fs is not installed"
CACHE_MB=2
T=$VMT_DIR/tree I=$VMT_DIR/img
mkdir -p "$I"
t0=$(now_us)
files_tree_crowd "$T" 100 1000
mke2fs -q -F -t ext4 -N 110000 -L crowd -d "$T" -- "$I/crowd.raw" 128M >/dev/null || fail "mke2fs"
say "tree and image made: $(( ($(now_us) - t0) / 1000 )) ms"

lv_start a
lv_define a alpha "$(disk_xml "$I/crowd.raw" raw vda virtio)"
M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg,cache_mb=$CACHE_MB"
plug "$M/a/alpha/disks/vda"
say "plug (appliance boot included): $PLUG_MS ms"
P=$M/a/alpha/disks/vda/whole
PID=$(vm_pid "$M")
assert_file_bytes "$P/d042/f0042" $'a needle\n'

base=$(files_rss_kib "$PID")
bound=$(( base + CACHE_MB * 1024 + 16 * 1024 ))
say "virtmount RSS after the plug: $base KiB; bound: $base + $CACHE_MB MiB + 16 MiB = $bound KiB"
for walk in 1 2; do
    files_rss_walk "$PID" "$P"
    say "walk $walk: find -ls of $WALK_COUNT objects in $WALK_MS ms; RSS (KiB) before $RSS_BEFORE, peak $RSS_PEAK, after $RSS_AFTER (bound $bound)"
    assert_eq "walk $walk: objects listed (the tree's, and lost+found)" \
        $(( $(find "$T" | wc -l) + 1 )) "$WALK_COUNT"
    (( RSS_PEAK <= bound )) ||
        fail "walk $walk: virtmount's RSS peaked at $RSS_PEAK KiB, over the bound $bound KiB ($base after the plug + cache_mb=$CACHE_MB + 16 MiB)"
    eval "after_$walk=\$RSS_AFTER"
done
# (1 MiB of slack: malloc's arenas do not give back every page)
(( after_2 <= after_1 + 1024 )) ||
    fail "virtmount's RSS grows from walk to walk: $after_1 KiB after the first, $after_2 KiB after the second"
# Still all there, content and xattrs, after the cache has turned over.
assert_file_bytes "$P/d042/f0042" $'a needle\n'
assert_eq "an xattr after the cache turned over" yes \
    "$(getfattr --absolute-names --only-values -n user.crowd "$P/d042/f0042")"
vm_umount "$M"
say "PASS"
