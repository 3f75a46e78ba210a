# Trees of known content, and the comparisons, for the guest-file tests
# (test-files*.sh).  Sourced after lib.sh and images.sh, whose fail/say and
# images it uses.
#
# files_tree makes a host directory with every kind of object a guest
# filesystem holds: regular files (empty, random, odd sizes), a sparse file,
# a sparse file past 4 GiB, hard links, symlinks (absolute, relative,
# dangling, long), a fifo, device nodes, a socket, owners, modes with
# setuid/sticky bits, ns times (before 1970 and after 2038 too), user.*
# xattrs (binary, empty, large), odd names (space, tab, newline, 0x01, 0xff,
# leading dash, UTF-8, 255 bytes), a directory of 100 000 entries and a deep
# path.  The images are then made from it (files_ext4: mke2fs -d, then the
# kernel through a loop mount; files_xfs: rsync -aHAX into a loop mount;
# files_vfat: mtools, on a tree of what vfat holds), so what a plugged
# filesystem shows can be compared with what was put there (files_walk,
# rsync, diff), and with what guestfish reads from the same image.

# Where the big sparse file's data is: it must cross 4 GiB.
FILES_BIG=big/huge.sparse
FILES_BIG_SIZE=$(( (4 << 30) + 12345 ))
FILES_SMALLS=200   # files in smalls/, of 1 to 9 000 bytes
FILES_MANY=100000

# files_put FILE OFFSET BYTES: write BYTES random bytes at OFFSET (no truncation).
files_put() {
    head -c "$3" /dev/urandom |
        dd of="$1" bs=64K seek="$2" oflag=seek_bytes conv=notrunc status=none ||
        fail "writing $3 bytes at $2 into $1"
}

# files_tree DIR: the full tree (root only: owners, device nodes), but for
# the entries of many/, which files_many adds (to the tree, and to the
# filesystem made from it: see files_ext4).
files_tree() {
    local d
    d=$(realpath -m -- "$1")
    mkdir -p -- "$d"
    # (a plain subshell: errexit holds in it, which a `|| fail` would switch off)
    (
        cd -- "$d" || exit 1
        # regular files
        printf 'hello, guest\n' > text.txt
        : > empty
        head -c 1048576 /dev/urandom > random-1M
        head -c $(( 3 * 1048576 + 1 )) /dev/urandom > random-3M+1
        head -c 4096 /dev/urandom > exact-4096
        chown 1234:5678 random-1M
        chmod 0600 random-1M
        printf '#!/bin/sh\n' > setuid
        chmod 4755 setuid
        printf 'nobody may read me\n' > nothing
        chmod 0000 nothing
        printf 'owned by a big uid\n' > biguid
        chown 4000000000:65534 biguid
        # sparse files: holes read back as zeros
        truncate -s 64M sparse
        files_put sparse 0 4096
        files_put sparse $(( 10 << 20 )) 65536
        files_put sparse $(( (64 << 20) - 100 )) 100
        mkdir big
        truncate -s "$FILES_BIG_SIZE" "$FILES_BIG"
        files_put "$FILES_BIG" 0 8192
        files_put "$FILES_BIG" $(( (4 << 30) - 3000 )) 6000    # across 4 GiB
        files_put "$FILES_BIG" $(( FILES_BIG_SIZE - 345 )) 345
        # hard links: one inode, three names in two directories; and a pair
        mkdir links other
        printf 'one inode, three names\n' > links/a
        ln links/a links/b
        ln links/a other/c
        head -c 5000 /dev/urandom > links/pair1
        ln links/pair1 links/pair2
        # symlinks, shown as stored
        mkdir sym
        ln -s /etc/passwd sym/abs
        ln -s /nonexistent/target sym/abs-missing
        ln -s ../text.txt sym/rel
        ln -s ../deep sym/rel-dir
        ln -s no-such-file sym/dangling
        ln -s "$(printf 'x%.0s' {1..60})/$(printf 'y%.0s' {1..900})" sym/long
        ln -s 'target with space' sym/'link with space'
        # special files: shown, never opened
        mkdir special
        mkfifo special/fifo
        mknod special/null c 1 3
        mknod special/blk b 7 200
        mknod -m 0600 special/tty c 4 64
        python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' special/sock
        # extended attributes (user.*)
        mkdir xattr
        printf 'has attributes\n' > xattr/file
        setfattr -n user.plain -v hello xattr/file
        setfattr -n user.binary -v 0x00ff0a0d00 xattr/file
        setfattr -n user.empty xattr/file
        setfattr -n user.big -v "$(printf 'v%.0s' {1..900})" xattr/file   # (mke2fs -d fails past ~1000)
        setfattr -n user.dir -v 'on a directory' xattr
        printf 'no attributes\n' > xattr/none
        ln xattr/file xattr/hardlink-to-file
        # odd names: any byte but '/' and NUL
        mkdir names
        : > 'names/with space'
        : > $'names/tab\there'
        printf 'newline\n' > $'names/new\nline'
        : > $'names/\x01ctl'
        : > $'names/\xff\xfe'
        printf 'dash\n' > 'names/-leading-dash'
        : > 'names/--'
        : > 'names/é ü 日本'
        : > 'names/*?[]'"'"'"\'
        : > "names/$(printf 'n%.0s' {1..255})"
        mkdir $'names/dir\nwith newline'
        : > $'names/dir\nwith newline/inside'
        # the directory of many entries: the rest are added by files_many
        mkdir many
        printf 'in a crowd\n' > many/entry-000042
        # small files read whole one after another: read ahead (fs/prefetch.c)
        mkdir smalls
        local p=deep i
        for ((i = 0; i < FILES_SMALLS; i++)); do
            head -c $(( i * 37 % 9000 + 1 )) /dev/urandom > "smalls/s$(printf %03d "$i")"
        done
        # a deep path: 60 levels, ~1.3 KB
        for ((i = 1; i <= 60; i++)); do p+=$(printf '/level-%02d-padding-xx' "$i"); done
        mkdir -p "$p"
        printf 'at the bottom\n' > "$p/bottom.txt"
        # directory modes and owners
        mkdir sticky private
        chmod 1777 sticky
        chmod 0700 private
        chown 1234:5678 private
        printf 'private\n' > private/file
        # times: everything at one ns time, then a few others
        find . -depth -exec touch -h -d '@1600000000.123456789' {} +
        touch -d '@1234567890.987654321' text.txt
        touch -d '@-1000000.5' random-3M+1
        touch -d '@4102444800.000000001' exact-4096       # 2100-01-01
        touch -h -d '@1500000000.111111111' sym/rel
        touch -d '@1700000000.999999999' deep
        touch -- "$d.complete"
    )
    [[ -e $d.complete ]] || fail "making the tree $d"
    rm -f -- "$d.complete"
}

# files_tree_vfat DIR: what vfat can hold: regular files, directories and
# ASCII names; times in whole even seconds.
files_tree_vfat() {
    local d
    d=$(realpath -m -- "$1")
    mkdir -p -- "$d"
    (
        cd -- "$d" || exit 1
        printf 'hello, fat\n' > text.txt
        : > empty
        head -c 1048576 /dev/urandom > random-1M
        head -c $(( 3 * 1048576 + 1 )) /dev/urandom > random-3M+1
        truncate -s 6M sparse
        files_put sparse $(( 5 << 20 )) 4096
        mkdir names
        : > 'names/with space.txt'
        printf 'dash\n' > 'names/-leading-dash'
        : > 'names/MixedCase.Txt'
        : > 'names/a.b.c.d'
        : > "names/$(printf 'n%.0s' {1..200})"
        mkdir many                          # (mcopy takes minutes for 2 000)
        (cd many && seq -f 'entry-%04g' 0 299 | xargs touch)
        local p=deep i
        for ((i = 1; i <= 30; i++)); do p+=$(printf '/level-%02d' "$i"); done
        mkdir -p "$p"
        printf 'at the bottom\n' > "$p/bottom.txt"
        find . -depth -exec touch -d '@1600000000' {} +
        touch -d '@1234567890' text.txt
        touch -- "$d.complete"
    )
    [[ -e $d.complete ]] || fail "making the vfat tree $d"
    rm -f -- "$d.complete"
}

# files_many DIR [COUNT]: fill DIR/many up to COUNT (default 100 000) empty
# entries, all with the tree's time; many/ itself keeps it too.
files_many() {
    local d=$1/many n=${2:-$FILES_MANY} t='@1600000000.123456789'
    (cd -- "$d" && seq -f 'entry-%06g' 0 $(( n - 1 )) | xargs touch -d "$t") ||
        fail "filling $d"
    touch -d "$t" -- "$d" || fail "touch $d"
}

# files_ext4 OUT TREE SIZE LABEL: a raw disk that is one ext4 filesystem
# holding TREE, which gets its many/ entries at the same time.  mke2fs -d
# copies nearly everything (xattrs, special files, hard links, times to the
# ns), but adds each name with a linear scan of its directory (100 000
# names would take ten minutes), gives the root directory the present time,
# and drops the high bits of times outside 1970-2038.  So many/ is filled,
# and every time set again, by the kernel through a loop mount made in a
# mount namespace of its own (no other namespace -- a libvirtd started
# meanwhile by unshare -m, say -- gets a copy of it).
files_ext4() {
    local out=$1 tree=$2 size=$3 label=$4 m=$VMT_DIR/loop-mnt
    rm -f -- "$out"
    mke2fs -q -F -t ext4 -N 120000 -L "$label" -d "$tree" -- "$out" "$size" >/dev/null ||
        fail "mke2fs $out"
    files_many "$tree"
    mkdir -p -- "$m"
    unshare -m --propagation private bash -c '
        set -e
        mount -o loop -t ext4 -- "$1" "$2"
        trap "cd / && umount -- \"\$2\"" EXIT
        cd -- "$2/many"
        seq -f "entry-%06g" 0 $(( $4 - 1 )) | xargs touch -d "@1600000000.123456789"
        cd "$3"
        find . -path ./many -prune -o -print0 |
            while IFS= read -r -d "" p; do touch -h -r "$3/$p" -- "$2/$p"; done
        touch -r "$3/many" -- "$2/many"' \
        files-ext4 "$out" "$m" "$tree" "$FILES_MANY" ||
        fail "filling many/ and setting times in $out through a loop mount"
    rmdir -- "$m"
    e2fsck -fn -- "$out" >/dev/null 2>&1 || fail "e2fsck finds $out damaged"
}

# files_flat OUT SIZE COUNT: a raw disk that is one ext4 filesystem with one
# directory, flat/, of COUNT empty files n000000...: filled by the kernel
# through a loop mount, as in files_ext4 (mke2fs -d would take minutes).
files_flat() {
    local out=$1 size=$2 count=$3 m=$VMT_DIR/loop-mnt
    rm -f -- "$out"
    mke2fs -q -F -t ext4 -N $(( count + 10000 )) -L flat -- "$out" "$size" >/dev/null ||
        fail "mke2fs $out"
    mkdir -p -- "$m"
    unshare -m --propagation private bash -c '
        set -e
        mount -o loop -t ext4 -- "$1" "$2"
        trap "cd / && umount -- \"\$2\"" EXIT
        mkdir -- "$2/flat"
        cd -- "$2/flat"
        seq -f "n%06g" 0 $(( $3 - 1 )) | xargs touch' \
        files-flat "$out" "$m" "$count" || fail "filling flat/ in $out through a loop mount"
    rmdir -- "$m"
}

# files_xfs OUT SIZE TREE LABEL: a raw disk that is one XFS filesystem
# holding TREE (many/ filled already: files_many), copied by rsync -aHAX
# through a loop mount in a mount namespace of its own (as files_ext4).
files_xfs() {
    local out=$1 size=$2 tree=$3 label=$4 m=$VMT_DIR/loop-mnt
    rm -f -- "$out"
    truncate -s "$size" -- "$out"
    mkfs.xfs -q -L "$label" -- "$out" || fail "mkfs.xfs $out"
    mkdir -p -- "$m"
    unshare -m --propagation private bash -c '
        set -e
        mount -o loop -t xfs -- "$1" "$2"
        trap "cd / && umount -- \"\$2\"" EXIT
        rsync -aHAX --sparse -- "$3/" "$2/"' \
        files-xfs "$out" "$m" "$tree" || fail "filling $out through a loop mount"
    rmdir -- "$m"
}

# files_vfat OUT SIZE TREE LABEL: a raw disk that is one vfat filesystem
# holding TREE, file times kept (mcopy -m; images.sh's img_vfat_fs does not
# keep them).  (Not through a loop mount: these machines' kernel has no vfat.)
files_vfat() {
    local out=$1 size=$2 tree=$3 label=$4
    rm -f -- "$out"
    truncate -s "$size" -- "$out"
    mkfs.vfat -n "$label" -- "$out" >/dev/null || fail "mkfs.vfat $out"
    MTOOLS_SKIP_CHECK=1 mcopy -s -p -m -i "$out" "$tree"/* ::/ || fail "mcopy into $out"
}

# ---- comparisons ------------------------------------------------------------------

# files_rsync_diff SRC DST [RSYNC-OPTIONS...]: the itemized differences a
# dry run finds (empty: none), lost+found aside.  --delete reports what DST
# has and SRC has not.
files_rsync_diff() {
    local src=$1 dst=$2; shift 2
    rsync --dry-run --itemize-changes --delete --exclude=/lost+found \
        "$@" -- "$src/" "$dst/" 2>&1 || echo "(rsync exited with status $?)"
}

# assert_rsync_same WHAT SRC DST RSYNC-OPTIONS...
assert_rsync_same() {
    local what=$1 src=$2 dst=$3 out; shift 3
    out=$(files_rsync_diff "$src" "$dst" "$@")
    if [[ -n $out ]]; then
        printf 'FAIL (%s): %s: rsync %s finds differences between %s and %s:\n%s\n' \
            "$VMT_NAME" "$what" "$*" "$src" "$dst" "$(head -n 40 <<<"$out")" >&2
        exit 1
    fi
}

# files_walk DIR OUT [ino]: one walk of DIR (each directory opened once:
# see files_assert_walks_same) that writes (with "ino": OUT.ino only)
#   OUT      a line per object (DIR itself is "."; ext*'s lost+found aside):
#            path, type, mode, owner, group, size and link count (not for
#            directories: those are the filesystem's own), mtime in ns,
#            symlink target, device number, xattrs, and the sha256 of a
#            regular file's content -- of the big sparse file, of its data
#            regions and a hole (files_big_regions) only; sorted
#   OUT.ino  "INODE PATH" per object, sorted by path
#   OUT.links  the sets of paths that share an inode (hard links), sorted
# Paths, targets and names are written with Python's escapes.
files_walk() {
    python3 - "$1" "$2" "$FILES_BIG" "$(files_big_regions | tr '\n' ' ')" "${3:-all}" <<'PYEOF'
import collections, hashlib, os, stat, sys

top, out, big, regions = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4].split()
ino_only = sys.argv[5] == "ino"
regions = [(int(regions[i]), int(regions[i + 1])) for i in range(0, len(regions), 2)]
esc = lambda b: repr(b)[2:-1]
lines, inos, groups = [], [], collections.defaultdict(list)
os.chdir(top)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path == b"./" + big:
            for off, length in regions:
                f.seek(off)
                h.update(f.read(length))
        else:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
    return h.hexdigest()

def visit(path, st):
    inos.append((path, st.st_ino))
    if ino_only:
        return
    kind = stat.S_IFMT(st.st_mode)
    isdir = kind == stat.S_IFDIR
    target = esc(os.readlink(path)) if kind == stat.S_IFLNK else "-"
    rdev = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)) \
        if kind in (stat.S_IFCHR, stat.S_IFBLK) else "-"
    xa = []
    if kind != stat.S_IFLNK:
        for n in sorted(os.listxattr(path, follow_symlinks=False)):
            xa.append(n + "=" + os.getxattr(path, n, follow_symlinks=False).hex())
    lines.append(" ".join([esc(path), "%o" % kind, "%o" % stat.S_IMODE(st.st_mode),
                           str(st.st_uid), str(st.st_gid),
                           "-" if isdir else str(st.st_size), "-" if isdir else str(st.st_nlink),
                           str(st.st_mtime_ns), target, rdev, ",".join(xa) or "-",
                           sha256(path) if kind == stat.S_IFREG else "-"]))
    if not isdir and st.st_nlink > 1:
        groups[st.st_ino].append(esc(path))

def walk(d):
    with os.scandir(d) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if d == b"." and e.name == b"lost+found":
            continue
        st = os.lstat(e.path)
        visit(e.path, st)
        if stat.S_ISDIR(st.st_mode):
            walk(e.path)

visit(b".", os.lstat(b"."))
walk(b".")
with open(out + ".ino", "w") as f:
    f.write("".join("%d %s\n" % (i, esc(p)) for p, i in sorted(inos)))
if ino_only:
    sys.exit(0)
with open(out, "w") as f:
    f.write("".join(l + "\n" for l in sorted(lines)))
with open(out + ".links", "w") as f:
    f.write("".join(" ".join(sorted(g)) + "\n" for g in sorted(groups.values()) if len(g) > 1))
PYEOF
}

# files_assert_walks_same WHAT TREE-WALK DIR-WALK: two files_walk outputs
# show the same objects, attributes and contents, and the same hard links.
files_assert_walks_same() {
    local what=$1 a=$2 b=$3
    if ! cmp -s "$a" "$b"; then
        printf 'FAIL (%s): %s: objects differ (< tree, > plugged; path type mode uid gid size nlink mtime-ns target rdev xattrs sha256):\n' \
            "$VMT_NAME" "$what" >&2
        diff "$a" "$b" | head -n 40 >&2
        exit 1
    fi
    [[ -s $a.links ]] || fail "$what: the tree has no hard links"
    assert_same_file "$b.links" "$a.links" "$what: hard links (paths sharing one st_ino)"
    say "$what: $(wc -l < "$a") objects, the same types, modes, owners, sizes, link counts, ns mtimes, targets, device numbers, xattrs and sha256; $(wc -l < "$a.links") hard-link groups"
}

# files_sha256 DIR [guestfish]: "SUM  ./PATH" of every regular file, as
# guestfish's checksums-out prints them (same sha256sum, same escapes),
# sorted.  With "guestfish", only the files files_guestfish_start has
# guestfish read: not many/'s but entry-000042, not the big file.
files_sha256() {
    (
        cd -- "$1" || exit 1
        if [[ ${2:-} == guestfish ]]; then
            { find . \( -path ./many -o -path "./$FILES_BIG" \) -prune -o -type f -print0
              printf '%s\0' ./many/entry-000042; } | xargs -0 sha256sum
        else
            find . -type f -print0 | xargs -0 sha256sum
        fi
    ) | LC_ALL=C sort
}

# files_rss_kib PID: VmRSS of PID, in KiB.
files_rss_kib() {
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

# assert_tree_same_files TREE DIR WHAT [EXCLUDE...]: diff -r
# --no-dereference finds no difference (special files aside: diff reports
# any two as different; and the names EXCLUDE).
assert_tree_same_files() {
    local tree=$1 dir=$2 what=$3 out x
    local -a ex=(-x lost+found -x special)
    shift 3
    for x in "$@"; do ex+=(-x "$x"); done
    if ! out=$(diff -r --no-dereference "${ex[@]}" -- "$tree" "$dir" 2>&1); then
        printf 'FAIL (%s): %s: diff -r finds differences between %s and %s:\n%s\n' \
            "$VMT_NAME" "$what" "$tree" "$dir" "$(head -n 30 <<<"$out")" >&2
        exit 1
    fi
}

# files_open_errno FILE: the errno name a read-only, non-blocking open of
# FILE gets, or OK (within 10 s, or "(timed out)").
files_open_errno() {
    timeout 10 python3 -c '
import errno, os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK))
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])' "$1" || echo "(timed out)"
}

# files_assert_device_not_opened FILE...: a guest's device node never
# reaches this machine's device of that number: its open fails (EACCES:
# the mount is nodev; or ENXIO from virtmount).
files_assert_device_not_opened() {
    local f got
    for f in "$@"; do
        got=$(files_open_errno "$f")
        [[ $got == EACCES || $got == ENXIO ]] || fail "open $f (a guest's device node): expected EACCES or ENXIO, got $got"
    done
}

# files_assert_read_ahead MOUNTPOINT WHAT: after smalls/ was read whole (by
# rsync --checksum), .status says its files came by read-ahead, from a
# reader beside the main daemon (fs/prefetch.c; their content is what the
# checks of WHAT compare).
files_assert_read_ahead() {
    local st n opened
    st=$(cat "$1/.status")
    grep -Eq '^ *readers: 1 of 1$' <<<"$st" || fail "$2: .status shows no reader: $st"
    n=$(sed -n 's/^read ahead: \([0-9]*\) files.*/\1/p' <<<"$st")
    opened=$(sed -n 's/^read ahead: .* KiB; \([0-9]*\) of them opened since$/\1/p' <<<"$st")
    # rsync's generator reads them in name order, the read-ahead's: all but
    # the two that start the scan, unless a reader takes one first (which
    # is then read on demand); at least half, whatever the timing.
    [[ ${n:-0} -ge $(( FILES_SMALLS / 2 )) && ${opened:-0} -ge $(( FILES_SMALLS / 2 )) ]] ||
        fail "$2: $n files read ahead, $opened of them opened, of smalls/'s $FILES_SMALLS: $st"
    say "$2: $n files read ahead, $opened of them opened; readers: 1 of 1"
}

# files_assert_rsync_nothing WHAT SRC DST: rsync -aHAX SRC/ DST/ transfers
# nothing: no itemized change, and its statistics say 0 files transferred.
files_assert_rsync_nothing() {
    local out
    out=$(rsync -aHAX --sparse --itemize-changes --stats -- "$2/" "$3/" 2>&1) ||
        fail "$1: rsync failed: $out"
    local changes
    changes=$(sed -n '/^Number of files:/q;p' <<<"$out" | sed '/^$/d')
    [[ -z $changes ]] || fail "$1: rsync changed something:
$(head -n 30 <<<"$changes")"
    assert_grep "$1: 0 files transferred" '^Number of regular files transferred: 0$' "$out"
}

# files_big_regions FILE: the data regions of the big sparse file, and a
# hole, as "OFFSET LENGTH" lines.
files_big_regions() {
    printf '%s\n' "0 8192" "$(( (4 << 30) - 3000 )) 6000" \
        "$(( FILES_BIG_SIZE - 345 )) 345" "$(( 3 << 30 )) 65536"
}

# files_read_region FILE OFFSET LENGTH: those bytes of FILE on stdout.
files_read_region() {
    dd if="$1" bs=64K skip="$2" count="$3" iflag=skip_bytes,count_bytes status=none
}

# files_assert_big_regions TREE DIR WHAT: the big file's data regions (and
# a hole) read the same from DIR as from TREE.
files_assert_big_regions() {
    local off len
    while read -r off len; do
        cmp -s <(files_read_region "$1/$FILES_BIG" "$off" "$len") \
               <(files_read_region "$2/$FILES_BIG" "$off" "$len") ||
            fail "$3: $FILES_BIG differs from the tree's at $off (+$len)"
    done < <(files_big_regions)
}

# files_assert_inodes_distinct WALK...: no st_ino is in two of the
# files_walk OUT.ino lists (each one filesystem; a list may repeat its own
# numbers: hard links).
files_assert_inodes_distinct() {
    local f dup
    dup=$(for f in "$@"; do awk '{ print $1 }' "$f" | sort -u; done | sort | uniq -d | head -n 5)
    [[ -z $dup ]] || fail "st_ino shared by two filesystems: $dup ($*)"
    say "st_ino: no number shared by two of $# filesystems ($(cat "$@" | wc -l) objects)"
}

files_domain_is() { [[ $(lv_virsh "$1" domstate "$2" | sed '/^$/d') == "$3" ]]; }

# ---- guestfish -----------------------------------------------------------------------

FILES_GF_PID=

files_cleanup() {
    local rc=$?
    set +e
    if [[ -n $FILES_GF_PID ]] && pid_alive "$FILES_GF_PID"; then
        kill -TERM -- "-$FILES_GF_PID" 2>/dev/null
        wait_pid_gone "$FILES_GF_PID" 5 || kill -KILL -- "-$FILES_GF_PID" 2>/dev/null
    fi
    ( exit "$rc" )
    vmt_cleanup
}

# files_init: after vmt_init, so that a guestfish left running is ended.
files_init() {
    trap files_cleanup EXIT
}

# files_guestfish_start OUT IMAGE FORMAT TREE [IMAGE2 FORMAT2]: start, in
# the background, one guestfish (read-only, TCG, the harness's fixed
# appliance) that reads IMAGE, a whole-disk filesystem made from TREE, and
# writes OUT: the sha256 of its files as checksums-out prints them.  Not of
# many/'s 99 999 empty files, nor of the 4 GiB file: the appliance takes
# ~1 ms a file and ~20 MB/s under TCG, minutes for those two; what guestfish
# reads of them is many/entry-000042 and the big file's regions
# (OUT.big.N, as files_big_regions lists them).  IMAGE2's files, all of
# them, go to OUT.2.
files_guestfish_start() {
    local out=$1 img=$2 fmt=$3 tree=$4 img2=${5:-} fmt2=${6:-}
    local script=$out.fish kind name n=0 off len
    img_guestfish_appliance
    {
        echo "add $img readonly:true format:$fmt"
        [[ -n $img2 ]] && echo "add $img2 readonly:true format:$fmt2"
        echo run
        echo "mount-ro /dev/sda /"
        while read -r -d '' kind name; do
            case $kind/$name in
                d/many|d/big) ;;
                d/*) echo "checksums-out sha256 \"/$name\" \"$out.d.$name\"" ;;
                f/*) echo "echo \"$name\""; echo "checksum sha256 \"/$name\"" ;;
            esac
        done < <(find "$tree" -mindepth 1 -maxdepth 1 -printf '%y %f\0' | sort -z)
        echo 'echo "many/entry-000042"'
        echo 'checksum sha256 /many/entry-000042'
        while read -r off len; do
            echo "download-offset /$FILES_BIG \"$out.big.$n\" $off $len"
            n=$((n + 1))
        done < <(files_big_regions)
        echo "umount /"
        if [[ -n $img2 ]]; then
            echo "mount-ro /dev/sdb /"
            echo "checksums-out sha256 / \"$out.2\""
        fi
    } > "$script"
    rm -f -- "$out.rc"
    setsid bash -c 'LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg \
        LIBGUESTFS_PATH=$1 LIBGUESTFS_CACHEDIR=$2 guestfish --ro -f "$3" > "$4.stdout" 2> "$4.log" </dev/null
        echo $? > "$4.rc"' files-guestfish "$IMG_APPLIANCE" "$VMT_DIR" "$script" "$out" &
    FILES_GF_PID=$! FILES_GF_OUT=$out
    FILES_GF_T0=$(now_us)
    say "guestfish started (pid $FILES_GF_PID): $script"
}

# files_guestfish_wait: wait for it; it must have succeeded.
files_guestfish_wait() {
    local t0=$(now_us)
    wait "$FILES_GF_PID" 2>/dev/null || true
    [[ -s $FILES_GF_OUT.rc ]] || fail "guestfish ended without a status"
    [[ $(cat "$FILES_GF_OUT.rc") == 0 ]] ||
        fail "guestfish failed (status $(cat "$FILES_GF_OUT.rc")): $(tail -n 10 "$FILES_GF_OUT.log")"
    FILES_GF_PID=
    say "guestfish done: $(( ($(now_us) - FILES_GF_T0) / 1000 )) ms in all, waited $(( ($(now_us) - t0) / 1000 )) ms for it"
}

# files_guestfish_sums OUT: guestfish's sums, as files_sha256 prints them.
files_guestfish_sums() {
    local out=$1 f name
    {
        for f in "$out".d.*; do
            name=${f#"$out.d."}
            # "SUM  ./x" -> "SUM  ./DIR/x" (an escaped line starts with \).
            # In a directory with no regular file, libguestfs 1.48 runs
            # sha256sum with no argument, which sums its empty stdin: "SUM  -".
            sed -e '/  -$/d' -e "s|  \./|  ./$name/|" -- "$f"
        done
        # `echo NAME` then `checksum` print two lines per file
        paste - - < "$out.stdout" | awk -F'\t' '{ print $2 "  ./" $1 }'
    } | LC_ALL=C sort
}

# files_guestfish_compare OUT SUMS DIR WHAT: the sums guestfish wrote (OUT:
# files_guestfish_start's set, or a plain checksums-out file) are SUMS
# (files_sha256 of DIR, with "guestfish" for the first); for the first,
# the big file's regions read from DIR are what guestfish read too.
files_guestfish_compare() {
    local out=$1 sums=$2 dir=$3 what=$4 gf=$VMT_DIR/guestfish-sums
    if [[ -e $out.fish ]]; then
        files_guestfish_sums "$out" > "$gf"
        local off len n=0
        while read -r off len; do
            cmp -s "$out.big.$n" <(files_read_region "$dir/$FILES_BIG" "$off" "$len") ||
                fail "$what: $FILES_BIG at $off (+$len) differs from what guestfish read"
            n=$((n + 1))
        done < <(files_big_regions)
    else
        LC_ALL=C sort -- "$out" > "$gf"
    fi
    assert_same_file "$sums" "$gf" "$what: sha256 of every file vs guestfish's checksums-out"
    say "$what: sha256 of $(wc -l < "$gf") files the same as guestfish's"
}

# files_tree_crowd DIR DIRS FILES: DIRS directories of FILES small files
# each (d000/f0000...): a tree of many entries whose directories are each
# smaller than the cache (see test-files-memory.sh).
files_tree_crowd() {
    local d=$1 dirs=$2 files=$3 i
    mkdir -p -- "$d"
    for ((i = 0; i < dirs; i++)); do
        mkdir -- "$(printf '%s/d%03d' "$d" "$i")"
        (cd -- "$(printf '%s/d%03d' "$d" "$i")" &&
         seq -f 'f%04g' 0 $(( files - 1 )) | xargs touch -d '@1600000000.5') ||
            fail "making $d"
    done
    printf 'a needle\n' > "$d/d042/f0042"
    setfattr -n user.crowd -v yes "$d/d042/f0042" || fail "setfattr in $d"
}

# ---- memory ----------------------------------------------------------------------------

# files_rss_run PID OUT CMD...: run CMD (its output into OUT) while sampling
# PID's VmRSS every 50 ms; sets RSS_BEFORE, RSS_PEAK, RSS_AFTER (KiB),
# WALK_MS and WALK_COUNT (lines of output).  RSS_AFTER is taken half a
# second after CMD ends, once the cache trimmer (which sleeps 200 ms before
# giving memory back) has settled.
files_rss_run() {
    local pid=$1 out=$2 rss t0 fpid i
    shift 2
    RSS_BEFORE=$(files_rss_kib "$pid")
    RSS_PEAK=$RSS_BEFORE
    t0=$(now_us)
    "$@" > "$out" 2> "$out.err" &
    fpid=$!
    while pid_alive "$fpid"; do
        rss=$(files_rss_kib "$pid")
        (( rss > RSS_PEAK )) && RSS_PEAK=$rss
        sleep 0.05
    done
    wait "$fpid" || fail "$* failed: $(head -n 5 "$out.err")"
    WALK_MS=$(( ($(now_us) - t0) / 1000 ))
    WALK_COUNT=$(wc -l < "$out")
    for (( i = 0; i < 10; i++ )); do
        sleep 0.05
        rss=$(files_rss_kib "$pid")
        (( rss > RSS_PEAK )) && RSS_PEAK=$rss
    done
    RSS_AFTER=$rss
}

# files_rss_walk PID DIR: files_rss_run with find -ls over DIR.
files_rss_walk() {
    files_rss_run "$1" "$VMT_DIR/walk.out" find "$2" -ls
}
