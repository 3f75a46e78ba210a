#!/bin/bash
# Guest files on btrfs with subvolumes (issue 5): every object keeps an
# st_ino of its own.
#
# A btrfs filesystem is mounted whole in the appliance, so its subvolumes
# and snapshots are directories under whole/.  Each of them numbers its
# inodes afresh (its top is 256, its first file 257, ...), so the guest
# gives two different files in two subvolumes the same st_ino; virtmount
# must still give them two numbers (one registry number per subvolume, kept
# by the subvolume's path), or the kernel takes them for one object.
#
# The image, made through a loop mount (mount namespace of its own, as
# files.sh's files_ext4), holds the same small tree, written in the same
# order, in the top volume (plaindir/), in two subvolumes (sv1, sv2), in a
# subvolume nested in sv2 (sv2/nested) and in a read-only snapshot of sv1
# (snap, taken before sv1/b.txt was rewritten: the same inode numbers as
# sv1, one content that differs); sv1 also holds a hard link.  Its walk
# there (paths, types, (st_dev, st_ino), link counts, sizes, sha256,
# symlink targets) is what the plugged filesystem must show:
#  - no st_ino shared by two different objects (the failure names both
#    paths), hard links share one, st_nlink as in the guest;
#  - every path, type, size, content and symlink target as written, and
#    diff -r against a copy of the tree agrees;
#  - the low 40 bits of every st_ino are the guest's own inode number;
#  - every object keeps its st_ino across an unplug/replug and an
#    unmount/remount (same statedir).
# Cost: two appliance boots (the first plug, the plug after the remount)
# and a replug; about 60 objects.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/images.sh"
vmt_init

for p in mkfs.btrfs btrfs sha256sum; do
    command -v "$p" >/dev/null || skip "$p is not installed (btrfs-progs, coreutils)"
done
[[ -e /dev/loop-control ]] || skip "no loop devices (/dev/loop-control): the btrfs image is filled through a loop mount"
modprobe -q btrfs 2>/dev/null || true # (listed only once loaded, when it is a module)
grep -qw btrfs /proc/filesystems ||
    skip "this machine's kernel has no btrfs: the image is filled through a loop mount"

# ---- helpers ---------------------------------------------------------------------

# The walk, in Python (one lstat per object, the directory's d_ino too):
#   bt_walk DIR OUT
# writes OUT, one line per object (DIR itself is "."), sorted by path:
#   PATH TYPE D_INO ST_INO ST_DEV NLINK SIZE DATA
# TYPE d, f, l (or ? when lstat fails); D_INO what readdir gave ("-" for
# "."); ST_INO lstat's, or E:ERRNO; NLINK "-" for directories (the
# filesystem's own); DATA a file's sha256, a symlink's target, or for a
# directory "-" -- or "seen:PATH" when its (st_dev, st_ino) is that of a
# directory already walked (it is not walked again: a loop otherwise).
BT_WALK=$VMT_DIR/walk.py
cat > "$BT_WALK" <<'PYEOF'
import errno, hashlib, os, stat, sys

top, out = sys.argv[1], sys.argv[2]
esc = lambda b: repr(b)[2:-1]
lines, dirs = [], {}

def data(path, st):
    if stat.S_ISLNK(st.st_mode):
        return esc(os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        return "-"
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
    except OSError as e:
        return "E:" + errno.errorcode.get(e.errno, str(e.errno))
    return h.hexdigest()

def visit(path, d_ino):
    try:
        st = os.lstat(path)
    except OSError as e:
        lines.append([esc(path), "?", d_ino, "E:" + errno.errorcode.get(e.errno, str(e.errno)),
                      "-", "-", "-", "-"])
        return
    kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
    line = [esc(path), kind, d_ino, str(st.st_ino), str(st.st_dev),
            "-" if kind == "d" else str(st.st_nlink), "-" if kind == "d" else str(st.st_size),
            "-" if kind == "d" else data(path, st)]
    lines.append(line)
    if kind != "d":
        return
    key = (st.st_dev, st.st_ino)
    if key in dirs:
        line[7] = "seen:" + esc(dirs[key])
        return
    dirs[key] = path
    try:
        with os.scandir(path) as it:
            entries = sorted(((e.name, e.inode()) for e in it))
    except OSError as e:
        line[7] = "E:" + errno.errorcode.get(e.errno, str(e.errno))
        return
    for name, ino in entries:
        visit(os.path.join(path, name), str(ino))

os.chdir(top)
visit(b".", "-")
with open(out, "w") as f:
    f.write("".join("\t".join(l) + "\n" for l in sorted(lines)))
PYEOF

bt_walk() {
    python3 "$BT_WALK" "$1" "$2" || fail "walking $1 failed"
}

# bt_check WHAT EXPECTED-WALK ACTUAL-WALK: the plugged filesystem's walk
# against the loop mount's; the verdicts in order of what they say of the
# numbering (so a shared st_ino is named first, whatever else follows from
# it).  Writes ACTUAL-WALK.ino: "ST_INO PATH" per object, by path.
BT_CHECK=$VMT_DIR/check.py
cat > "$BT_CHECK" <<'PYEOF'
import collections, sys

what, exp_file, act_file = sys.argv[1:4]
GUEST_BITS = 40

def load(fn):
    rows = {}
    with open(fn) as f:
        for line in f:
            p, kind, d_ino, st_ino, dev, nlink, size, data = line.rstrip("\n").split("\t")
            rows[p] = dict(kind=kind, d_ino=d_ino, st_ino=st_ino, dev=dev, nlink=nlink,
                           size=size, data=data)
    return rows

exp, act = load(exp_file), load(act_file)

def show(p):
    return "whole" if p == "." else "whole/" + p[2:]

# The volume of each expected object: the shortest path with its st_dev
# (btrfs gives each subvolume a device number of its own).
volume_of_dev = {}
for p in sorted(exp, key=len):
    volume_of_dev.setdefault(exp[p]["dev"], p)
def volume(p):
    v = volume_of_dev[exp[p]["dev"]]
    return "the top volume" if v == "." else "volume " + show(v)
identity = {p: (r["dev"], r["st_ino"]) for p, r in exp.items()}

def number(r):
    """The number the kernel gave: lstat's, else readdir's."""
    if r["st_ino"].isdigit():
        return int(r["st_ino"])
    return int(r["d_ino"]) if r["d_ino"].isdigit() else None

def verdict(title, problems):
    if not problems:
        return
    print("FAIL (test-files-btrfs): %s: %s:" % (what, title), file=sys.stderr)
    for m in problems[:15]:
        print("  " + m, file=sys.stderr)
    if len(problems) > 15:
        print("  ... and %d more" % (len(problems) - 15), file=sys.stderr)
    sys.exit(1)

# 1. No st_ino shared by two different objects.
by_number = collections.defaultdict(list)
for p, r in act.items():
    n = number(r)
    if n is not None:
        by_number[n].append(p)
problems = []
for n, paths in sorted(by_number.items()):
    paths.sort()
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            if a in identity and b in identity and identity[a] == identity[b]:
                continue  # hard links
            ga = exp[a]["st_ino"] if a in exp else "?"
            gb = exp[b]["st_ino"] if b in exp else "?"
            where = ("guest inode %s in %s, %s in %s" % (ga, volume(a), gb, volume(b))
                     if a in exp and b in exp else "not both in the image")
            how = "".join("; %s: readdir's d_ino, lstat fails with %s" % (show(x), act[x]["st_ino"][2:])
                          for x in (a, b) if not act[x]["st_ino"].isdigit())
            problems.append("st_ino %d is shared by %s and %s, two different objects (%s%s)"
                            % (n, show(a), show(b), where, how))
for p, r in sorted(act.items()):
    if r["d_ino"].isdigit() and r["st_ino"].isdigit() and r["d_ino"] != r["st_ino"]:
        problems.append("%s: readdir gives d_ino %s, lstat st_ino %s" % (show(p), r["d_ino"], r["st_ino"]))
verdict("st_ino not distinct", problems)

# 2. Hard links share one st_ino, and their link count.
problems = []
links = collections.defaultdict(list)
for p in exp:
    if exp[p]["kind"] != "d":
        links[identity[p]].append(p)
for ident, paths in sorted(links.items()):
    if len(paths) < 2:
        continue
    got = {p: act[p]["st_ino"] if p in act else "(missing)" for p in sorted(paths)}
    if len(set(got.values())) != 1:
        problems.append("hard links with different st_ino: " +
                        ", ".join("%s %s" % (show(p), n) for p, n in got.items()))
verdict("hard links", problems)

# 3. Every object there, and nothing else, as written; lstat works on all.
problems = []
for p, r in sorted(act.items()):
    if r["st_ino"].startswith("E:") or r["data"].startswith("E:"):
        problems.append("%s: %s" % (show(p), r["st_ino"] if r["st_ino"].startswith("E:") else r["data"]))
    elif r["data"].startswith("seen:"):
        problems.append("%s: the same directory as %s" % (show(p), show(r["data"][5:])))
for p in sorted(set(exp) - set(act)):
    problems.append("%s: missing" % show(p))
for p in sorted(set(act) - set(exp)):
    problems.append("%s: not in the image" % show(p))
for p in sorted(set(exp) & set(act)):
    e, a = exp[p], act[p]
    if a["st_ino"].startswith("E:") or a["data"].startswith(("E:", "seen:")):
        continue
    for field, name in (("kind", "type"), ("size", "size"), ("nlink", "st_nlink"),
                        ("data", "content (sha256) or symlink target")):
        if e[field] != a[field]:
            problems.append("%s: %s %s, expected %s" % (show(p), name, a[field], e[field]))
verdict("objects differ from what was written", problems)

# 4. The guest's own number in the low bits.
problems = []
for p in sorted(exp):
    n = int(act[p]["st_ino"])
    if n & ((1 << GUEST_BITS) - 1) != int(exp[p]["st_ino"]) or n >> GUEST_BITS == 0:
        problems.append("%s: st_ino %d (0x%x), the guest's is %s" % (show(p), n, n, exp[p]["st_ino"]))
verdict("st_ino is not (registry number << 40) | the guest's st_ino", problems)

with open(act_file + ".ino", "w") as f:
    f.write("".join("%s %s\n" % (act[p]["st_ino"], show(p)) for p in sorted(act)))
print("%d objects in %d volumes: every st_ino distinct but hard links', contents as written"
      % (len(act), len(volume_of_dev)))
PYEOF

# bt_walk_check WHAT DIR OUT: walk DIR into OUT and check it (bt_check).
bt_walk_check() {
    local what=$1 out=$3 msg t0=$(now_us)
    bt_walk "$2" "$out"
    msg=$(python3 "$BT_CHECK" "$what" "$VMT_DIR/walk.expect" "$out") || exit 1
    say "$what: $msg ($(( ($(now_us) - t0) / 1000 )) ms)"
}

# bt_image OUT: a raw disk that is one btrfs filesystem, filled through a
# loop mount in a mount namespace of its own; writes the walk of it to
# $VMT_DIR/walk.expect and a copy of its files to $VMT_DIR/expect.
bt_image() {
    local out=$1 m=$VMT_DIR/loop-mnt log=$VMT_DIR/mkimage.log
    rm -f -- "$out"
    truncate -s 128M -- "$out"
    mkfs.btrfs -q -L vmt-btrfs -- "$out" >> "$log" 2>&1 ||
        fail "mkfs.btrfs $out: $(tail -n 5 "$log")"
    mkdir -p -- "$m" "$VMT_DIR/expect"
    cat > "$VMT_DIR/mkimage.sh" <<'EOF'
set -euo pipefail
img=$1 m=$2 walk=$3 out=$4 copy=$5
mount -o loop -t btrfs -- "$img" "$m"
trap 'cd / && umount -- "$m"' EXIT
cd -- "$m"
# The same objects in the same order in each volume: the same inode numbers.
fill() {
    local d=$1 tag=$2
    printf 'a in %s\n' "$tag" > "$d/a.txt"
    printf 'b in %s, a little longer\n' "$tag" > "$d/b.txt"
    : > "$d/empty"
    mkdir "$d/dir"
    printf 'c in %s\n' "$tag" > "$d/dir/c.txt"
    head -c 5000 /dev/urandom > "$d/dir/d.bin"
    mkdir "$d/dir/deep"
    printf 'deep in %s\n' "$tag" > "$d/dir/deep/e.txt"
    ln -s dir/c.txt "$d/sym"
}
mkdir plaindir
fill plaindir top
btrfs -q subvolume create sv1
fill sv1 sv1
ln sv1/a.txt sv1/a-link
btrfs -q subvolume create sv2
fill sv2 sv2
btrfs -q subvolume create sv2/nested
fill sv2/nested nested
btrfs -q subvolume snapshot -r sv1 snap
printf 'b in sv1, rewritten after the snapshot\n' > sv1/b.txt
sync
# The collisions this test is about, as the kernel's btrfs shows them.
for v in sv2 snap sv2/nested; do
    [[ $(stat -c %i sv1/a.txt) == $(stat -c %i "$v/a.txt") ]] || {
        echo "sv1/a.txt and $v/a.txt do not share an inode number ($(stat -c %i sv1/a.txt "$v/a.txt" | xargs))"; exit 3; }
    [[ $(stat -c %d sv1/a.txt) != $(stat -c %d "$v/a.txt") ]] || {
        echo "sv1/a.txt and $v/a.txt are on one device number: not two subvolumes"; exit 3; }
done
[[ -n $(comm -12 <(find plaindir -xdev -printf '%i\n' | sort) <(find sv1 -xdev -printf '%i\n' | sort)) ]] || {
        echo "no inode number of plaindir (top volume) is also one of sv1's"; exit 3; }
[[ $(stat -c %h sv1/a.txt) == 2 ]] || { echo "sv1/a.txt: link count $(stat -c %h sv1/a.txt), not 2"; exit 3; }
cmp -s sv1/b.txt snap/b.txt && { echo "snap/b.txt is sv1/b.txt's new content"; exit 3; }
btrfs subvolume list "$m"
stat -c '%i %d %n' sv1/a.txt sv2/a.txt snap/a.txt sv2/nested/a.txt plaindir/a.txt
python3 "$walk" "$m" "$out"
cp -a . "$copy/"
EOF
    unshare -m --propagation private bash "$VMT_DIR/mkimage.sh" \
        "$out" "$m" "$BT_WALK" "$VMT_DIR/walk.expect" "$VMT_DIR/expect" >> "$log" 2>&1 ||
        fail "filling the btrfs image $out through a loop mount: $(tail -n 5 "$log")"
    rmdir -- "$m"
    btrfs check --readonly -- "$out" >> "$log" 2>&1 || fail "btrfs check finds $out damaged: $(tail -n 5 "$log")"
}

# ---- the image (before any libvirtd: see files_ext4 in files.sh) ----------------

I=$VMT_DIR/img
mkdir -p "$I"
t0=$(now_us)
bt_image "$I/btrfs.raw"
say "image made: $(( ($(now_us) - t0) / 1000 )) ms, $(wc -l < "$VMT_DIR/walk.expect") objects; guest inode numbers (st_ino st_dev path):"
grep -E '^[0-9]+ [0-9]+ ' "$VMT_DIR/mkimage.log"

lv_start a
lv_define a alpha "$(disk_xml "$I/btrfs.raw" raw vda virtio)"
M=$VMT_DIR/mnt
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
A=$M/a/alpha/disks
P=$A/vda/whole
plug "$A/vda"
say "plug vda (appliance boot included): $PLUG_MS ms"
info=$(cat "$A/vda/info") || fail "cannot read $A/vda/info"
if [[ ! -d $P ]]; then
    grep -Eq '^ +filesystem: btrfs$' <<<"$info" ||
        skip "the appliance does not recognise btrfs (no whole/ after the plug); $A/vda/info says:
$info"
    skip "the appliance cannot mount btrfs (no whole/ after the plug); $A/vda/info says:
$info"
fi
assert_listing "$A/vda" image info whole
assert_grep "info: btrfs" '^ +filesystem: btrfs$' "$info"
assert_grep "info: label" '^ +label: vmt-btrfs$' "$info"

# ---- the numbers, then the contents ----------------------------------------------
bt_walk_check "first plug" "$P" "$VMT_DIR/walk.plug"
# A few by name, so that a failure says plainly what broke.
assert_eq "hard links: one st_ino" 1 "$(stat -c %i "$P/sv1/a.txt" "$P/sv1/a-link" | sort -u | wc -l)"
assert_eq "hard links: st_nlink" 2 "$(stat -c %h "$P/sv1/a.txt")"
assert_eq "sv1/a.txt, sv2/a.txt, snap/a.txt, sv2/nested/a.txt, plaindir/a.txt: five st_ino" 5 \
    "$(stat -c %i "$P"/{sv1,sv2,snap,sv2/nested,plaindir}/a.txt | sort -u | wc -l)"
assert_eq "whole, sv1, sv2, snap, sv2/nested: five st_ino" 5 \
    "$(stat -c %i "$P" "$P"/{sv1,sv2,snap,sv2/nested} | sort -u | wc -l)"
assert_file_bytes "$P/sv1/a.txt" $'a in sv1\n'
assert_file_bytes "$P/sv2/a.txt" $'a in sv2\n'
assert_file_bytes "$P/snap/b.txt" $'b in sv1, a little longer\n'
assert_file_bytes "$P/sv1/b.txt" $'b in sv1, rewritten after the snapshot\n'
assert_file_bytes "$P/plaindir/dir/deep/e.txt" $'deep in top\n'
assert_file_bytes "$P/sv2/nested/sym" $'c in nested\n'
assert_tree_same "$VMT_DIR/expect" "$P" "btrfs: diff -r against a copy of the image's files"
say "diff -r --no-dereference against a copy of the image's files: no difference"
assert_errno EROFS create "$P/sv1/newfile"

# ---- unplug, plug again: the same numbers
unplug "$A/vda"
plug "$A/vda"
say "replug: $PLUG_MS ms"
bt_walk_check "after a replug" "$P" "$VMT_DIR/walk.replug"
assert_same_file "$VMT_DIR/walk.replug.ino" "$VMT_DIR/walk.plug.ino" "st_ino of every object across an unplug/replug"
say "st_ino of $(wc -l < "$VMT_DIR/walk.plug.ino") objects the same after a replug"
vm_umount "$M"

# ---- unmount, mount again (same statedir): the same numbers
vm_mount "$M" "host=a=$(lv_uri a),accel=tcg"
plug "$A/vda"
say "plug after the remount (appliance boot included): $PLUG_MS ms"
bt_walk_check "after a remount" "$P" "$VMT_DIR/walk.remount"
assert_same_file "$VMT_DIR/walk.remount.ino" "$VMT_DIR/walk.plug.ino" "st_ino of every object across an unmount/remount"
say "st_ino of every object the same after a remount"
vm_umount "$M"
assert_nothing_left a "$VMT_DIR/state"
say "PASS"
