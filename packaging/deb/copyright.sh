#!/usr/bin/env bash
# Writes the package's copyright file on stdout: ptcombiner's own terms, then
# those of the Go standard library and of every Go module linked into the two
# programs, as their license files say (found in the module cache). A
# license Debian ships in /usr/share/common-licenses is referred to there
# rather than copied (Debian policy 12.5). Packages whose Go sources carry
# a GPL notice are named: they make the programs as distributed GPL'd.
#
#   copyright.sh GO COMMIT       (run from the top of the source tree)
set -euo pipefail
GO=$1 commit=$2
progs=(./cmd/ptcombiner-client ./cmd/ptcombiner-server)

# common names a license file that Debian ships, from its first lines.
common() {
	local head
	head=$(sed -n '1,12p' "$1" | tr -s ' \t\n' ' ')
	case $head in
	*"GNU GENERAL PUBLIC LICENSE Version 3"*) echo GPL-3 ;;
	*"GNU GENERAL PUBLIC LICENSE Version 2"*) echo GPL-2 ;;
	*"GNU LESSER GENERAL PUBLIC LICENSE Version 3"*) echo LGPL-3 ;;
	*"Apache License Version 2.0"*) echo Apache-2.0 ;;
	*"Mozilla Public License Version 2.0"* | *"Mozilla Public License, version 2.0"*) echo MPL-2.0 ;;
	*"CC0 1.0 Universal"*) echo CC0-1.0 ;;
	esac
}

# licenses prints the license files of the directory $1.
licenses() {
	local f name
	for f in "$1"/*; do
		name=$(basename "$f")
		case ${name^^} in
		LICENSE* | LICENCE* | COPYING* | NOTICE* | PATENTS*) ;;
		*) continue ;;
		esac
		[ -f "$f" ] || continue
		echo
		echo "--- $name"
		local c
		c=$(common "$f")
		if [ -n "$c" ]; then
			echo "On Debian systems the complete text of this license ($c) is in"
			echo "/usr/share/common-licenses/$c."
		else
			sed -e 's/[[:space:]]*$//' "$f"
		fi
	done
}

cat <<HEAD
This is ptcombiner, built from its git tree at commit $commit.

ptcombiner-client and ptcombiner-server are statically linked Go programs: each
contains the code of ptcombiner, of the Go standard library and of the Go
modules listed below, each under its own terms, which follow.

=== ptcombiner
HEAD
if compgen -G 'LICENSE*' >/dev/null || compgen -G 'COPYING*' >/dev/null; then
	licenses .
else
	echo
	echo "Copyright: the ptcombiner developers."
	echo "The source tree declares no license of its own (it has no LICENSE file)."
fi

gpl=$("$GO" list -deps -f '{{if not .Standard}}{{.ImportPath}} {{.Dir}}{{end}}' "${progs[@]}" |
	while read -r pkg dir; do
		for f in "$dir"/*.go; do
			case $f in *_test.go) continue ;; esac
			if sed -n '1,20p' "$f" | grep -q 'GNU General Public License'; then echo "$pkg"; break; fi
		done
	done)
if [ -n "$gpl" ]; then
	echo
	echo "These packages linked into the programs are under the GNU General Public"
	echo "License (their files' notices say which version), and so are the programs"
	echo "as distributed:"
	echo "$gpl" | sed 's/^/  /'
fi

echo
echo "=== the Go standard library ($("$GO" env GOVERSION))"
licenses "$("$GO" env GOROOT)"

"$GO" list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' "${progs[@]}" |
	sort -u | while read -r path version dir; do
	echo
	echo "=== $path $version"
	licenses "$dir"
done
