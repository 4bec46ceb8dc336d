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
i=0
for dir in a b c d e f g h; do
    mkdir -p /mnt/$dir/sub
    for f in 1 2 3 4 5 6 7 8 9 10 11 12; do
        i=$((i + 1))
        head -c $((i * 1531 % 65536 + 1)) /dev/urandom >/mnt/$dir/small$f
    done
    head -c $((3 * 1024 * 1024 + i)) /dev/urandom >/mnt/$dir/sub/medium
done
dd if=/dev/urandom of=/mnt/big bs=1M count=160 2>/dev/null || fail "writing /mnt/big failed"
(cd /mnt && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) >/tmp/sums
log "$(wc -l </tmp/sums) files written ($(du -sm /mnt | cut -f1) MiB)"
sync
umount /mnt || fail "umount /mnt failed"

out=$(e2fsck -fn $d 2>&1) || { echo "$out"; fail "e2fsck -fn $d: expected a clean file system, it reported problems (above)"; }
log "e2fsck -fn clean: $(echo "$out" | tail -n1)"

drop_caches
mount -t ext4 $d /mnt || fail "remount of $d failed"
(cd /mnt && sha256sum -c -s /tmp/sums) || {
    (cd /mnt && sha256sum -c /tmp/sums 2>&1 | grep -v ': OK$' | head -n 20)
    fail "files read back after remount differ from what was written (list above)"
}
log "all $(wc -l </tmp/sums) files verify after remount"
umount /mnt
