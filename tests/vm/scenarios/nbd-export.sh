# vm-about: the guest's disk is lc's NBD export, served by lcd on the host (qemu -drive file=nbd+unix://...): mkfs.ext4, files with checksums, e2fsck -fn, remount and verify; the host restarts its lcd and checks the export's file system
# vm-host-nbd: lcnbd 128M 384M
# vm-timeout: 600

# No lcd in the guest is used: the disk is the host's lcd device 1, seen by
# this kernel as a plain virtio disk through qemu's NBD client.
d=$DISK_lcnbd
[ -b "$d" ] || fail "no disk with serial lcnbd (the host's NBD export)"
size=$(dev_size "$d")
[ "$size" = $((384 * 1024 * 1024)) ] || fail "the export is $size bytes, expected 384 MiB (the host's backing file)"

mkfs.ext4 -q -F "$d" || fail "mkfs.ext4 $d failed"
mount -t ext4 "$d" /mnt || fail "mount $d failed after mkfs.ext4"
write_file_tree 4 8
sync
umount /mnt || fail "umount /mnt failed"

out=$(e2fsck -fn "$d" 2>&1) || { echo "$out"; fail "e2fsck -fn $d: expected a clean file system, it reported problems (above)"; }
log "e2fsck -fn clean: $(echo "$out" | tail -n1)"

drop_caches
mount -t ext4 "$d" /mnt || fail "remount of $d failed"
verify_file_tree "after remount"
umount /mnt
