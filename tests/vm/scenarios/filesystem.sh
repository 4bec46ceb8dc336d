# vm-about: mkfs.ext4 on /dev/ublkb1, a tree of files with checksums, e2fsck -fn, remount and verify
# vm-disks: cache:128M backing:384M
# vm-timeout: 600

format_and_resume 1 "$DISK_cache"
create_device 1 "$DISK_backing" 1
d=/dev/ublkb1

mkfs.ext4 -q -F $d || fail "mkfs.ext4 $d failed"
mount -t ext4 $d /mnt || fail "mount $d failed after mkfs.ext4"
# a tree of files: many small ones, some medium, one bigger than the cache's
# RAM buffers and a good part of the cache device
write_file_tree 8 12
sync
umount /mnt || fail "umount /mnt failed"

out=$(e2fsck -fn $d 2>&1) || { echo "$out"; fail "e2fsck -fn $d: expected a clean file system, it reported problems (above)"; }
log "e2fsck -fn clean: $(echo "$out" | tail -n1)"

drop_caches
mount -t ext4 $d /mnt || fail "remount of $d failed"
verify_file_tree "after remount"
umount /mnt
