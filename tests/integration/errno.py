#!/usr/bin/python3
"""Print the errno name one file operation gets, or OK.

    errno.py OP PATH [ARG]

OP is one of:
  stat lstat listdir read       read-only operations
  open_w        open(PATH, O_WRONLY)
  open_trunc    open(PATH, O_WRONLY | O_TRUNC)   (what `echo > PATH` does)
  open_rw       open(PATH, O_RDWR)
  append        open(PATH, O_WRONLY | O_APPEND)
  create        open(PATH, O_WRONLY | O_CREAT | O_EXCL, 0644)
  truncate      truncate(PATH, ARG or 0)
  utime         utimensat(PATH, now)                 (what `touch` does)
  chmod         chmod(PATH, ARG octal or 0644)
  mkdir rmdir unlink
  rename        rename(PATH, ARG)
  symlink       symlink("target", PATH)
  mknod         mknod(PATH, S_IFIFO | 0644)
  setxattr      setxattr(PATH, "user.test", b"x")

Used by the integration tests, where checking the exact errno is clearer
than matching a tool's message.
"""
import errno
import os
import sys


def run(op, path, arg):
    if op == "stat":
        os.stat(path)
    elif op == "lstat":
        os.lstat(path)
    elif op == "listdir":
        os.listdir(path)
    elif op == "read":
        with open(path, "rb") as f:
            f.read()
    elif op in ("open_w", "open_trunc", "open_rw", "append", "create"):
        flags = {
            "open_w": os.O_WRONLY,
            "open_trunc": os.O_WRONLY | os.O_TRUNC,
            "open_rw": os.O_RDWR,
            "append": os.O_WRONLY | os.O_APPEND,
            "create": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
        }[op]
        os.close(os.open(path, flags, 0o644))
    elif op == "truncate":
        os.truncate(path, int(arg or 0))
    elif op == "utime":
        os.utime(path)
    elif op == "chmod":
        os.chmod(path, int(arg or "644", 8))
    elif op == "mkdir":
        os.mkdir(path)
    elif op == "rmdir":
        os.rmdir(path)
    elif op == "unlink":
        os.unlink(path)
    elif op == "rename":
        os.rename(path, arg)
    elif op == "symlink":
        os.symlink("target", path)
    elif op == "mknod":
        os.mknod(path, 0o644 | 0o010000)
    elif op == "setxattr":
        os.setxattr(path, "user.test", b"x")
    else:
        sys.exit("errno.py: unknown operation " + op)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    op, path = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) == 4 else None
    try:
        run(op, path, arg)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
        return
    print("OK")


if __name__ == "__main__":
    main()
