//! lcd: the lc daemon. It will host cache engines, expose cached disks
//! through ublk and serve the D-Bus API named in lc-proto (issue 4). This
//! build only reports what it is; it does not serve anything yet.

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version") | Some("-V")) {
        println!(
            "lcd {} (engine format v{})",
            env!("CARGO_PKG_VERSION"),
            lc_engine::format::FORMAT_VERSION
        );
        return Ok(());
    }
    anyhow::bail!(
        "lcd {}: the daemon (D-Bus service {} and ublk devices) is not implemented in this build; \
         the cache engine can be tried with `cargo run --release -p lc-engine --example demo`",
        env!("CARGO_PKG_VERSION"),
        lc_proto::BUS_NAME
    )
}
