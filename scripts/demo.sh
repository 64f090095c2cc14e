#!/usr/bin/env bash
# The README's first command: back up a local lab appliance to the lab's encrypted SMB share and show
# what happened. Everything lives under .lab/ (state, the demo appliance, its age key, the inventory).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$PWD/.build/collections"
export ANSIBLE_NOCOLOR=1

echo "== lab: Samba, nfs-ganesha and MariaDB"
python -m tests.lab up
demo=.lab/demo
mkdir -p "$demo"
chmod 0700 "$demo"
if [ ! -f "$demo/appliance.seeded" ]; then
  echo "== seeding a 20 MB reference appliance in $demo/appliance"
  rm -rf "$demo/appliance" && mkdir -p "$demo/appliance"
  python -m tests.lab.reference seed --root "$demo/appliance" --size 20MB --seed 1 \
    --defaults-file "$(python -m tests.lab.demo key mysql_defaults_file)" >/dev/null
  touch "$demo/appliance.seeded"
fi
if [ ! -f "$demo/age-key.txt" ]; then
  (umask 077 && age-keygen -o "$demo/age-key.txt" 2>/dev/null)
fi
age-keygen -y "$demo/age-key.txt" > "$demo/recipients.txt"
python -m tests.lab.demo inventory --appliance-root "$demo/appliance" --recipients "$demo/recipients.txt" \
  > "$demo/inventory.yml"
chmod 0600 "$demo/inventory.yml"

echo "== ansible-playbook segura.backup.backup (inventory: $demo/inventory.yml)"
ansible-playbook -i "$demo/inventory.yml" segura.backup.backup
echo
echo "The snapshot is on the lab's SMB share (encryption required): $(python -m tests.lab.demo key smb_dir_encrypted)"
echo "Open it by hand:  age -d -i $demo/age-key.txt OBJECT | zstd -d | tar -t"
