#!/usr/bin/env bash
# The GPU check must not fail silently or run long (scripts/device-check.sh): after
# `scripts/device-check.sh build`, plant a crashing, a failing and a hanging test binary
# among two real ones, run the dry run with a short deadline, and check that
#   * each planted binary is named with what happened to it (crashed, failed, timed out),
#     and the real ones passed;
#   * the phases that no longer fit are listed as skipped;
#   * the run ends inside its deadline, its last line is `device-check: N s, status S`
#     with N within the deadline and S non-zero, and S is its exit status;
#   * $OUT holds the console, the steps and the logs' archive.
# About 35 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
built=target/device-check
[ -d "$built/bin" ] || { echo "run 'scripts/device-check.sh build' first"; exit 2; }

dir=target/device-check-fault
rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/out"
ln -s "$PWD/$built/examples" "$dir/examples"
ln -s "$PWD/$built/wheel" "$dir/wheel"
# Two real binaries (the quickest on the CPU), and the planted ones between them, by name.
cp "$built/bin/convert" "$built/bin/device" "$dir/bin/"
printf '#!/bin/sh\necho "running 1 test"\nkill -SEGV $$\n' >"$dir/bin/crash"
printf '#!/bin/sh\necho "test planted ... FAILED"\necho "test result: FAILED. 0 passed; 1 failed; 0 ignored"\nexit 101\n' \
  >"$dir/bin/fails"
# Hangs, and ignores SIGTERM: only the kill after it stops it.
printf '#!/bin/sh\ntrap "" TERM\nwhile :; do sleep 1; done\n' >"$dir/bin/hang"
# Carried files may lose their run bit: the run must restore it.
chmod a-x "$dir/bin/hang"
chmod +x "$dir/bin/crash" "$dir/bin/fails"

deadline=40
start=$(date +%s)
rc=0
AIEC_CHECK_DIR="$dir" AIEC_CHECK_WORK="$dir/run" AIEC_CHECK_DEADLINE=$deadline OUT="$PWD/$dir/out" \
  bash scripts/device-check.sh dry-run >"$dir/console.txt" 2>&1 || rc=$?
wall=$(($(date +%s) - start))

fail() {
  echo "test-device-check: FAILED: $*"
  echo "--- the dry run's console ---"
  cat "$dir/console.txt"
  exit 1
}
steps="$dir/out/steps.txt"
expect_step() {  # NAME OUTCOME
  grep -qE "^$1 +$2 " "$steps" || fail "no step '$1' recorded as $2"
}
expect_step "test convert" passed
expect_step "test crash" crashed
expect_step "test device" passed
expect_step "test fails" failed
expect_step "test hang" timed-out
grep -qE '^[a-z].* +skipped ' "$steps" || fail "no phase listed as skipped"

last=$(tail -1 "$dir/console.txt")
[[ "$last" =~ ^device-check:\ ([0-9]+)\ s,\ status\ ([0-9]+)$ ]] || fail "last line is '$last'"
secs=${BASH_REMATCH[1]} status=${BASH_REMATCH[2]}
[ "$status" != 0 ] || fail "status 0 with planted faults"
[ "$rc" = "$status" ] || fail "exit status $rc, but the last line says $status"
[ "$secs" -le "$deadline" ] || fail "took $secs s, deadline $deadline s"
[ "$wall" -le $((deadline + 3)) ] || fail "returned after $wall s, deadline $deadline s"
for f in console.log steps.txt logs.tar.gz; do
  [ -s "$dir/out/$f" ] || fail "\$OUT/$f missing"
done
tail -1 "$dir/out/console.log" | grep -qx "$last" || fail "console.log does not end with the last line"

echo "test-device-check: passed: crash, failure and hang recorded, $(grep -c ' skipped ' "$steps") steps skipped," \
  "$secs s of a $deadline s deadline ($wall s wall), status $status"
cat "$steps"
rm -rf "$dir"
