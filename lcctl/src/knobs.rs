//! The knobs lcctl can get and set: the properties of `org.lc.Lcd1.Cache`
//! (dm-lc's per-cache sysfs knobs, under their dm-lc names) and of
//! `org.lc.Lcd1.Device`.
//!
//! Ranges are checked by lcd; the table here only names the knobs, says
//! which are switches and documents them (a test keeps it in step with the
//! engine's table).

use lc_proto::{CacheProxy, DeviceProxy};

use crate::error::{Exit, Failure};

/// A knob: its name, its help line and its accepted range.
#[derive(Debug, Clone, Copy)]
pub struct KnobDoc {
    /// dm-lc's name, used on the command line and in JSON.
    pub name: &'static str,
    /// One line for the man page.
    pub help: &'static str,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
    /// Value after format/resume.
    pub default: u64,
    /// A switch (0/1, shown as 0/1, set with 0/1, true/false, on/off).
    pub switch: bool,
}

/// The cache knobs, in display order.
pub const CACHE_KNOBS: [KnobDoc; 8] = [
    KnobDoc {
        name: "commit_super_block_interval",
        help: "seconds between superblock record commits (0: only when needed)",
        min: 0,
        max: 86_400,
        default: 0,
        switch: false,
    },
    KnobDoc {
        name: "nr_max_batched_migration",
        help: "segments written back per migration batch (at most the number of segments)",
        min: 1,
        max: 4096,
        default: 8,
        switch: false,
    },
    KnobDoc {
        name: "allow_migrate",
        help: "1: write dirty data back to the backing devices; lcd's migration policy sets it every update_interval (migrate_threshold 0 stops write-back, force_migrate 1 forces it)",
        min: 0,
        max: 1,
        default: 0,
        switch: true,
    },
    KnobDoc {
        name: "force_migrate",
        help: "1: write back regardless of backing-device load",
        min: 0,
        max: 1,
        default: 0,
        switch: true,
    },
    KnobDoc {
        name: "update_interval",
        help: "seconds between runs of the migration policy",
        min: 1,
        max: 3600,
        default: 1,
        switch: false,
    },
    KnobDoc {
        name: "flush_current_buffer_interval",
        help: "seconds a partial segment may wait before it is written (0: off)",
        min: 0,
        max: 86_400,
        default: 0,
        switch: false,
    },
    KnobDoc {
        name: "barrier_deadline_ms",
        help: "milliseconds a FLUSH/FUA waits for the current segment to fill",
        min: 1,
        max: 10_000,
        default: 3,
        switch: false,
    },
    KnobDoc {
        name: "write_back_queue_depth",
        help: "write-back writes in flight per backing device",
        min: 1,
        max: 64,
        default: 16,
        switch: false,
    },
];

/// The device knobs.
pub const DEVICE_KNOBS: [KnobDoc; 1] = [KnobDoc {
    name: "migrate_threshold",
    help: "write-back policy threshold, percent of the backing device's load",
    min: 0,
    max: 100,
    default: 70,
    switch: false,
}];

fn unknown(name: &str, knobs: &[KnobDoc], of: &str, other: &str) -> Failure {
    let names: Vec<_> = knobs.iter().map(|k| k.name).collect();
    Failure::new(
        Exit::Usage,
        format!(
            "unknown {of} knob {name:?}: {of} knobs are {} ({other})",
            names.join(", ")
        ),
    )
}

/// Looks a cache knob up by name.
pub fn cache_knob(name: &str) -> Result<&'static KnobDoc, Failure> {
    CACHE_KNOBS.iter().find(|k| k.name == name).ok_or_else(|| {
        let hint = if DEVICE_KNOBS.iter().any(|k| k.name == name) {
            "it is a device knob: use --device ID"
        } else {
            "see KNOBS in lcctl(8)"
        };
        unknown(name, &CACHE_KNOBS, "cache", hint)
    })
}

/// Looks a device knob up by name.
pub fn device_knob(name: &str) -> Result<&'static KnobDoc, Failure> {
    DEVICE_KNOBS.iter().find(|k| k.name == name).ok_or_else(|| {
        let hint = if CACHE_KNOBS.iter().any(|k| k.name == name) {
            "it is a cache knob: use --cache ID"
        } else {
            "see KNOBS in lcctl(8)"
        };
        unknown(name, &DEVICE_KNOBS, "device", hint)
    })
}

/// Parses a value typed for `knob`.
pub fn parse_value(knob: &KnobDoc, text: &str) -> Result<u64, Failure> {
    let v = if knob.switch {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Some(1),
            "0" | "false" | "off" | "no" => Some(0),
            _ => None,
        }
    } else {
        text.parse::<u64>().ok()
    };
    v.ok_or_else(|| {
        let want = if knob.switch {
            "0 or 1 (true/false, on/off)".to_string()
        } else {
            format!("a number in {}..={}", knob.min, knob.max)
        };
        Failure::new(
            Exit::Usage,
            format!("{} takes {want}, not {text:?}", knob.name),
        )
    })
}

/// Reads a cache knob.
pub async fn get_cache(c: &CacheProxy<'_>, name: &str) -> zbus::Result<u64> {
    Ok(match name {
        "commit_super_block_interval" => c.commit_super_block_interval().await?,
        "nr_max_batched_migration" => c.nr_max_batched_migration().await?,
        "allow_migrate" => c.allow_migrate().await? as u64,
        "force_migrate" => c.force_migrate().await? as u64,
        "update_interval" => c.update_interval().await?,
        "flush_current_buffer_interval" => c.flush_current_buffer_interval().await?,
        "barrier_deadline_ms" => c.barrier_deadline_ms().await?,
        "write_back_queue_depth" => c.write_back_queue_depth().await?,
        other => unreachable!("cache knob {other} is in CACHE_KNOBS"),
    })
}

/// Sets a cache knob.
pub async fn set_cache(c: &CacheProxy<'_>, name: &str, v: u64) -> zbus::Result<()> {
    match name {
        "commit_super_block_interval" => c.set_commit_super_block_interval(v).await,
        "nr_max_batched_migration" => c.set_nr_max_batched_migration(v).await,
        "allow_migrate" => c.set_allow_migrate(v != 0).await,
        "force_migrate" => c.set_force_migrate(v != 0).await,
        "update_interval" => c.set_update_interval(v).await,
        "flush_current_buffer_interval" => c.set_flush_current_buffer_interval(v).await,
        "barrier_deadline_ms" => c.set_barrier_deadline_ms(v).await,
        "write_back_queue_depth" => c.set_write_back_queue_depth(v).await,
        other => unreachable!("cache knob {other} is in CACHE_KNOBS"),
    }
}

/// Reads a device knob.
pub async fn get_device(d: &DeviceProxy<'_>, name: &str) -> zbus::Result<u64> {
    match name {
        "migrate_threshold" => Ok(d.migrate_threshold().await?.into()),
        other => unreachable!("device knob {other} is in DEVICE_KNOBS"),
    }
}

/// Sets a device knob (the value must fit; lcd checks the range).
pub async fn set_device(d: &DeviceProxy<'_>, name: &str, v: u64) -> Result<(), SetDeviceError> {
    match name {
        "migrate_threshold" => {
            let v = u8::try_from(v).map_err(|_| SetDeviceError::Range)?;
            d.set_migrate_threshold(v)
                .await
                .map_err(SetDeviceError::Bus)
        }
        other => unreachable!("device knob {other} is in DEVICE_KNOBS"),
    }
}

/// Why setting a device knob failed.
pub enum SetDeviceError {
    /// The value does not fit the property's type.
    Range,
    /// The bus call failed.
    Bus(zbus::Error),
}
