#!/bin/sh
# Runs inside the debootstrapped rootfs (chroot, with /proc) after the files under rootfs/ were copied in.
set -eu
useradd --create-home --shell /bin/bash mt4adm
passwd --lock mt4adm
chmod 0440 /etc/sudoers.d/mt4adm
visudo -cq
systemctl enable systemd-networkd.service segura-lab-key.service
# Nothing periodic or boot-time-only in a short-lived test VM: it would compete for the emulated CPU.
# NFS mounts need none of these: nfs-client.target only pulls in Kerberos (rpc-gssd, rpc_pipefs) and
# rpc-statd-notify (tells NFSv3 peers about a reboot); mount.nfs starts rpc-statd itself for v3 locks.
# No PAM session uses logind here (no libpam-systemd).
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer e2scrub_reap.service \
        nfs-client.target rpc-statd-notify.service systemd-networkd-wait-online.service systemd-logind.service; do
    systemctl mask "$unit"
done
update-initramfs -u -k all
