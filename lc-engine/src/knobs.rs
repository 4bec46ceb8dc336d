//! The tunables of a cache and of each of its devices, kept under dm-lc's
//! names, with their ranges.
//!
//! The knobs are defined once, in lc-knobs' table ([`lc_knobs::cache_knobs!`],
//! [`lc_knobs::device_knobs!`]): this module makes the engine's [`Knob`] and
//! [`DeviceKnob`] enums and their `ALL` tables from it, and keeps the
//! current values of a cache ([`Knobs`]) and of a device ([`DeviceKnobs`]),
//! validated against the table's ranges.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Makes a knob enum (the first argument), its `ALL` table and its lookups
/// from the table's entries; the second argument says whose knobs they are.
macro_rules! engine_knobs {
    ([$knob:ident, $whose:literal]
        $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
        #[doc = concat!("A settable ", $whose, " knob (one per entry of lc-knobs' table).")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $knob {
            $(
                #[doc = $help]
                $variant,
            )*
        }

        impl $knob {
            /// Every knob, in display order.
            pub const ALL: [KnobSpec<$knob>; [$(stringify!($variant)),*].len()] = [$(KnobSpec {
                knob: $knob::$variant,
                name: stringify!($name),
                default: $default,
                min: $min,
                max: $max,
                help: $help,
            }),*];

            /// The knob's description.
            pub fn spec(self) -> &'static KnobSpec<$knob> {
                &Self::ALL[self.slot()]
            }

            /// Looks a knob up by its dm-lc name.
            pub fn from_name(name: &str) -> Result<$knob> {
                Self::ALL
                    .iter()
                    .find(|s| s.name == name)
                    .map(|s| s.knob)
                    .ok_or_else(|| {
                        let names: Vec<_> = Self::ALL.iter().map(|s| s.name).collect();
                        Error::InvalidArgument(format!(
                            "unknown {} knob {name:?}; knobs are: {}",
                            $whose,
                            names.join(", ")
                        ))
                    })
            }

            /// Its place in [`Self::ALL`].
            fn slot(self) -> usize {
                self as usize
            }
        }
    };
}

lc_knobs::cache_knobs!(engine_knobs, Knob, "cache");
lc_knobs::device_knobs!(engine_knobs, DeviceKnob, "device");

/// Static description of a knob, as lc-knobs' table gives it.
#[derive(Debug, Clone, Copy)]
pub struct KnobSpec<K = Knob> {
    /// The knob.
    pub knob: K,
    /// dm-lc's sysfs name.
    pub name: &'static str,
    /// Value after format/resume (or when a device is attached).
    pub default: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value (the number of segments also caps
    /// `nr_max_batched_migration`).
    pub max: u64,
    /// One line for help texts.
    pub help: &'static str,
}

impl<K> KnobSpec<K> {
    /// Refuses `value` outside `min..=max` (`max` as capped for this cache).
    fn check(&self, value: u64, max: u64) -> Result<()> {
        if value < self.min || value > max {
            return Err(Error::InvalidArgument(format!(
                "{} must be in {}..={}, got {value}",
                self.name, self.min, max
            )));
        }
        Ok(())
    }
}

impl DeviceKnob {
    /// Refuses a value out of the knob's range (what [`DeviceKnobs::set`]
    /// refuses), for a device whose values are kept elsewhere meanwhile.
    pub fn check(self, value: u64) -> Result<()> {
        let s = self.spec();
        s.check(value, s.max)
    }
}

/// Current knob values of one device, readable without locks.
#[derive(Debug)]
pub struct DeviceKnobs {
    values: [AtomicU64; DeviceKnob::ALL.len()],
}

impl Default for DeviceKnobs {
    /// The table's defaults.
    fn default() -> Self {
        DeviceKnobs {
            values: DeviceKnob::ALL.map(|s| AtomicU64::new(s.default)),
        }
    }
}

impl Clone for DeviceKnobs {
    fn clone(&self) -> Self {
        let k = DeviceKnobs::default();
        for s in &DeviceKnob::ALL {
            k.values[s.knob.slot()].store(self.get(s.knob), Ordering::Relaxed);
        }
        k
    }
}

impl PartialEq for DeviceKnobs {
    fn eq(&self, other: &Self) -> bool {
        DeviceKnob::ALL
            .iter()
            .all(|s| self.get(s.knob) == other.get(s.knob))
    }
}

impl Eq for DeviceKnobs {}

impl DeviceKnobs {
    /// Current value.
    pub fn get(&self, knob: DeviceKnob) -> u64 {
        self.values[knob.slot()].load(Ordering::Relaxed)
    }

    /// Validates and sets; an out-of-range value changes nothing.
    pub fn set(&self, knob: DeviceKnob, value: u64) -> Result<()> {
        knob.check(value)?;
        self.values[knob.slot()].store(value, Ordering::Relaxed);
        Ok(())
    }

    /// Every value by dm-lc name, in display order.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        DeviceKnob::ALL
            .iter()
            .map(|s| (s.name, self.get(s.knob)))
            .collect()
    }
}

/// Current knob values of one cache, readable without locks.
pub struct Knobs {
    values: [AtomicU64; Knob::ALL.len()],
    nr_segments: u64,
}

impl Knobs {
    /// Defaults for a cache of `nr_segments`.
    pub fn new(nr_segments: u64) -> Self {
        let k = Knobs {
            values: Default::default(),
            nr_segments,
        };
        for s in &Knob::ALL {
            k.values[s.knob.slot()].store(s.default.min(k.max_of(s)), Ordering::Relaxed);
        }
        k
    }

    fn max_of(&self, s: &KnobSpec<Knob>) -> u64 {
        if s.knob == Knob::NrMaxBatchedMigration {
            s.max.min(self.nr_segments)
        } else {
            s.max
        }
    }

    /// Current value.
    pub fn get(&self, knob: Knob) -> u64 {
        self.values[knob.slot()].load(Ordering::Relaxed)
    }

    /// Current value of a boolean knob.
    pub fn flag(&self, knob: Knob) -> bool {
        self.get(knob) != 0
    }

    /// Validates and sets; out-of-range values change nothing.
    pub fn set(&self, knob: Knob, value: u64) -> Result<()> {
        let s = knob.spec();
        s.check(value, self.max_of(s))?;
        self.values[knob.slot()].store(value, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_ranges_and_names() {
        let k = Knobs::new(4);
        assert_eq!(k.get(Knob::BarrierDeadlineMs), 3);
        assert_eq!(
            k.get(Knob::NrMaxBatchedMigration),
            4,
            "capped by nr_segments"
        );
        assert!(k.set(Knob::NrMaxBatchedMigration, 5).is_err());
        assert!(k.set(Knob::NrMaxBatchedMigration, 0).is_err());
        assert!(k.set(Knob::AllowMigrate, 2).is_err());
        assert!(!k.flag(Knob::AllowMigrate), "failed set changed nothing");
        k.set(Knob::AllowMigrate, 1).unwrap();
        assert!(k.flag(Knob::AllowMigrate));
        for s in &Knob::ALL {
            assert_eq!(Knob::from_name(s.name).unwrap(), s.knob);
        }
        assert!(Knob::from_name("nope").is_err());
    }

    #[test]
    fn device_knobs_start_at_the_table_defaults_and_refuse_out_of_range_values() {
        let k = DeviceKnobs::default();
        for s in &DeviceKnob::ALL {
            assert_eq!(k.get(s.knob), s.default, "{}", s.name);
            assert_eq!(DeviceKnob::from_name(s.name).unwrap(), s.knob);
            assert!(k.set(s.knob, s.max + 1).is_err());
            assert_eq!(k.get(s.knob), s.default, "a refused set changed nothing");
            k.set(s.knob, s.min).unwrap();
            assert_eq!(k.clone().get(s.knob), s.min, "clone copies the values");
        }
        let e = k.set(DeviceKnob::MigrateThreshold, 101).unwrap_err();
        assert!(
            e.to_string()
                .contains("migrate_threshold must be in 0..=100"),
            "{e}"
        );
        assert!(DeviceKnob::from_name("nope").is_err());
    }
}
