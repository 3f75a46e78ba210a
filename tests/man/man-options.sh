#!/bin/bash
# Every option that `virtmount --help` prints must appear in the man page.
#
# Environment: VIRTMOUNT, the program; MANPAGE, the roff source of its page.
# The page is rendered to plain text first, so that what is checked is what
# a reader sees (\- and font changes gone), with hyphenation off and long
# lines so that no option is split.
set -u

fail() { echo "man-options: $*" >&2; exit 1; }

[ -n "${VIRTMOUNT:-}" ] || fail "VIRTMOUNT is not set"
[ -n "${MANPAGE:-}" ] || fail "MANPAGE is not set"
[ -r "$MANPAGE" ] || fail "cannot read the man page $MANPAGE"
if ! command -v groff >/dev/null; then
    echo "man-options: skipped: groff is missing (apt-get install groff-base)" >&2
    exit 77
fi

help=$("$VIRTMOUNT" --help) || fail "$VIRTMOUNT --help failed"
[ -n "$help" ] || fail "$VIRTMOUNT --help printed nothing"

# -rLL: one paragraph a line; -rHY=0: no hyphenation; -P-cbou: no overstrike.
page=$(groff -man -Tascii -P-cbou -rLL=2000n -rHY=0 "$MANPAGE" 2>/dev/null) ||
    fail "groff cannot render $MANPAGE"
[ -n "$page" ] || fail "$MANPAGE renders to nothing"

# The options: every -x and --word after a blank, comma, bracket or line
# start; and after -o, every name= (a value follows) or bare name (a flag).
# "-o opt[,opt...]" gives -o alone: "opt" is followed by "[".
options=$(
    printf '%s\n' "$help" |
        grep -oE '(^|[[:space:],[(])--?[A-Za-z][A-Za-z0-9_-]*' |
        sed -E 's/^[^-]*//'
    printf '%s\n' "$help" |
        grep -oE '(^|[[:space:],[(])-o [A-Za-z_][A-Za-z0-9_]*(=|[[:space:],)]|$)' |
        sed -E 's/^[^-]*//; s/[[:space:],)]$//'
)
options=$(printf '%s\n' "$options" | sed '/^$/d' | sort -u)
[ -n "$options" ] || fail "found no option in the output of --help"

# An option is present when it stands on its own: not inside a longer word.
missing=()
while IFS= read -r opt; do
    re=$(printf '%s' "$opt" | sed -E 's/[][\.*^$+?(){}|/]/\\&/g')
    case "$opt" in
    *=) after='' ;;                       # -o name=: anything may follow
    *) after='([^A-Za-z0-9_=-]|$)' ;;     # -f, --help, -o name: nothing more
    esac
    if ! printf '%s\n' "$page" | grep -qE "(^|[^A-Za-z0-9_-])$re$after"; then
        missing+=("$opt")
    fi
done <<<"$options"

count=$(printf '%s\n' "$options" | wc -l)
if [ ${#missing[@]} -gt 0 ]; then
    echo "man-options: missing from $MANPAGE:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi
echo "man-options: all $count options of --help are in $MANPAGE:"
printf '%s\n' "$options" | sed 's/^/  /'
