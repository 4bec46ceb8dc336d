# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_lcctl_global_optspecs
    string join \n json bus= h/help V/version
end

function __fish_lcctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_lcctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_lcctl_using_subcommand
    set -l cmd (__fish_lcctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c lcctl -n "__fish_lcctl_needs_command" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_needs_command" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_needs_command" -s V -l version -d 'Print version'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "format" -d 'Write a fresh lc superblock to a cache device'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "switch-to" -d 'Select the cache that later commands act on when no id is given'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "resume" -d 'Resume the cache on a formatted cache device (recovering after a crash), as cache ID'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "free" -d 'Stop a cache cleanly and forget it; its devices must be detached first. A cache that failed to resume is forgotten too'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "clear-stat" -d 'Zero the 16 I/O counters of a cache'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "attach" -d 'Serve a backing device through a cache; prints what to open: the block device node (/dev/ublkbN) or the NBD URI'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "detach" -d 'Remove a device: its dirty data is written back to the backing device, its block node goes away, then it is detached from its cache'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "repoint" -d 'Bring back a failed device: from its recorded path (its disk is back, or its cache was re-pointed), checking that the disk there is the one recorded; or from BACKING, which is then recorded as the device\'s disk from now on'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "repoint-cache" -d 'Bring back a cache that failed at start from PATH, recording PATH and the cache uuid found there as the cache\'s from now on'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "status" -d 'Show caches as lc-mgr status did: segment ids, cursor, RAM, knobs, the 16 I/O counters with hit ratios, and their devices; also the health ("healthy", or "failing: ..." with what fails, since when, the last error and what to do) and the error counters'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "list" -d 'List caches and devices, one line each'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "get" -d 'Print knobs of a cache (--cache) or of a device (--device)'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "set" -d 'Set a knob of a cache (--cache) or of a device (--device)'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "flush" -d 'Seal the partial segment of a cache\'s RAM buffer and write it to the cache device now'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "commit-super-block" -d 'Write a cache\'s superblock record (last written-back segment) now'
complete -c lcctl -n "__fish_lcctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c lcctl -n "__fish_lcctl_using_subcommand format" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand format" -l force -d 'Format even when the device holds data (it is lost)'
complete -c lcctl -n "__fish_lcctl_using_subcommand format" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand format" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand switch-to" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand switch-to" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand switch-to" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand resume" -l id -d 'Cache id, 1..=255 (default: the one chosen by switch-to)' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand resume" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand resume" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand resume" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand free" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand free" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand free" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand clear-stat" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand clear-stat" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand clear-stat" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand attach" -l cache -d 'Cache to serve it through' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand attach" -l id -d 'Device id, 1..=255, unique over all caches (default: the lowest free one). Reuse the id a device had to get its cached data back' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand attach" -l frontend -d 'How to expose it: `ublk` (/dev/ublkbN), `nbd` (an NBD export on a root-only Unix socket, for kernels without ublk, VMs and NBD tools: nbd-client, qemu, nbdfuse) or `none` (attached to the cache only). Default: lcd\'s (`lcd --frontend`; ublk where the kernel has it, else nbd). Kept across restarts of lcd' -r -f -a "ublk\t'/dev/ublkbN through the kernel\'s ublk driver'
nbd\t'An NBD export on a root-only Unix socket'
none\t'Attached to its cache only, no block device'"
complete -c lcctl -n "__fish_lcctl_using_subcommand attach" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand attach" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand attach" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand detach" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand detach" -l no-wait -d 'Return as soon as the write-back has begun; the device shows state "detaching" until it is done, then goes away'
complete -c lcctl -n "__fish_lcctl_using_subcommand detach" -l discard-dirty -d 'Forget a failed device (its disk is gone) although its cache still holds dirty data of it: that data is dropped from the cache and lost. Without it, such a detach is refused (exit 4), so the data is never written to another disk that later gets the id'
complete -c lcctl -n "__fish_lcctl_using_subcommand detach" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand detach" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand repoint" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand repoint" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand repoint" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand repoint-cache" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand repoint-cache" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand repoint-cache" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand status" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand status" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand status" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand list" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand list" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand list" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand get" -l cache -d 'A cache\'s knobs (default: the cache chosen by switch-to)' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand get" -l device -d 'A device\'s knobs' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand get" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand get" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand set" -l cache -d 'A cache\'s knobs (default: the cache chosen by switch-to)' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand set" -l device -d 'A device\'s knobs' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand set" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand set" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand set" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lcctl -n "__fish_lcctl_using_subcommand flush" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand flush" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand flush" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand commit-super-block" -l bus -d 'The bus lcd serves on: system, session, or a D-Bus address such as unix:path=/run/lc/bus' -r
complete -c lcctl -n "__fish_lcctl_using_subcommand commit-super-block" -l json -d 'Print the result as JSON on stdout (shapes in lcctl(8), JSON OUTPUT)'
complete -c lcctl -n "__fish_lcctl_using_subcommand commit-super-block" -s h -l help -d 'Print help'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "format" -d 'Write a fresh lc superblock to a cache device'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "switch-to" -d 'Select the cache that later commands act on when no id is given'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "resume" -d 'Resume the cache on a formatted cache device (recovering after a crash), as cache ID'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "free" -d 'Stop a cache cleanly and forget it; its devices must be detached first. A cache that failed to resume is forgotten too'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "clear-stat" -d 'Zero the 16 I/O counters of a cache'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "attach" -d 'Serve a backing device through a cache; prints what to open: the block device node (/dev/ublkbN) or the NBD URI'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "detach" -d 'Remove a device: its dirty data is written back to the backing device, its block node goes away, then it is detached from its cache'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "repoint" -d 'Bring back a failed device: from its recorded path (its disk is back, or its cache was re-pointed), checking that the disk there is the one recorded; or from BACKING, which is then recorded as the device\'s disk from now on'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "repoint-cache" -d 'Bring back a cache that failed at start from PATH, recording PATH and the cache uuid found there as the cache\'s from now on'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "status" -d 'Show caches as lc-mgr status did: segment ids, cursor, RAM, knobs, the 16 I/O counters with hit ratios, and their devices; also the health ("healthy", or "failing: ..." with what fails, since when, the last error and what to do) and the error counters'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "list" -d 'List caches and devices, one line each'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "get" -d 'Print knobs of a cache (--cache) or of a device (--device)'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "set" -d 'Set a knob of a cache (--cache) or of a device (--device)'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "flush" -d 'Seal the partial segment of a cache\'s RAM buffer and write it to the cache device now'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "commit-super-block" -d 'Write a cache\'s superblock record (last written-back segment) now'
complete -c lcctl -n "__fish_lcctl_using_subcommand help; and not __fish_seen_subcommand_from format switch-to resume free clear-stat attach detach repoint repoint-cache status list get set flush commit-super-block help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
