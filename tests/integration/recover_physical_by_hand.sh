#!/usr/bin/env bash
# A physical snapshot brought back by hand, with only the tools docs/recovery.md names (no collection code).
# usage: recover_physical_by_hand.sh OBJECT AGE_IDENTITY_FILE WORK_DIR NEW_DATADIR
set -euo pipefail
object=$1 identity=$2 work=$3 datadir=$4
mkdir -p "$work/snapshot" "$work/backup"
age -d -i "$identity" "$object" | zstd -d | tar -x -C "$work/snapshot"
cat "$work/snapshot"/db/backup.mbstream.* | mbstream -x -C "$work/backup"
mariadb-backup --prepare --target-dir="$work/backup"
mariadb-backup --copy-back --target-dir="$work/backup" --datadir="$datadir"
