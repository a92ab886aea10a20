#!/usr/bin/env bash
# Re-fetch the vendored MediaPipe Tasks for the web package into web/vendor/tasks-vision/.
#
# npm packs the pinned version into a temp dir, the tarball is checked against the sha1 and the
# sha512 integrity pinned below, the kept files are staged next to our own README.md, LICENSE and
# SHA256SUMS, `sha256sum -c SHA256SUMS` must pass on the staged copy, and only then does the
# staged folder replace web/vendor/tasks-vision/. Any failure leaves that folder untouched.
#
# Usage: scripts/vendor_tasks_vision.sh            (or `make vendor`)
#        scripts/vendor_tasks_vision.sh --update   after bumping the pins below: write a fresh
#                                                  SHA256SUMS instead of checking the old one
#                                                  (the tarball pins are still checked).
set -euo pipefail

PACKAGE="@mediapipe/tasks-vision"
VERSION="1.1.0"
# As `npm view @mediapipe/tasks-vision@1.1.0 dist` and `npm pack` report them.
SHASUM="282102e87c53034254974ced8f772c626a6c3496"
INTEGRITY="sha512-ZJqh0wMKOINorfSffvDAxzyO1//c+FiG3IkzOdNDnLqvBB3DbMfj0bB/tys2SNf9S914sgoIbIpF4HTOi336cg=="

# Taken from the package (paths as in the tarball, kept as they are under the vendor folder).
FILES=(package.json vision_bundle.mjs wasm/vision_wasm_internal.js wasm/vision_wasm_internal.wasm)
# Ours, committed, carried over unchanged (the package ships no LICENSE file of its own).
KEEP=(README.md LICENSE SHA256SUMS)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/web/vendor/tasks-vision"

die() {
	echo "vendor_tasks_vision: error: $*" >&2
	exit 1
}

update=0
case "${1:-}" in
"") ;;
--update) update=1 ;;
*) die "unknown argument '$1' (usage: $0 [--update])" ;;
esac

command -v npm >/dev/null 2>&1 ||
	die "npm is not installed; install it (Debian/Ubuntu: apt-get install -y npm) and rerun"
command -v node >/dev/null 2>&1 || die "node is not installed (npm needs it too)"
for tool in tar sha1sum sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done
for f in "${KEEP[@]}"; do
	[ "$f" = SHA256SUMS ] && [ "$update" = 1 ] && continue
	[ -f "$DEST/$f" ] || die "$DEST/$f is missing (it is committed: git checkout -- web/vendor/tasks-vision)"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vendor-tasks-vision.XXXXXX")"
SWAP_NEW=""
SWAP_OLD=""
cleanup() {
	rm -rf "$WORK"
	[ -z "$SWAP_NEW" ] || rm -rf "$SWAP_NEW"
	[ -z "$SWAP_OLD" ] || [ ! -d "$SWAP_OLD" ] || [ ! -d "$DEST" ] || rm -rf "$SWAP_OLD"
}
trap cleanup EXIT

echo "fetching $PACKAGE@$VERSION"
(cd "$WORK" && npm pack --loglevel=error "$PACKAGE@$VERSION" >/dev/null) ||
	die "npm pack $PACKAGE@$VERSION failed (registry unreachable, or no such version?)"
TARBALL="$WORK/mediapipe-tasks-vision-$VERSION.tgz"
[ -f "$TARBALL" ] || die "npm pack did not write $(basename "$TARBALL")"

got_shasum="$(sha1sum "$TARBALL" | cut -d' ' -f1)"
[ "$got_shasum" = "$SHASUM" ] ||
	die "tarball sha1 differs from the pinned one: got $got_shasum, expected $SHASUM"
got_integrity="$(node -e 'const c = require("crypto"), f = require("fs");
process.stdout.write("sha512-" + c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"));' "$TARBALL")"
[ "$got_integrity" = "$INTEGRITY" ] ||
	die "tarball integrity differs from the pinned one: got $got_integrity, expected $INTEGRITY"
echo "tarball matches the pinned sha1 and sha512 integrity"

tar -xzf "$TARBALL" -C "$WORK" || die "could not extract $TARBALL"
got_version="$(node -p 'require(process.argv[1]).version' "$WORK/package/package.json")"
[ "$got_version" = "$VERSION" ] ||
	die "package.json in the tarball says version $got_version, expected $VERSION"

STAGE="$WORK/stage"
mkdir -p "$STAGE/wasm"
for f in "${FILES[@]}"; do
	[ -f "$WORK/package/$f" ] || die "the tarball has no $f"
	cp "$WORK/package/$f" "$STAGE/$f"
done
for f in "${KEEP[@]}"; do
	if [ -f "$DEST/$f" ]; then cp "$DEST/$f" "$STAGE/$f"; fi
done
chmod 755 "$STAGE" "$STAGE/wasm"
find "$STAGE" -type f -exec chmod 644 {} +

if [ "$update" = 1 ]; then
	(cd "$STAGE" && sha256sum LICENSE "${FILES[@]}" >SHA256SUMS)
	echo "wrote a fresh SHA256SUMS; also update the version and hashes in README.md"
else
	(cd "$STAGE" && sha256sum --quiet -c SHA256SUMS) ||
		die "the fetched files differ from SHA256SUMS; $DEST left untouched"
fi

# Swap via siblings of DEST, so the moves stay on one file system.
SWAP_NEW="$(mktemp -d "$DEST.new.XXXXXX")"
cp -a "$STAGE/." "$SWAP_NEW/"
chmod 755 "$SWAP_NEW"
SWAP_OLD="$DEST.old.$$"
mv "$DEST" "$SWAP_OLD"
if ! mv "$SWAP_NEW" "$DEST"; then
	mv "$SWAP_OLD" "$DEST"
	die "could not move the new files into place; $DEST restored"
fi
SWAP_NEW=""
rm -rf "$SWAP_OLD"
SWAP_OLD=""

cd "$DEST"
sha256sum -c SHA256SUMS
echo "vendored $PACKAGE@$VERSION into ${DEST#"$ROOT"/}"
