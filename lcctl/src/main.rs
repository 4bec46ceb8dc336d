//! lcctl: the lc admin client. It will talk only D-Bus to lcd (issue 5);
//! this build only reports what it is.

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version") | Some("-V")) {
        println!("lcctl {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    anyhow::bail!(
        "lcctl {}: the client is not implemented in this build (it needs the lcd daemon at {})",
        env!("CARGO_PKG_VERSION"),
        lc_proto::BUS_NAME
    )
}
