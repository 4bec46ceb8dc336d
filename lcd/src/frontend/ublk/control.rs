//! Control of ublk devices: adding one, taking one back after a crash
//! (user recovery), deleting it, and lcd's records in its run directory
//! that say which ublk devices are lc's.
//!
//! Which ublk devices are lc's is decided by lcd's own records only: a
//! record `ublkb<id>` in lcd's run directory (also the udev rule's marker,
//! named by [`crate::rundir::names`]) names the lcd process that started
//! the device, and the kernel must name the same process as the device's
//! server. A device without a matching record is never recovered, served
//! or deleted. libublk's per-device JSON in [`UBLKSRVD`] is not trusted
//! for anything; before every libublk call for a device lcd makes that
//! directory its own and removes a JSON file there that is not a plain
//! root-owned file (see `rundir`).
//!
//! Creation runs on its own thread and is given up after
//! [`START_TIMEOUT`], so a misbehaving kernel cannot freeze the daemon.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lc_engine::Cache;
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkError, UblkFlags};

use super::data_path::zero_copy_flags;
use super::queue::run_queue;
use super::requests::{write_gate, Job, Target};
use super::{
    node_path, unavailable_reason, IO_BUF_BYTES, MAX_DISCARD_SECTORS, QUEUE_DEPTH, START_TIMEOUT,
    TARGET_NAME, UBLKSRVD, WORKERS,
};
use crate::ledger::Ledger;
use crate::rundir::{describe, names, Dir, Owner};

/// Logs what this kernel's ublk driver offers (GET_FEATURES) that lc uses:
/// user recovery with reissue, and zero copy ([`zero_copy_flags`]).
pub(super) fn log_kernel_features() {
    let features = UblkCtrl::get_features().unwrap_or(0);
    let has = |f: u64| if features & f != 0 { "yes" } else { "no" };
    let path = if zero_copy_flags(features) != 0 {
        "zero copy: device reads land in the request's pages"
    } else {
        "copied: the driver copies each request's data"
    };
    tracing::info!(
        "ublk driver features {features:#x}: user recovery with reissue {}, \
         UBLK_F_AUTO_BUF_REG {}, UBLK_F_USER_COPY {}; new devices' data path: {path}",
        has(sys::UBLK_F_USER_RECOVERY_REISSUE as u64),
        has(sys::UBLK_F_AUTO_BUF_REG as u64),
        has(sys::UBLK_F_USER_COPY as u64),
    );
}

/// The name of libublk's JSON file of ublk device `id` in [`UBLKSRVD`].
pub(super) fn json_name(id: u8) -> String {
    format!("{id:04}.json")
}

/// Makes [`UBLKSRVD`] lcd's (owned by root, mode 0755, never a symlink)
/// and removes the JSON file of each of `ids` there unless it is a plain
/// root-owned file, so that libublk's next write (`File::create`, which
/// follows symlinks) or read (which would wait on a FIFO) of it cannot be
/// aimed elsewhere. Must precede every libublk call that names a device.
pub(super) fn guard_libublk_dir(ids: impl IntoIterator<Item = u8>) -> Result<(), String> {
    let dir = Dir::open(Path::new(UBLKSRVD), Owner::current()).map_err(|e| describe(&e))?;
    for id in ids {
        dir.remove_untrusted(&json_name(id))
            .map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// At start: makes [`UBLKSRVD`] lcd's and clears every JSON file there
/// that libublk could use for an lc device id and that root did not write.
/// The error says why devices cannot be exposed.
pub fn prepare() -> Result<(), String> {
    guard_libublk_dir(1..=255)
}

/// What the kernel says about an existing ublk device.
pub(super) struct Existing {
    /// `UBLK_S_DEV_*`.
    state: u32,
    /// The process the kernel knows as the device's server.
    server_pid: i32,
    /// Its queues and depth: a server taking it back must use the same.
    nr_queues: u16,
    depth: u16,
}

/// The kernel's view of ublk device `id`, if there is one. The caller has
/// guarded libublk's JSON file of `id` ([`guard_libublk_dir`]).
pub(super) fn existing(id: u8) -> Option<Existing> {
    let ctrl = UblkCtrl::new_simple(id as i32).ok()?;
    ctrl.read_dev_info().ok()?;
    let info = ctrl.dev_info();
    ctrl.disown();
    Some(Existing {
        state: info.state as u32,
        server_pid: info.ublksrv_pid,
        nr_queues: info.nr_hw_queues,
        depth: info.queue_depth,
    })
}

/// State of an existing ublk device numbered `id`, if there is one (none
/// also when libublk's directory cannot be made safe to use: starting the
/// device then says why).
pub fn existing_state(id: u8) -> Option<u32> {
    guard_libublk_dir([id]).ok()?;
    existing(id).map(|e| e.state)
}

/// lcd's record that it serves ublk device `device_id`, in its run
/// directory as `ublkb<id>` (the file the udev rule looks for).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct ServerRecord {
    device_id: u8,
    /// The lcd process that started or took back the device; the kernel
    /// keeps the same pid as the device's server.
    server_pid: i32,
}

/// Records that this process serves ublk device `id` (atomically, never
/// through a symlink).
pub(super) fn write_record(run: &Dir, id: u8) -> Result<(), String> {
    let rec = ServerRecord {
        device_id: id,
        server_pid: std::process::id() as i32,
    };
    let mut bytes = serde_json::to_vec(&rec).expect("a record serializes");
    bytes.push(b'\n');
    run.write_record(&names::server_record(id), &bytes)
        .map_err(|e| describe(&e))
}

/// The server pid lcd recorded for ublk device `id`, `None` without a
/// record; an error for a record lcd did not write or cannot read.
pub(super) fn read_record(run: &Dir, id: u8) -> Result<Option<i32>, String> {
    let name = names::server_record(id);
    let Some(bytes) = run.read_record(&name).map_err(|e| describe(&e))? else {
        return Ok(None);
    };
    let bad = |why: String| {
        format!(
            "{} is not a record lcd wrote ({why}); ignored",
            run.path().join(&name).display()
        )
    };
    let rec: ServerRecord =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not its JSON: {e}")))?;
    if rec.device_id != id || rec.server_pid <= 0 {
        return Err(bad(format!(
            "it names device {} and pid {}",
            rec.device_id, rec.server_pid
        )));
    }
    Ok(Some(rec.server_pid))
}

/// Whether lcd's record says that the existing ublk device `id` is the one
/// an lcd started; if not, why it must be left alone.
pub(super) fn claim(run: &Dir, id: u8, kernel: &Existing) -> Result<(), String> {
    let not_ours = |what: String| {
        format!(
            "ublk device {id} exists (state {}, server pid {}) but {what}: it belongs to another \
             program, or lcd's run directory {} was lost; lcd neither serves nor deletes it. If \
             nothing uses /dev/ublkb{id}, delete that ublk device and restart lcd",
            kernel.state,
            kernel.server_pid,
            run.path().display()
        )
    };
    match read_record(run, id) {
        Ok(Some(pid)) if pid == kernel.server_pid => Ok(()),
        // a device with no server (stopped, DEAD: the kernel sets its pid
        // to -1) that lcd recorded serving: lcd's own, left behind by a
        // failed delete or a start that failed after ADD_DEV; nobody serves
        // it, so nothing can pose as it
        Ok(Some(_)) if kernel.server_pid <= 0 => Ok(()),
        Ok(Some(pid)) => Err(not_ours(format!("lcd recorded pid {pid} as its server"))),
        Ok(None) => Err(not_ours("lcd has no record of serving it".into())),
        Err(why) => Err(not_ours(why)),
    }
}

/// A running ublk device serving one lc device.
pub struct UblkDevice {
    ctrl: Arc<UblkCtrl>,
    server: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    target: Arc<Target>,
    /// lcd's run directory, holding this device's record.
    run: Dir,
    /// `/dev/ublkb<id>`.
    pub node: String,
}

impl UblkDevice {
    /// Creates ublk device number `device_id` serving `device_id` of
    /// `cache`, or takes it back when an lcd before this one left it for
    /// user recovery (a dead one it deletes and creates anew). A device of
    /// that number that lcd's record in `run_dir` does not claim is left
    /// alone and is an error. Returns once the block device is live; gives
    /// up after [`START_TIMEOUT`]. A new device gets `nr_queues` queues.
    pub fn start(
        cache: Arc<Cache>,
        device_id: u8,
        size_bytes: u64,
        run_dir: &Path,
        nr_queues: u16,
    ) -> Result<UblkDevice, String> {
        if let Some(why) = unavailable_reason() {
            return Err(why);
        }
        guard_libublk_dir([device_id])?;
        let run = Dir::open(run_dir, Owner::current()).map_err(|e| describe(&e))?;
        // the shape of a device taken back is the kernel's, not this lcd's
        let mut shape = (nr_queues, QUEUE_DEPTH);
        let recover = match existing(device_id) {
            None => false,
            Some(kernel) => {
                shape = (kernel.nr_queues.max(1), kernel.depth.max(1));
                if let Err(why) = claim(&run, device_id, &kernel) {
                    // whatever record there is does not describe this device
                    let _ = run.remove(&names::server_record(device_id));
                    return Err(why);
                }
                if kernel.state == sys::UBLK_S_DEV_DEAD {
                    delete_stale(device_id);
                    false
                } else {
                    true
                }
            }
        };
        if !recover {
            // a new device owes nothing to an old one with its number
            run.remove(&names::write_ledger(device_id))
                .map_err(|e| describe(&e))?;
            // before the block device appears: the udev rule looks for it
            write_record(&run, device_id)?;
        }
        let ledger = Ledger::open(run_dir, device_id).map_err(|e| {
            format!(
                "cannot keep the write ledger of device {device_id} in {}: {e}",
                run_dir.display()
            )
        })?;
        if ledger.lost_writes() {
            tracing::error!(
                device = device_id,
                "the previous lcd died holding completed writes of this device that were not \
                 yet on the cache device; its next FLUSH will fail so that the file system or \
                 application sees the loss"
            );
        }
        let target = Arc::new(Target {
            gate: write_gate(&cache),
            cache,
            device_id,
            ledger,
            jobs: Mutex::new(None),
        });
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        *target.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(job_tx);
        let workers: Vec<JoinHandle<()>> = (0..WORKERS)
            .map(|i| {
                let (rx, target) = (job_rx.clone(), target.clone());
                std::thread::Builder::new()
                    .name(format!("lc-dev{device_id}-w{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => target.serve(job),
                            Err(_) => return,
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();

        let features = UblkCtrl::get_features().unwrap_or(0);
        let mut ctrl_flags = sys::UBLK_F_USER_RECOVERY as u64;
        if features & sys::UBLK_F_USER_RECOVERY_REISSUE as u64 != 0 {
            ctrl_flags |= sys::UBLK_F_USER_RECOVERY_REISSUE as u64;
        }
        ctrl_flags |= zero_copy_flags(features);
        let (nr_queues, depth) = shape;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<UblkCtrl>, String>>();
        let t = target.clone();
        let server = std::thread::Builder::new()
            .name(format!("lc-ublk{device_id}"))
            .spawn(move || {
                let fail = |what: &str, e: UblkError| {
                    let _ = ready_tx.send(Err(format!("{what}: {e}")));
                };
                if recover {
                    match UblkCtrl::new_simple(device_id as i32) {
                        Ok(old) => {
                            if let Err(e) = old.start_user_recover() {
                                return fail("starting user recovery", e);
                            }
                            old.disown();
                        }
                        Err(e) => return fail("opening the quiesced device", e),
                    }
                }
                let dev_flags = if recover {
                    UblkFlags::UBLK_DEV_F_RECOVER_DEV
                } else {
                    UblkFlags::UBLK_DEV_F_ADD_DEV
                };
                let ctrl = match UblkCtrlBuilder::default()
                    .name(TARGET_NAME)
                    .id(device_id as i32)
                    .nr_queues(nr_queues)
                    .depth(depth)
                    .io_buf_bytes(IO_BUF_BYTES)
                    .ctrl_flags(ctrl_flags)
                    .dev_flags(dev_flags)
                    .build()
                {
                    Ok(c) => Arc::new(c),
                    Err(e) => return fail("creating the ublk device", e),
                };
                let tgt_init = move |dev: &mut UblkDev| {
                    dev.tgt.dev_size = size_bytes;
                    dev.tgt.params = sys::ublk_params {
                        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
                        basic: sys::ublk_param_basic {
                            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
                            logical_bs_shift: 9,
                            physical_bs_shift: 12,
                            io_opt_shift: 12,
                            io_min_shift: 12,
                            max_sectors: IO_BUF_BYTES >> 9,
                            dev_sectors: size_bytes >> 9,
                            ..Default::default()
                        },
                        discard: sys::ublk_param_discard {
                            discard_alignment: 0,
                            discard_granularity: 4096,
                            max_discard_sectors: MAX_DISCARD_SECTORS,
                            max_write_zeroes_sectors: 0,
                            max_discard_segments: 1,
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    dev.set_target_json(serde_json::json!({ "lc": { "device_id": device_id } }));
                    Ok(())
                };
                let q_target = t.clone();
                let q_fn = move |qid: u16, dev: &UblkDev| run_queue(qid, dev, &q_target);
                let handle = ctrl.clone();
                let tx = ready_tx.clone();
                let started = move |_: &UblkCtrl| {
                    let _ = tx.send(Ok(handle));
                };
                if let Err(e) = ctrl.run_target(tgt_init, q_fn, started) {
                    fail("starting the ublk device", e);
                }
                // A device stopped on purpose is deleted by whoever stopped
                // it; one left behind by a crash must stay for recovery.
                ctrl.disown();
            })
            .map_err(|e| format!("spawning the ublk server thread: {e}"))?;
        let stop_workers = |target: &Target, workers: Vec<JoinHandle<()>>| {
            target.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
            for w in workers {
                let _ = w.join();
            }
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(ctrl)) => {
                if recover {
                    // the kernel now names this process as the server
                    if let Err(why) = write_record(&run, device_id) {
                        tracing::error!(
                            device = device_id,
                            "cannot record that this lcd serves the device ({why}); the next \
                             lcd will not take it back"
                        );
                    }
                }
                Ok(UblkDevice {
                    ctrl,
                    server: Some(server),
                    workers,
                    target,
                    run,
                    node: node_path(device_id),
                })
            }
            Ok(Err(e)) => {
                let _ = server.join();
                stop_workers(&target, workers);
                // a device left behind keeps its record, so that the next
                // start (or lcd) may delete it
                if !recover
                    && guard_libublk_dir([device_id]).is_ok()
                    && existing(device_id).is_none()
                {
                    let _ = run.remove(&names::server_record(device_id));
                }
                Err(format!("ublk device {device_id}: {e}"))
            }
            Err(_) => {
                // The server thread is stuck in the kernel; leave it be.
                Err(format!(
                    "ublk device {device_id} did not start within {} s: the kernel's ublk \
                     driver is not answering (see `dmesg`); lcd keeps running without it",
                    START_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Stops the block device (in-flight requests finish first), deletes it
    /// and stops the workers. The engine's data is untouched.
    pub fn stop(mut self) {
        let id = self.target.device_id;
        // control commands go through a ring of the calling thread's own
        if let Err(e) = ensure_control_ring() {
            tracing::error!(device = id, "cannot stop ublk device: {e}");
            return;
        }
        if let Err(e) = self.ctrl.kill_dev() {
            tracing::warn!(device = id, "stopping ublk device: {e}");
        }
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        match self.ctrl.del_dev() {
            Ok(_) => {
                if let Err(e) = self.run.remove(&names::server_record(id)) {
                    tracing::warn!(device = id, "{}", describe(&e));
                }
            }
            // the record stays: the next lcd may still delete the device
            Err(e) => tracing::warn!(device = id, "deleting ublk device: {e}"),
        }
        self.target.ledger.forget();
        self.target
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Sets up libublk's per-thread control ring on this thread if it has none
/// (the `UblkCtrl` constructors do it for the thread that builds them).
fn ensure_control_ring() -> Result<(), UblkError> {
    libublk::ublk_init_ctrl_task_ring(|ring| {
        if ring.is_none() {
            *ring = Some(
                io_uring::IoUring::<io_uring::squeue::Entry128>::builder()
                    .build(16)
                    .map_err(UblkError::IOError)?,
            );
        }
        Ok(())
    })
}

/// Runs `f` on its own thread and waits at most `limit` for it (the
/// kernel's ublk control commands can hang on buggy kernels).
fn with_timeout(what: String, limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("lc-ublk-ctl".into())
        .spawn(move || {
            f();
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            if rx.recv_timeout(limit).is_err() {
                tracing::error!(
                    "{what} did not finish within {} s; going on",
                    limit.as_secs()
                );
            }
        }
        Err(e) => tracing::error!("{what}: cannot spawn a thread: {e}"),
    }
}

/// Stops and deletes ublk device `id`, which no server of this process runs.
pub fn delete_stale(id: u8) {
    with_timeout(
        format!("deleting ublk device {id}"),
        START_TIMEOUT,
        move || {
            if let Err(why) = guard_libublk_dir([id]) {
                tracing::warn!(id, "not deleting stale ublk device: {why}");
                return;
            }
            if let Ok(ctrl) = UblkCtrl::new_simple(id as i32) {
                let _ = ctrl.kill_dev();
                if let Err(e) = ctrl.del_dev() {
                    tracing::warn!(id, "deleting stale ublk device: {e}");
                } else {
                    tracing::info!(id, "deleted a stale ublk device");
                }
            }
        },
    );
}

/// Deletes lc's ublk devices that no saved device claims (left by an lcd
/// that died after its configuration changed): those with a record in
/// `run_dir` that the kernel confirms (same server pid). Records of devices
/// that are gone or not lcd's are removed; nothing else is touched.
pub fn sweep_orphans(keep: &[u8], run_dir: &Path) {
    let run = match Dir::open(run_dir, Owner::current()) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(
                "not looking for ublk devices left by an earlier lcd: {}",
                describe(&e)
            );
            return;
        }
    };
    for id in (1..=255u8).filter(|id| !keep.contains(id)) {
        let name = names::server_record(id);
        let recorded = match read_record(&run, id) {
            Ok(None) => continue,
            Ok(Some(pid)) => pid,
            Err(why) => {
                tracing::warn!(id, "{why}");
                let _ = run.remove(&name);
                continue;
            }
        };
        if let Err(why) = guard_libublk_dir([id]) {
            tracing::warn!(id, "not looking at ublk device {id}: {why}");
            continue;
        }
        match existing(id) {
            Some(k) if k.server_pid == recorded => {
                tracing::info!(
                    id,
                    "ublk device left by an earlier lcd and no longer configured"
                );
                delete_stale(id);
                if guard_libublk_dir([id]).is_ok() && existing(id).is_none() {
                    let _ = run.remove(&name);
                }
            }
            Some(k) => {
                tracing::info!(
                    id,
                    server_pid = k.server_pid,
                    recorded,
                    "ublk device {id} is not the one lcd recorded; left alone"
                );
                let _ = run.remove(&name);
            }
            None => {
                let _ = run.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lcds_own_record_naming_the_kernels_server_claims_a_device() {
        let t = tempfile::tempdir().unwrap();
        let run = Dir::open(&t.path().join("lc"), Owner::current()).unwrap();
        let me = std::process::id() as i32;
        let kernel = Existing {
            state: sys::UBLK_S_DEV_QUIESCED,
            server_pid: me,
            nr_queues: 1,
            depth: 64,
        };
        let e = claim(&run, 3, &kernel).unwrap_err();
        assert!(e.contains("lcd has no record of serving it"), "{e}");
        assert!(e.contains("neither serves nor deletes it"), "{e}");
        write_record(&run, 3).unwrap();
        claim(&run, 3, &kernel).unwrap();
        // the file the udev rule looks for
        assert!(t.path().join("lc/ublkb3").is_file());
        // the kernel names another server: not the device lcd started
        let other = Existing {
            state: sys::UBLK_S_DEV_QUIESCED,
            server_pid: me + 1,
            nr_queues: 1,
            depth: 64,
        };
        let e = claim(&run, 3, &other).unwrap_err();
        assert!(e.contains(&format!("lcd recorded pid {me}")), "{e}");
        // lcd's own device left DEAD (the kernel's pid -1) is lcd's to delete
        let dead = Existing {
            state: sys::UBLK_S_DEV_DEAD,
            server_pid: -1,
            nr_queues: 1,
            depth: 64,
        };
        claim(&run, 3, &dead).unwrap();
        // but not without lcd's record
        let e = claim(&run, 7, &dead).unwrap_err();
        assert!(e.contains("lcd has no record of serving it"), "{e}");
        // records lcd did not write
        run.write_record("ublkb4", b"{\"device_id\":3,\"server_pid\":5}")
            .unwrap();
        let e = read_record(&run, 4).unwrap_err();
        assert!(e.contains("names device 3"), "{e}");
        run.write_record("ublkb5", b"{\"target\":{\"name\":\"lc\"}}")
            .unwrap();
        let e = read_record(&run, 5).unwrap_err();
        assert!(e.contains("not its JSON"), "{e}");
        std::os::unix::fs::symlink(t.path().join("lc/ublkb3"), t.path().join("lc/ublkb6")).unwrap();
        let e = claim(&run, 6, &kernel).unwrap_err();
        assert!(e.contains("a symlink"), "{e}");
    }
}
