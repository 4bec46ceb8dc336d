//! The knobs lcctl can get and set: lc-knobs' table, reached through
//! lc-proto (the properties of `org.lc.Lcd1.Cache`, dm-lc's per-cache sysfs
//! knobs under their dm-lc names, and of `org.lc.Lcd1.Device`).
//!
//! Nothing here lists a knob: names, help, ranges and D-Bus properties all
//! come from the table, so a knob added there is parsed, completed,
//! documented, read and set by lcctl with no change here. Ranges are
//! checked by lcd; lcctl only parses what was typed.

use clap::builder::{PossibleValue, TypedValueParser};
pub use lc_proto::knobs::{KnobSpec, Owner, CACHE_KNOBS, DEVICE_KNOBS};
use lc_proto::SetKnobError;

use crate::client::Client;
use crate::error::{Exit, Failure};

fn unknown(name: &str, knobs: &[KnobSpec], of: &str, other: &str) -> Failure {
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
pub fn cache_knob(name: &str) -> Result<&'static KnobSpec, Failure> {
    lc_proto::knobs::find(Owner::Cache, name).ok_or_else(|| {
        let hint = if lc_proto::knobs::find(Owner::Device, name).is_some() {
            "it is a device knob: use --device ID"
        } else {
            "see KNOBS in lcctl(8)"
        };
        unknown(name, CACHE_KNOBS, "cache", hint)
    })
}

/// Looks a device knob up by name.
pub fn device_knob(name: &str) -> Result<&'static KnobSpec, Failure> {
    lc_proto::knobs::find(Owner::Device, name).ok_or_else(|| {
        let hint = if lc_proto::knobs::find(Owner::Cache, name).is_some() {
            "it is a cache knob: use --cache ID"
        } else {
            "see KNOBS in lcctl(8)"
        };
        unknown(name, DEVICE_KNOBS, "device", hint)
    })
}

/// Parses a value typed for `knob`.
pub fn parse_value(knob: &KnobSpec, text: &str) -> Result<u64, Failure> {
    let v = if knob.is_switch() {
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Some(1),
            "0" | "false" | "off" | "no" => Some(0),
            _ => None,
        }
    } else {
        text.parse::<u64>().ok()
    };
    v.ok_or_else(|| {
        let want = if knob.is_switch() {
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

/// Reads a knob of cache or device `id` (as the knob's owner says).
pub async fn get(c: &Client, knob: &KnobSpec, id: u8) -> Result<u64, Failure> {
    lc_proto::knob_value(&c.conn, knob, id)
        .await
        .map_err(c.zbus_err(&target_name(knob, id)))
}

/// Sets a knob of cache or device `id`; a value that does not fit the
/// property's type is refused here, the range is lcd's to check.
pub async fn set(c: &Client, knob: &KnobSpec, id: u8, value: u64) -> Result<(), Failure> {
    lc_proto::set_knob_value(&c.conn, knob, id, value)
        .await
        .map_err(|e| match e {
            SetKnobError::DoesNotFit => Failure::new(
                Exit::Usage,
                format!(
                    "{} must be in {}..={}, got {value}",
                    knob.name, knob.min, knob.max
                ),
            ),
            SetKnobError::Bus(e) => c.zbus_err(&target_name(knob, id))(e),
        })
}

/// `cache ID` or `device ID`, as messages name the knob's object.
pub fn target_name(knob: &KnobSpec, id: u8) -> String {
    match knob.owner {
        Owner::Cache => format!("cache {id}"),
        Owner::Device => format!("device {id}"),
    }
}

/// The value parser of a KNOB argument: takes any name (lcctl itself says
/// what is wrong with an unknown one, naming the knobs of the right owner)
/// and offers every knob of the table to help texts and completions.
#[derive(Clone, Copy, Debug, Default)]
pub struct KnobName;

impl TypedValueParser for KnobName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(CACHE_KNOBS.iter().chain(DEVICE_KNOBS).map(|k| {
            let owner = match k.owner {
                Owner::Cache => "cache",
                Owner::Device => "device",
            };
            PossibleValue::new(k.name).help(format!("{owner}: {}", k.help))
        })))
    }
}
