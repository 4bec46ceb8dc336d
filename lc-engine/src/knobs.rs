//! The tunables of a cache, kept under dm-lc's names, with their ranges.
//!
//! The knobs are defined once, in lc-knobs' table ([`lc_knobs::cache_knobs!`]):
//! this module makes the engine's [`Knob`] enum and [`Knob::ALL`] from it,
//! and keeps each cache's current values ([`Knobs`]), validated against the
//! table's ranges.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Makes [`Knob`] and [`Knob::ALL`] from the table's entries.
macro_rules! engine_knobs {
    ([] $($variant:ident ($name:ident, $setter:ident, $property:literal, $ty:ident)
        = $default:literal in $min:literal ..= $max:literal, $unit:literal, $help:literal;)*) => {
        /// A settable per-cache knob (one per entry of lc-knobs' table).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Knob {
            $(
                #[doc = $help]
                $variant,
            )*
        }

        impl Knob {
            /// Every knob, in display order.
            pub const ALL: [KnobSpec; [$(stringify!($variant)),*].len()] = [$(KnobSpec {
                knob: Knob::$variant,
                name: stringify!($name),
                default: $default,
                min: $min,
                max: $max,
                help: $help,
            }),*];
        }
    };
}

lc_knobs::cache_knobs!(engine_knobs);

/// Static description of a knob, as lc-knobs' table gives it.
#[derive(Debug, Clone, Copy)]
pub struct KnobSpec {
    /// The knob.
    pub knob: Knob,
    /// dm-lc's sysfs name.
    pub name: &'static str,
    /// Value after format/resume.
    pub default: u64,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value (the number of segments also caps
    /// `nr_max_batched_migration`).
    pub max: u64,
    /// One line for help texts.
    pub help: &'static str,
}

impl Knob {
    /// The knob's description.
    pub fn spec(self) -> &'static KnobSpec {
        Self::ALL
            .iter()
            .find(|s| s.knob == self)
            .expect("every knob is in ALL")
    }

    /// Looks a knob up by its dm-lc name.
    pub fn from_name(name: &str) -> Result<Knob> {
        Self::ALL
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.knob)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name).collect();
                Error::InvalidArgument(format!(
                    "unknown knob {name:?}; knobs are: {}",
                    names.join(", ")
                ))
            })
    }

    fn slot(self) -> usize {
        Self::ALL
            .iter()
            .position(|s| s.knob == self)
            .expect("every knob is in ALL")
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

    fn max_of(&self, s: &KnobSpec) -> u64 {
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
        let max = self.max_of(s);
        if value < s.min || value > max {
            return Err(Error::InvalidArgument(format!(
                "{} must be in {}..={}, got {value}",
                s.name, s.min, max
            )));
        }
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
}
