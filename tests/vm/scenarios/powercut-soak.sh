# vm-about: the power-cut scenario with 50 cuts (not in the CI set)
# vm-disks: cache:128M backing:256M log:8M state:64M:ext4
# vm-powercut: yes
# vm-timeout: 600

. /usr/local/lib/lc-vm/scenarios/powercut.sh
