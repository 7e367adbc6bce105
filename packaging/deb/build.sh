#!/usr/bin/env bash
# Builds the Debian package of ptcombiner with dpkg-deb (`make deb`):
# /usr/bin/ptcombiner-client and -server, their man pages (each made by the
# program itself from its cli.App: the hidden --man-page flag), the guides,
# the copyright file (with the license of every Go module linked in), a
# changelog, and the AppArmor rules Debian's tor needs to exec the
# combiners (docs/bridge.md, "Install from the .deb").
#
#   build.sh OUTDIR                 the package, in OUTDIR; its path is the last line printed
#   build.sh --version-of DESCRIBE [COUNT]
#                                   the Debian version for a `git describe` output
#
# Environment: VERSION (default: git describe --tags --always --dirty),
# GO (go), DEB_ARCH (default: dpkg --print-architecture), DEB_MAINTAINER.
set -euo pipefail

# debversion maps `git describe --tags --always --dirty` to a Debian version
# (Debian policy 5.6.12: [0-9][A-Za-z0-9.+~]* for a native package):
#   v1.2.3 -> 1.2.3, v1.2.3-rc1 -> 1.2.3~rc1 (sorts before 1.2.3),
#   v1.2.3-5-gabc1234 -> 1.2.3+git5.abc1234, abc1234 (no tag; COUNT commits)
#   -> 0~gitCOUNT.abc1234, and -dirty -> +dirty (or .dirty after a +).
debversion() {
	local d=$1 count=${2:-0} dirty= v
	if [[ $d == *-dirty ]]; then d=${d%-dirty}; dirty=1; fi
	if [[ $d =~ ^(.+)-([0-9]+)-g([0-9a-f]+)$ ]]; then
		v="$(tagversion "${BASH_REMATCH[1]}")+git${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
	elif [[ $d =~ ^[0-9a-f]{7,40}$ ]]; then
		v="0~git$count.$d"
	else
		v=$(tagversion "$d")
	fi
	if [ -n "$dirty" ]; then
		if [[ $v == *+* ]]; then v+=.dirty; else v+=+dirty; fi
	fi
	echo "$v"
}

# tagversion: a tag without its leading v, a hyphen as ~ (a pre-release),
# any other character Debian refuses as a dot, a leading digit guaranteed.
tagversion() {
	local v=${1#[vV]}
	v=${v//-/\~}
	v=$(printf '%s' "$v" | tr -c 'A-Za-z0-9.+~' '.')
	[[ $v =~ ^[0-9] ]] || v="0~$v"
	echo "$v"
}

if [ "${1:-}" = --version-of ]; then
	debversion "$2" "${3:-0}"
	exit 0
fi
[ $# -eq 1 ] || { sed -n '9,14p' "$0" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
GO=${GO:-go}
cd "$top"
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
count=$(git rev-list --count HEAD 2>/dev/null || echo 0)
version=$(debversion "$VERSION" "$count")
arch=${DEB_ARCH:-$(dpkg --print-architecture)}
maintainer=${DEB_MAINTAINER:-ptcombiner developers <dev@ptcombiner.invalid>}
# The date of the commit, not of the build: the same tree makes the same package.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# Position-independent where Go links it without cgo (ASLR), static
# elsewhere. lintian exempts Go programs from its checks of linking only when
# they come from a Debian source package that build-depends on golang-go, so
# the package carries an override for the one it makes here: a PIE with no
# library to need (shared-library-lacks-prerequisites), or a static program
# (statically-linked-binary).
pie=()
case $arch in
amd64 | arm64) goarch=$arch pie=(-buildmode=pie) ;;
ppc64el) goarch=ppc64le pie=(-buildmode=pie) ;;
riscv64 | s390x) goarch=$arch ;;
i386) goarch=386 ;;
armhf) goarch=arm; export GOARM=7 ;;
armel) goarch=arm; export GOARM=5 ;;
mips64el) goarch=mips64le ;;
*) echo "build.sh: no Go architecture for Debian's $arch" >&2; exit 1 ;;
esac

root=$out/ptcombiner-deb-root
rm -rf "$root"
doc=$root/usr/share/doc/ptcombiner
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$doc" "$root/etc/apparmor.d/abstractions"

# Without cgo (no library to depend on), stripped, without build paths.
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch "$GO" build -trimpath -buildvcs=false "${pie[@]}" \
	-ldflags "-s -w -buildid= -X github.com/ptcombiner/ptcombiner/internal/runner.Version=$VERSION" \
	-o "$root/usr/bin/" ./cmd/ptcombiner-client ./cmd/ptcombiner-server
tag=statically-linked-binary
[ ${#pie[@]} -eq 0 ] || tag=shared-library-lacks-prerequisites
install -d "$root/usr/share/lintian/overrides"
printf "ptcombiner: $tag [usr/bin/%s]\\n" ptcombiner-client ptcombiner-server >"$root/usr/share/lintian/overrides/ptcombiner"
for prog in ptcombiner-client ptcombiner-server; do
	if [ "$arch" = "$(dpkg --print-architecture)" ]; then
		"$root/usr/bin/$prog" --man-page
	else # the same program, built for this machine
		"$GO" run "./cmd/$prog" --man-page
	fi | gzip -9n >"$root/usr/share/man/man1/$prog.1.gz"
done

install -m 0644 README.md docs/*.md "$doc/"
"$here/copyright.sh" "$GO" "$commit" >"$doc/copyright"
{
	echo "ptcombiner ($version) unstable; urgency=medium"
	echo
	echo "  * Built from git $VERSION,"
	echo "    commit $commit."
	echo "    The project's history is its git log."
	echo
	echo " -- $maintainer  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"

install -m 0644 "$here/apparmor" "$root/etc/apparmor.d/abstractions/ptcombiner"
echo /etc/apparmor.d/abstractions/ptcombiner >"$root/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/postrm" "$root/DEBIAN/"
control=$(<"$here/control")
control=${control//@VERSION@/$version}
control=${control//@ARCH@/$arch}
control=${control//@MAINTAINER@/$maintainer}
control=${control//@SIZE@/$(du -sk --exclude=DEBIAN "$root" | cut -f1)}
echo "$control" >"$root/DEBIAN/control"
(cd "$root" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb=$out/ptcombiner_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
rm -rf "$root"
echo "$deb"
