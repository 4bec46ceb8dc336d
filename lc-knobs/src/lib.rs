//! lc-knobs: the one table of lc's knobs.
//!
//! Every tunable of a cache (dm-lc's per-cache sysfs knobs) and of a device
//! is written once, in [`cache_knobs!`] and [`device_knobs!`]: its dm-lc
//! name, its D-Bus property and type, its default, range, unit and help.
//! Everything else is derived from these two macros:
//!
//! - [`CACHE_KNOBS`] and [`DEVICE_KNOBS`], the table as data ([`KnobSpec`]),
//!   which the engine validates with and lcctl parses, prints, documents
//!   (help, man page, completions) and reads from;
//! - the engine's `Knob` enum and lcd's D-Bus properties, which call the
//!   macros with a macro of their own (`cache_knobs!(their_macro)`): the
//!   callback receives one entry per knob in the form
//!   `Variant (name, setter, "Property", dbus_type) = default in min..=max, "unit", "help";`.
//!
//! This crate has no dependencies: the engine (which knows nothing of
//! D-Bus) and lc-proto (the only contract between lcd and lcctl) both use it;
//! lcctl reaches it through lc-proto.

/// Whose knob it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A property of `org.lc.Lcd1.Cache` (`lcctl get|set --cache ID`).
    Cache,
    /// A property of `org.lc.Lcd1.Device` (`lcctl get|set --device ID`).
    Device,
}

/// How a knob's value is typed on D-Bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbusType {
    /// `t`: a number.
    U64,
    /// `y`: a small number (a percentage).
    U8,
    /// `b`: a switch, 0 or 1 on the command line and in JSON.
    Bool,
}

impl DbusType {
    /// Maps the type named in the table (`u64`, `u8`, `bool`).
    pub const fn of(name: &str) -> DbusType {
        match name.as_bytes() {
            b"u8" => DbusType::U8,
            b"bool" => DbusType::Bool,
            _ => DbusType::U64,
        }
    }
}

/// One knob, as the table defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnobSpec {
    /// dm-lc's name, used on the command line, in JSON and in lcd's saved
    /// state.
    pub name: &'static str,
    /// The D-Bus property that holds it.
    pub property: &'static str,
    /// Cache or device.
    pub owner: Owner,
    /// Its type on D-Bus.
    pub dbus_type: DbusType,
    /// Value after format/resume (or when a device is attached).
    pub default: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value (for `nr_max_batched_migration` the number of
    /// segments caps it further).
    pub max: u64,
    /// Unit of the value (`seconds`, `segments`, `switch`…).
    pub unit: &'static str,
    /// One line for help texts and the man page.
    pub help: &'static str,
}

impl KnobSpec {
    /// A switch: 0 or 1, a boolean on D-Bus.
    pub fn is_switch(&self) -> bool {
        self.dbus_type == DbusType::Bool
    }

    /// The accepted range as people read it: `0 or 1`, or `MIN..MAX`.
    pub fn range_text(&self) -> String {
        if self.is_switch() {
            "0 or 1".to_string()
        } else {
            format!("{}..{}", self.min, self.max)
        }
    }
}

/// The cache knobs (dm-lc's per-cache sysfs knobs), in display order.
///
/// Calls `$callback! { [ARGS] ENTRIES }` where each entry is
/// `Variant (name, setter, "Property", dbus_type) = default in min..=max, "unit", "help";`
/// and `ARGS` are the tokens given after the callback's path.
#[macro_export]
macro_rules! cache_knobs {
    ($callback:ident $(, $($args:tt)*)?) => {
        $crate::__with_probe_knob! { $callback [$($($args)*)?]
            CommitSuperBlockInterval (commit_super_block_interval, set_commit_super_block_interval,
                "CommitSuperBlockInterval", u64) = 0 in 0..=86_400, "seconds",
                "seconds between superblock record commits (0: only when needed)";
            NrMaxBatchedMigration (nr_max_batched_migration, set_nr_max_batched_migration,
                "NrMaxBatchedMigration", u64) = 8 in 1..=4096, "segments",
                "segments written back per migration batch (at most the number of segments)";
            AllowMigrate (allow_migrate, set_allow_migrate, "AllowMigrate", bool) = 0 in 0..=1,
                "switch",
                "1: write dirty data back to the backing devices; lcd's migration policy sets it \
                 every update_interval (migrate_threshold 0 stops write-back, force_migrate 1 \
                 forces it)";
            ForceMigrate (force_migrate, set_force_migrate, "ForceMigrate", bool) = 0 in 0..=1,
                "switch", "1: write back regardless of backing-device load";
            UpdateInterval (update_interval, set_update_interval, "UpdateInterval", u64)
                = 1 in 1..=3600, "seconds", "seconds between runs of the migration policy";
            FlushCurrentBufferInterval (flush_current_buffer_interval,
                set_flush_current_buffer_interval, "FlushCurrentBufferInterval", u64)
                = 0 in 0..=86_400, "seconds",
                "seconds a partial segment may wait before it is written (0: off)";
            BarrierDeadlineMs (barrier_deadline_ms, set_barrier_deadline_ms, "BarrierDeadlineMs",
                u64) = 3 in 1..=10_000, "milliseconds",
                "milliseconds a FLUSH/FUA waits for the current segment to fill";
            WriteBackQueueDepth (write_back_queue_depth, set_write_back_queue_depth,
                "WriteBackQueueDepth", u64) = 16 in 1..=64, "writes",
                "write-back writes in flight per backing device";
        }
    };
}

/// The device knobs, in display order; called like [`cache_knobs!`].
#[macro_export]
macro_rules! device_knobs {
    ($callback:ident $(, $($args:tt)*)?) => {
        $crate::__with_probe_device_knob! { $callback [$($($args)*)?]
            MigrateThreshold (migrate_threshold, set_migrate_threshold, "MigrateThreshold", u8)
                = 70 in 0..=100, "percent",
                "write-back policy threshold, percent of the backing device's load (0 stops \
                 write-back of this device)";
        }
    };
}

/// Appends the probe knob to the cache table when the `probe-knob`
/// feature is on (see Cargo.toml); not part of the API.
#[cfg(feature = "probe-knob")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_probe_knob {
    ($callback:ident [$($args:tt)*] $($entries:tt)*) => {
        $callback! { [$($args)*] $($entries)*
            ProbeKnob (probe_knob, set_probe_knob, "ProbeKnob", u64) = 5 in 2..=9, "probes",
                "a knob only the table defines (the probe-knob build of tests/knob-table)";
        }
    };
}

/// Passes the cache table on unchanged (the `probe-knob` feature is off).
#[cfg(not(feature = "probe-knob"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_probe_knob {
    ($callback:ident [$($args:tt)*] $($entries:tt)*) => {
        $callback! { [$($args)*] $($entries)* }
    };
}

/// Appends the probe knob to the device table when the `probe-knob`
/// feature is on; not part of the API.
#[cfg(feature = "probe-knob")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_probe_device_knob {
    ($callback:ident [$($args:tt)*] $($entries:tt)*) => {
        $callback! { [$($args)*] $($entries)*
            ProbeDeviceKnob (probe_device_knob, set_probe_device_knob, "ProbeDeviceKnob", u64)
                = 4 in 1..=8, "probes",
                "a device knob only the table defines (the probe-knob build of tests/knob-table)";
        }
    };
}

/// Passes the device table on unchanged (the `probe-knob` feature is off).
#[cfg(not(feature = "probe-knob"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_probe_device_knob {
    ($callback:ident [$($args:tt)*] $($entries:tt)*) => {
        $callback! { [$($args)*] $($entries)* }
    };
}

/// Turns table entries into an array of [`KnobSpec`]; the owner comes as
/// the callback's argument.
#[doc(hidden)]
#[macro_export]
macro_rules! __spec_array {
    ([$owner:ident] $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
        [$($crate::KnobSpec {
            name: stringify!($name),
            property: $property,
            owner: $crate::Owner::$owner,
            dbus_type: $crate::DbusType::of(stringify!($ty)),
            default: $default,
            min: $min,
            max: $max,
            unit: $unit,
            help: $help,
        }),*]
    };
}

/// Every cache knob, in display order.
pub const CACHE_KNOBS: &[KnobSpec] = &cache_knobs!(__spec_array, Cache);

/// Every device knob, in display order.
pub const DEVICE_KNOBS: &[KnobSpec] = &device_knobs!(__spec_array, Device);

/// The knob of `owner` named `name`.
pub fn find(owner: Owner, name: &str) -> Option<&'static KnobSpec> {
    knobs_of(owner).iter().find(|k| k.name == name)
}

/// The knobs of `owner`, in display order.
pub fn knobs_of(owner: Owner) -> &'static [KnobSpec] {
    match owner {
        Owner::Cache => CACHE_KNOBS,
        Owner::Device => DEVICE_KNOBS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// zbus names a property after its getter in PascalCase; the table
    /// states the property too, so it must say the same.
    #[test]
    fn every_property_is_its_name_in_pascal_case() {
        for k in CACHE_KNOBS.iter().chain(DEVICE_KNOBS) {
            let pascal: String = k
                .name
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(k.property, pascal, "{}", k.name);
        }
    }

    #[test]
    fn defaults_are_in_range_and_switches_are_booleans() {
        for k in CACHE_KNOBS.iter().chain(DEVICE_KNOBS) {
            assert!(k.min <= k.default && k.default <= k.max, "{}", k.name);
            assert_eq!(k.is_switch(), k.unit == "switch", "{}", k.name);
            if k.is_switch() {
                assert_eq!((k.min, k.max), (0, 1), "{}", k.name);
            }
            if k.dbus_type == DbusType::U8 {
                assert!(k.max <= u8::MAX as u64, "{}", k.name);
            }
            assert!(!k.help.is_empty() && !k.unit.is_empty(), "{}", k.name);
        }
    }

    #[test]
    fn names_are_unique_over_caches_and_devices() {
        let mut names: Vec<_> = CACHE_KNOBS
            .iter()
            .chain(DEVICE_KNOBS)
            .map(|k| k.name)
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(
            find(Owner::Cache, "allow_migrate").unwrap().property,
            "AllowMigrate"
        );
        assert!(find(Owner::Cache, "migrate_threshold").is_none());
        assert_eq!(
            find(Owner::Device, "migrate_threshold").unwrap().default,
            70
        );
        assert_eq!(CACHE_KNOBS.len(), 8 + cfg!(feature = "probe-knob") as usize);
    }
}
