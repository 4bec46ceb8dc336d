//! The connection to lcd: which bus, the API version check, and proxies for
//! the Manager, cache and device objects (all from lc-proto).

use lc_proto::{CacheProxy, DeviceProxy, ManagerProxy, API_VERSION};
use zbus::proxy::CacheProperties;

use crate::error::{from_zbus, Exit, Failure, Result};

/// One D-Bus connection to lcd, checked to speak [`API_VERSION`].
pub struct Client {
    /// The connection; every call of one lcctl run goes through it, so
    /// lcd's per-client cursor set by `SwitchTo` holds for the run.
    pub conn: zbus::Connection,
    /// The bus as given on the command line (for messages).
    pub bus: String,
    /// The Manager.
    pub manager: ManagerProxy<'static>,
}

impl Client {
    /// Connects to the bus and checks that lcd runs there and speaks our
    /// API version.
    pub async fn connect(bus: &str) -> Result<Client> {
        let builder = match bus {
            "system" => zbus::connection::Builder::system(),
            "session" => zbus::connection::Builder::session(),
            address => {
                let a = zbus::Address::try_from(address).map_err(|e| {
                    Failure::new(
                        Exit::Usage,
                        format!(
                            "--bus {address}: not system, session or a D-Bus address such as unix:path=/run/lc/bus ({e})"
                        ),
                    )
                })?;
                zbus::connection::Builder::address(a)
            }
        };
        let conn = builder.build().await.map_err(|e| {
            Failure::new(
                Exit::Unreachable,
                format!(
                    "cannot connect to the {bus} bus ({e}): is D-Bus running there? (systemctl status dbus)"
                ),
            )
        })?;
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| from_zbus(e, bus, "manager"))?;
        let version = manager
            .version()
            .await
            .map_err(|e| from_zbus(e, bus, "lcd manager object"))?;
        if version != API_VERSION {
            return Err(Failure::new(
                Exit::Incompatible,
                format!(
                    "lcd speaks API version {version}, this lcctl speaks {API_VERSION}: install the lcctl that came with this lcd"
                ),
            ));
        }
        Ok(Client {
            conn,
            bus: bus.to_string(),
            manager,
        })
    }

    /// The object of cache `id`.
    pub async fn cache(&self, id: u8) -> Result<CacheProxy<'static>> {
        CacheProxy::builder(&self.conn)
            .path(lc_proto::cache_path(id))
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| from_zbus(e, &self.bus, &format!("cache {id}")))
    }

    /// The object of device `id`.
    pub async fn device(&self, id: u8) -> Result<DeviceProxy<'static>> {
        DeviceProxy::builder(&self.conn)
            .path(lc_proto::device_path(id))
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| from_zbus(e, &self.bus, &format!("device {id}")))
    }

    /// Classifies a zbus error of a call about `what`.
    pub fn zbus_err(&self, what: &str) -> impl Fn(zbus::Error) -> Failure + '_ {
        let what = what.to_string();
        move |e| from_zbus(e, &self.bus, &what)
    }

    /// Classifies an lc-proto error of a call about `what`.
    pub fn lcd_err(&self, what: &str) -> impl Fn(lc_proto::LcdError) -> Failure + '_ {
        let what = what.to_string();
        move |e| crate::error::from_lcd(e, &self.bus, &what)
    }
}
