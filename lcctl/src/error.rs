//! What can go wrong, as exit codes scripts rely on and one-line messages
//! that say what to do next.
//!
//! Every D-Bus error lcctl can meet is classified here by its error name:
//! lcd's named errors (`org.lc.Lcd1.Error.*`), the bus's own
//! (`org.freedesktop.DBus.Error.*`) and transport failures.

use lc_proto::LcdError;
use zbus::DBusError;

/// Exit status of lcctl. The numbers are part of the interface (lcctl(8),
/// EXIT STATUS) and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// A failure no other code describes.
    Failure = 1,
    /// Bad command line, or a value the daemon refused as invalid.
    Usage = 2,
    /// No such cache, device, path or knob.
    NotFound = 3,
    /// The cache, device or path is in use.
    Busy = 4,
    /// Only root may do that.
    Permission = 5,
    /// An I/O error on a cache or backing device.
    Io = 6,
    /// lcd cannot be reached: the bus is down or lcd is not running.
    Unreachable = 7,
    /// The device holds no (valid) lc cache.
    NotFormatted = 8,
    /// lcd speaks another API version than this lcctl.
    Incompatible = 9,
}

impl Exit {
    /// Every exit status, in order.
    pub const ALL: [Exit; 10] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::NotFound,
        Exit::Busy,
        Exit::Permission,
        Exit::Io,
        Exit::Unreachable,
        Exit::NotFormatted,
        Exit::Incompatible,
    ];

    /// The number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// A stable name (the `kind` of JSON errors).
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failure => "failed",
            Exit::Usage => "usage",
            Exit::NotFound => "not_found",
            Exit::Busy => "busy",
            Exit::Permission => "permission",
            Exit::Io => "io",
            Exit::Unreachable => "unreachable",
            Exit::NotFormatted => "not_formatted",
            Exit::Incompatible => "incompatible",
        }
    }

    /// What it means, for the man page.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "Success.",
            Exit::Failure => "A failure that no other status describes (lcd's Failed error, an unexpected reply).",
            Exit::Usage => "Usage error: a bad command line (from the parser), a value out of range, an unknown knob, or no cache id given and none selected with switch-to.",
            Exit::NotFound => "No such cache, device or path.",
            Exit::Busy => "The cache, device or path is in use (a resumed cache, an id taken, a cache that still has devices).",
            Exit::Permission => "Permission denied: changes need root.",
            Exit::Io => "An I/O error on a cache or backing device, or saving lcd's state failed.",
            Exit::Unreachable => "lcd cannot be reached: the bus is not running, or nobody owns org.lc.Lcd1 on it.",
            Exit::NotFormatted => "The device holds no valid lc cache (format it first).",
            Exit::Incompatible => "lcd speaks another API version than this lcctl, or lacks the call (update one of them).",
        }
    }
}

/// A failed command: its exit status and the one line to print.
#[derive(Debug)]
pub struct Failure {
    /// Exit status.
    pub exit: Exit,
    /// What went wrong and what to do next, one line, control characters
    /// escaped.
    pub message: String,
}

impl Failure {
    /// A failure with this status and message.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        let message: String = message.into();
        // one line, whatever the daemon sent, and no control characters
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        let message = crate::render::escape(&message).into_owned();
        Failure { exit, message }
    }
}

/// The result of a command.
pub type Result<T> = std::result::Result<T, Failure>;

/// How to start lcd on the bus lcctl was told to use.
pub fn start_hint(bus: &str) -> String {
    match bus {
        "system" => "start it with `systemctl start lcd`".to_string(),
        "session" => "start it with `lcd --session`".to_string(),
        a => format!("start it with `lcd --address {a}`"),
    }
}

/// Classifies a zbus error. `what` names the object the call was about
/// (`cache 3`, `device 2`) for the messages about missing objects.
pub fn from_zbus(e: zbus::Error, bus: &str, what: &str) -> Failure {
    let (name, text) = match &e {
        zbus::Error::MethodError(name, text, _) => {
            (name.to_string(), text.clone().unwrap_or_default())
        }
        zbus::Error::FDO(f) => (
            f.name().to_string(),
            f.description().unwrap_or_default().to_string(),
        ),
        zbus::Error::DBus(d) => (
            d.name().to_string(),
            d.description().unwrap_or_default().to_string(),
        ),
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => {
            return Failure::new(
                Exit::Unreachable,
                format!(
                    "cannot reach the {} bus ({e}): is D-Bus running? then {}",
                    bus_name(bus),
                    start_hint(bus)
                ),
            )
        }
        _ => return Failure::new(Exit::Failure, format!("D-Bus error: {e}")),
    };
    from_name(&name, &text, bus, what)
}

/// Classifies an error of an lc-proto method.
pub fn from_lcd(e: LcdError, bus: &str, what: &str) -> Failure {
    match e {
        LcdError::ZBus(z) => from_zbus(z, bus, what),
        LcdError::NotFound(m) => Failure::new(Exit::NotFound, m),
        LcdError::Busy(m) => Failure::new(Exit::Busy, m),
        LcdError::InvalidArgument(m) => Failure::new(Exit::Usage, m),
        LcdError::NotFormatted(m) => Failure::new(
            Exit::NotFormatted,
            format!("{m} (format it with `lcctl format PATH`)"),
        ),
        LcdError::AccessDenied(m) => permission(&m),
        LcdError::Io(m) => Failure::new(Exit::Io, m),
        LcdError::Failed(m) => Failure::new(Exit::Failure, m),
    }
}

fn permission(text: &str) -> Failure {
    if text.contains("sudo") {
        Failure::new(Exit::Permission, format!("permission denied: {text}"))
    } else {
        Failure::new(
            Exit::Permission,
            format!("permission denied: changes need root, run the command with sudo ({text})"),
        )
    }
}

fn bus_name(bus: &str) -> &str {
    match bus {
        "system" | "session" => bus,
        _ => "given",
    }
}

fn from_name(name: &str, text: &str, bus: &str, what: &str) -> Failure {
    let short = name.rsplit('.').next().unwrap_or(name);
    if name.starts_with(lc_proto::ERROR_PREFIX) {
        let e = match short {
            "NotFound" => LcdError::NotFound(text.into()),
            "Busy" => LcdError::Busy(text.into()),
            "InvalidArgument" => LcdError::InvalidArgument(text.into()),
            "NotFormatted" => LcdError::NotFormatted(text.into()),
            "AccessDenied" => LcdError::AccessDenied(text.into()),
            "Io" => LcdError::Io(text.into()),
            _ => LcdError::Failed(text.into()),
        };
        return from_lcd(e, bus, what);
    }
    match short {
        "ServiceUnknown" | "NameHasNoOwner" => Failure::new(
            Exit::Unreachable,
            format!(
                "lcd is not running: nobody owns {} on the {} bus; {}",
                lc_proto::BUS_NAME,
                bus_name(bus),
                start_hint(bus)
            ),
        ),
        "NoReply" | "Timeout" | "TimedOut" | "Disconnected" | "NoServer" => Failure::new(
            Exit::Unreachable,
            format!("lcd did not answer ({text}); check it with `systemctl status lcd`"),
        ),
        "AccessDenied" | "AuthFailed" | "InteractiveAuthorizationRequired" => permission(text),
        "UnknownObject" => Failure::new(
            Exit::NotFound,
            format!("there is no {what}: `lcctl list` shows the caches and devices"),
        ),
        "UnknownMethod" | "UnknownInterface" | "UnknownProperty" => Failure::new(
            Exit::Incompatible,
            format!("lcd does not offer this ({text}): update lcd to the version of lcctl"),
        ),
        "InvalidArgs" => Failure::new(Exit::Usage, text.to_string()),
        "IOError" => Failure::new(Exit::Io, text.to_string()),
        "FileNotFound" => Failure::new(Exit::NotFound, text.to_string()),
        _ => Failure::new(Exit::Failure, format!("{name}: {text}")),
    }
}
