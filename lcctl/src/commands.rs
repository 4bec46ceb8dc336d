//! One function per command: the D-Bus calls through lc-proto, then what
//! to print, as text and as JSON (shapes documented in lcctl(8)).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use lc_proto::{CacheInfo, CacheStatus, DeviceInfo};
use serde_json::{json, Map, Value};

use crate::cli::{Cli, Command, FrontendArg, KnobTarget};
use crate::client::Client;
use crate::error::{Exit, Failure, Result};
use crate::knobs::{self, KnobSpec, CACHE_KNOBS, DEVICE_KNOBS};
use crate::render::{bytes, escape, indent, or_dash, percent, ratio, table};
use crate::selection;

/// What a command prints: text for people, JSON for scripts.
pub struct Output {
    /// Text for stdout (may be empty).
    pub text: String,
    /// The JSON document for `--json`.
    pub json: Value,
}

/// Runs a parsed command line.
pub async fn run(cli: &Cli) -> Result<Output> {
    // every command needs lcd, switch-to too: a selection made while lcd
    // is not running is a mistake worth hearing about at once
    let c = Client::connect(&cli.bus).await?;
    match &cli.command {
        Command::Format { path, force } => format(&c, path, *force).await,
        Command::SwitchTo { id } => switch_to(&c, *id).await,
        Command::Resume { path, id } => resume(&c, path, *id).await,
        Command::Free { id } => free(&c, *id).await,
        Command::ClearStat { id } => clear_stat(&c, *id).await,
        Command::Attach {
            backing,
            cache,
            id,
            frontend,
        } => attach(&c, backing, *cache, *id, *frontend).await,
        Command::Detach {
            id,
            discard_dirty: true,
            ..
        } => forget(&c, *id).await,
        Command::Detach { id, no_wait, .. } => detach(&c, *id, *no_wait, cli.json).await,
        Command::Repoint { id, backing } => repoint(&c, *id, backing.as_deref()).await,
        Command::RepointCache { id, path } => repoint_cache(&c, *id, path).await,
        Command::Status { id } => status(&c, *id).await,
        Command::List => list(&c).await,
        Command::Get { knob, target } => get(&c, knob.as_deref(), target).await,
        Command::Set {
            knob,
            value,
            target,
        } => set(&c, knob, value, target).await,
        Command::Flush { id } => flush(&c, *id).await,
        Command::CommitSuperBlock { id } => commit_super_block(&c, *id).await,
    }
}

/// The path as lcd must see it: absolute (lcd runs in another directory)
/// and UTF-8 (D-Bus strings are; a lossy conversion would name another file).
fn absolute(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("cannot make {} absolute: {e}", path.display()),
        )
    })?;
    abs.to_str().map(str::to_string).ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            format!(
                "{} is not valid UTF-8, which D-Bus cannot carry; give a symlink with a UTF-8 name instead",
                abs.display()
            ),
        )
    })
}

async fn format(c: &Client, path: &Path, force: bool) -> Result<Output> {
    let path = absolute(path)?;
    c.manager
        .format_cache_device(&path, force)
        .await
        .map_err(c.lcd_err(&path))?;
    Ok(Output {
        text: format!(
            "formatted {p}; resume it with `lcctl resume {p} --id ID`",
            p = escape(&path)
        ),
        json: json!({ "formatted": path }),
    })
}

async fn switch_to(c: &Client, id: u8) -> Result<Output> {
    c.manager
        .switch_to(id)
        .await
        .map_err(c.lcd_err(&format!("cache {id}")))?;
    selection::save(id)?;
    let resumed = caches(c).await?.iter().any(|i| i.id == id);
    let text = if resumed {
        format!("selected cache {id}")
    } else {
        format!(
            "selected cache {id} (not resumed yet: `lcctl resume PATH` resumes a cache as {id})"
        )
    };
    Ok(Output {
        text,
        json: json!({ "selected_cache": id }),
    })
}

async fn caches(c: &Client) -> Result<Vec<CacheInfo>> {
    c.manager
        .list_caches()
        .await
        .map_err(c.lcd_err("cache list"))
}

async fn devices(c: &Client) -> Result<Vec<DeviceInfo>> {
    c.manager
        .list_devices()
        .await
        .map_err(c.lcd_err("device list"))
}

/// Sets this connection's cursor in lcd to `id` (lc-mgr's switch_to).
async fn cursor(c: &Client, id: u8) -> Result<()> {
    c.manager
        .switch_to(id)
        .await
        .map_err(c.lcd_err(&format!("cache {id}")))
}

async fn resume(c: &Client, path: &Path, id: Option<u8>) -> Result<Output> {
    let path = absolute(path)?;
    let id = match id {
        Some(id) => {
            c.manager
                .resume_cache_as(id, &path)
                .await
                .map_err(c.lcd_err(&path))?;
            id
        }
        None => {
            let id = selection::cache_or_selected(None)?;
            cursor(c, id).await?;
            c.manager
                .resume_cache(&path)
                .await
                .map_err(c.lcd_err(&path))?;
            id
        }
    };
    let info = caches(c)
        .await?
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| {
            Failure::new(
                Exit::Failure,
                format!("cache {id} was resumed but is no longer listed (freed meanwhile?)"),
            )
        })?;
    Ok(Output {
        text: format!(
            "resumed cache {id} from {}: {} segments, {} dirty blocks",
            escape(&info.path),
            info.nr_segments,
            info.nr_dirty_caches
        ),
        json: to_value(&info),
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("lc-proto types serialize")
}

async fn free(c: &Client, id: Option<u8>) -> Result<Output> {
    let id = selection::cache_or_selected(id)?;
    cursor(c, id).await?;
    c.manager
        .free_cache()
        .await
        .map_err(c.lcd_err(&format!("cache {id}")))?;
    Ok(Output {
        text: format!("freed cache {id}"),
        json: json!({ "freed_cache": id }),
    })
}

async fn clear_stat(c: &Client, id: Option<u8>) -> Result<Output> {
    let id = selection::cache_or_selected(id)?;
    cursor(c, id).await?;
    c.manager
        .clear_stat()
        .await
        .map_err(c.lcd_err(&format!("cache {id}")))?;
    Ok(Output {
        text: format!("cleared the I/O counters of cache {id}"),
        json: json!({ "cleared_cache": id }),
    })
}

async fn attach(
    c: &Client,
    backing: &Path,
    cache: u8,
    id: Option<u8>,
    frontend: Option<FrontendArg>,
) -> Result<Output> {
    let backing = absolute(backing)?;
    let frontend = frontend.map_or("", FrontendArg::name);
    let info = c
        .manager
        .create_device_with_frontend(id.unwrap_or(0), &backing, cache, frontend)
        .await
        .map_err(c.lcd_err(&backing))?;
    let text = if info.node.is_empty() {
        format!(
            "device {} attached to cache {}; {}",
            info.id,
            info.cache_id,
            escape(&info.state)
        )
    } else {
        escape(&info.node).into_owned()
    };
    Ok(Output {
        text,
        json: to_value(&info),
    })
}

/// `detach --discard-dirty`: forgets a failed device, dropping its dirty data.
async fn forget(c: &Client, id: u8) -> Result<Output> {
    let what = format!("device {id}");
    let dirty = c
        .device(id)
        .await?
        .nr_dirty_caches()
        .await
        .map_err(c.zbus_err(&what))?;
    c.manager
        .forget_device(id, true)
        .await
        .map_err(c.lcd_err(&what))?;
    Ok(Output {
        text: format!("device {id} forgotten; its dirty data in the cache was discarded"),
        json: json!({ "device": id, "forgotten": true, "dirty_blocks_discarded": dirty }),
    })
}

async fn repoint(c: &Client, id: u8, backing: Option<&Path>) -> Result<Output> {
    let backing = backing.map(absolute).transpose()?;
    let info = c
        .manager
        .repoint_device(id, backing.as_deref().unwrap_or(""))
        .await
        .map_err(c.lcd_err(&format!("device {id}")))?;
    Ok(Output {
        text: format!(
            "device {} on {}: {}; {} dirty blocks",
            info.id, info.backing, info.state, info.nr_dirty_caches
        ),
        json: to_value(&info),
    })
}

async fn repoint_cache(c: &Client, id: u8, path: &Path) -> Result<Output> {
    let path = absolute(path)?;
    c.manager
        .repoint_cache(id, &path)
        .await
        .map_err(c.lcd_err(&format!("cache {id}")))?;
    let info = c
        .manager
        .list_caches()
        .await
        .map_err(c.lcd_err("the caches"))?
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| {
            Failure::new(
                Exit::Failure,
                format!("cache {id} was re-pointed but is no longer listed (freed meanwhile?)"),
            )
        })?;
    Ok(Output {
        text: format!(
            "cache {id} is {} (uuid {}): {} dirty blocks; bring its failed devices back with \
             lcctl repoint ID",
            info.path, info.uuid, info.nr_dirty_caches
        ),
        json: to_value(&info),
    })
}

/// How often detach looks at the dirty blocks left.
const POLL: Duration = Duration::from_millis(200);

async fn detach(c: &Client, id: u8, no_wait: bool, json_out: bool) -> Result<Output> {
    let what = format!("device {id}");
    let dev = c.device(id).await?;
    let dirty = dev.nr_dirty_caches().await.map_err(c.zbus_err(&what))?;
    if no_wait {
        c.manager
            .begin_remove_device(id)
            .await
            .map_err(c.lcd_err(&what))?;
        return Ok(Output {
            text: format!(
                "device {id}: write-back of {dirty} dirty blocks begun; it is listed as detaching until done (`lcctl list`)"
            ),
            json: json!({ "device": id, "dirty_blocks": dirty, "waited": false }),
        });
    }
    let progress = Progress::new(id, dirty, json_out);
    let remove = c.manager.remove_device(id);
    tokio::pin!(remove);
    let result = loop {
        tokio::select! {
            r = &mut remove => break r,
            _ = tokio::time::sleep(POLL) => {
                // the object goes away when the device is gone
                if let Ok(left) = dev.nr_dirty_caches().await {
                    progress.show(left);
                }
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(e) => {
            let f = crate::error::from_lcd(e, &c.bus, &what);
            if f.exit != Exit::Unreachable || !wait_gone(&dev, &progress).await {
                progress.abandon();
                return Err(f);
            }
            // the reply timed out on the bus, but the device went away
        }
    }
    progress.finish();
    Ok(Output {
        text: format!("device {id} detached; {dirty} dirty blocks were written back"),
        json: json!({ "device": id, "dirty_blocks": dirty, "waited": true }),
    })
}

/// After a lost reply to RemoveDevice: waits while the device object is
/// still detaching; true when it went away.
async fn wait_gone(dev: &lc_proto::DeviceProxy<'_>, progress: &Progress) -> bool {
    loop {
        match dev.state().await {
            Ok(state) if state == "detaching" => {
                if let Ok(left) = dev.nr_dirty_caches().await {
                    progress.show(left);
                }
                tokio::time::sleep(POLL).await;
            }
            Ok(_) => return false,
            Err(e) => return crate::error::from_zbus(e, "", "").exit == Exit::NotFound,
        }
    }
}

/// The detach progress on stderr: a bar on a terminal; otherwise a first
/// line once write-back is under way (or done), then a line whenever the
/// count changed and a few seconds passed; nothing with `--json`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Plain lines: when the last was printed and the count it showed
    /// (none before the first).
    plain: Option<std::cell::Cell<Option<(u64, std::time::Instant)>>>,
    total: u64,
    id: u8,
}

impl Progress {
    fn new(id: u8, total: u64, json_out: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = (!json_out && tty).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "device {prefix}: writing back [{bar:40}] {msg} dirty blocks left ({eta} left)",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            b.set_prefix(id.to_string());
            b.set_message(total.to_string());
            b.tick();
            b
        });
        let plain = (!json_out && !tty).then(|| std::cell::Cell::new(None));
        Progress {
            bar,
            plain,
            total,
            id,
        }
    }

    fn show(&self, left: u64) {
        if let Some(b) = &self.bar {
            b.set_position(self.total.saturating_sub(left));
            b.set_message(left.to_string());
        }
        if let Some(p) = &self.plain {
            match p.get() {
                None => {
                    eprintln!(
                        "lcctl: device {}: writing back {} dirty blocks",
                        self.id, self.total
                    );
                    p.set(Some((self.total, std::time::Instant::now())));
                }
                Some((last, when)) => {
                    if left != last && when.elapsed() >= Duration::from_secs(2) {
                        eprintln!("lcctl: device {}: {left} dirty blocks left", self.id);
                        p.set(Some((left, std::time::Instant::now())));
                    }
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(p) = &self.plain {
            if p.get().is_none() {
                self.show(0);
            }
        }
        if let Some(b) = &self.bar {
            b.set_position(self.total);
            b.set_message("0");
            b.finish_and_clear();
        }
    }

    fn abandon(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The knobs of a cache, as a JSON object name → value.
async fn cache_knobs(c: &Client, id: u8) -> Result<Map<String, Value>> {
    let mut values = Map::new();
    for k in CACHE_KNOBS {
        values.insert(k.name.to_string(), knobs::get(c, k, id).await?.into());
    }
    Ok(values)
}

/// The 16 counters of a status, as the rows of the I/O table.
fn io_rows(s: &CacheStatus) -> (Vec<Vec<String>>, Value) {
    let n = |write: usize, hit: usize, on_buffer: usize, full: usize| {
        s.counters
            .get(write << 3 | hit << 2 | on_buffer << 1 | full)
            .copied()
            .unwrap_or(0)
    };
    let mut rows = Vec::new();
    let mut ratios = Map::new();
    for (w, op) in [(0, "read"), (1, "write")] {
        let (mut op_buf, mut op_dev, mut op_all) = (0, 0, 0);
        for (f, size) in [(1, "4 KiB"), (0, "partial")] {
            let hit_buf = n(w, 1, 1, f);
            let hit_dev = n(w, 1, 0, f);
            let miss = n(w, 0, 0, f) + n(w, 0, 1, f);
            let all = hit_buf + hit_dev + miss;
            op_buf += hit_buf;
            op_dev += hit_dev;
            op_all += all;
            rows.push(vec![
                op.to_string(),
                size.to_string(),
                hit_buf.to_string(),
                hit_dev.to_string(),
                miss.to_string(),
                all.to_string(),
                percent(hit_buf + hit_dev, all),
            ]);
        }
        let op_hits = op_buf + op_dev;
        rows.push(vec![
            op.to_string(),
            "all".to_string(),
            op_buf.to_string(),
            op_dev.to_string(),
            (op_all - op_hits).to_string(),
            op_all.to_string(),
            percent(op_hits, op_all),
        ]);
        ratios.insert(op.to_string(), json!(ratio(op_hits, op_all)));
    }
    (rows, Value::Object(ratios))
}

async fn status(c: &Client, only: Option<u8>) -> Result<Output> {
    let all = caches(c).await?;
    let devs = devices(c).await?;
    let chosen: Vec<CacheInfo> = all
        .into_iter()
        .filter(|i| only.is_none_or(|id| i.id == id))
        .collect();
    if let (Some(id), true) = (only, chosen.is_empty()) {
        return Err(Failure::new(
            Exit::NotFound,
            format!("there is no cache {id}: `lcctl list` shows the caches"),
        ));
    }
    let mut texts = Vec::new();
    let mut docs = Vec::new();
    for info in chosen {
        let mine: Vec<&DeviceInfo> = devs.iter().filter(|d| d.cache_id == info.id).collect();
        let mut text = format!(
            "cache {}  {}  {}\n",
            info.id,
            escape(&info.path),
            escape(&info.state)
        );
        let (st, knobs, ratios) = if info.state == "running" {
            let cp = c.cache(info.id).await?;
            let st = cp
                .status()
                .await
                .map_err(c.lcd_err(&format!("cache {}", info.id)))?;
            let knobs = cache_knobs(c, info.id).await?;
            let mut kv = vec![
                ("health".to_string(), st.health.clone()),
                ("uuid".to_string(), info.uuid.clone()),
                ("device".to_string(), st.device.clone()),
                (
                    "static_ram".to_string(),
                    format!(
                        "{} (index {})",
                        bytes(st.static_ram_bytes),
                        bytes(st.index_ram_bytes)
                    ),
                ),
                ("nr_segments".to_string(), st.nr_segments.to_string()),
                ("nr_caches".to_string(), st.nr_caches.to_string()),
                (
                    "nr_dirty_caches".to_string(),
                    st.nr_dirty_caches.to_string(),
                ),
                (
                    "current_segment_id".to_string(),
                    st.current_segment_id.to_string(),
                ),
                ("cursor".to_string(), st.cursor.to_string()),
                (
                    "last_flushed_segment_id".to_string(),
                    st.last_flushed_segment_id.to_string(),
                ),
                (
                    "last_durable_segment_id".to_string(),
                    st.last_durable_segment_id.to_string(),
                ),
                (
                    "last_migrated_segment_id".to_string(),
                    st.last_migrated_segment_id.to_string(),
                ),
            ];
            for k in CACHE_KNOBS {
                kv.push((k.name.to_string(), knobs[k.name].to_string()));
            }
            let e = &st.errors;
            kv.push((
                "errors".to_string(),
                format!(
                    "cache read {}, cache write {}, backing read {}, backing write {}, write-back retries {}",
                    e.cache_read, e.cache_write, e.backing_read, e.backing_write, e.migration_retries
                ),
            ));
            text.push_str(&indent(&table(
                None,
                kv.into_iter().map(|(k, v)| vec![k, v]).collect(),
            )));
            text.push_str("\n\n");
            let (rows, ratios) = io_rows(&st);
            text.push_str(&indent(&table(
                Some(&[
                    "I/O",
                    "SIZE",
                    "HIT(BUFFER)",
                    "HIT(CACHE)",
                    "MISS",
                    "TOTAL",
                    "HIT RATIO",
                ]),
                rows,
            )));
            text.push('\n');
            (to_value(&st), Value::Object(knobs), ratios)
        } else {
            (Value::Null, Value::Null, Value::Null)
        };
        text.push('\n');
        if mine.is_empty() {
            text.push_str("  no devices\n");
        } else {
            text.push_str(&indent(&table(
                Some(&[
                    "DEVICE",
                    "BACKING",
                    "FRONTEND",
                    "NODE",
                    "SIZE",
                    "DIRTY",
                    "MIGRATE_THRESHOLD",
                    "STATE",
                ]),
                mine.iter()
                    .map(|d| {
                        vec![
                            d.id.to_string(),
                            or_dash(&d.backing),
                            d.frontend.clone(),
                            or_dash(&d.node),
                            bytes(d.size_bytes),
                            d.nr_dirty_caches.to_string(),
                            d.migrate_threshold.to_string(),
                            d.state.clone(),
                        ]
                    })
                    .collect(),
            )));
            text.push('\n');
        }
        texts.push(text);
        docs.push(json!({
            "id": info.id,
            "path": info.path,
            "uuid": info.uuid,
            "state": info.state,
            "status": st,
            "hit_ratio": ratios,
            "knobs": knobs,
            "devices": mine.iter().map(to_value).collect::<Vec<_>>(),
        }));
    }
    let text = if texts.is_empty() {
        "no caches (format a cache device with `lcctl format PATH`, then `lcctl resume PATH --id ID`)".to_string()
    } else {
        texts.join("\n").trim_end().to_string()
    };
    Ok(Output {
        text,
        json: json!({ "caches": docs }),
    })
}

async fn list(c: &Client) -> Result<Output> {
    let cs = caches(c).await?;
    let ds = devices(c).await?;
    let mut rows = Vec::new();
    for i in &cs {
        rows.push(vec![
            "cache".to_string(),
            i.id.to_string(),
            "-".to_string(),
            i.path.clone(),
            "-".to_string(),
            "-".to_string(),
            i.nr_dirty_caches.to_string(),
            i.state.clone(),
        ]);
        for d in ds.iter().filter(|d| d.cache_id == i.id) {
            rows.push(device_row(d));
        }
    }
    // devices of a cache lcd does not list (should not happen) still show
    for d in ds.iter().filter(|d| !cs.iter().any(|i| i.id == d.cache_id)) {
        rows.push(device_row(d));
    }
    let text = if rows.is_empty() {
        "no caches and no devices".to_string()
    } else {
        table(
            Some(&[
                "TYPE", "ID", "CACHE", "PATH", "FRONTEND", "NODE", "DIRTY", "STATE",
            ]),
            rows,
        )
    };
    Ok(Output {
        text,
        json: json!({ "caches": to_value(&cs), "devices": to_value(&ds) }),
    })
}

fn device_row(d: &DeviceInfo) -> Vec<String> {
    vec![
        "device".to_string(),
        d.id.to_string(),
        d.cache_id.to_string(),
        or_dash(&d.backing),
        d.frontend.clone(),
        or_dash(&d.node),
        d.nr_dirty_caches.to_string(),
        d.state.clone(),
    ]
}

/// Whose knobs: `("cache", id)` or `("device", id)`.
fn target(t: &KnobTarget) -> Result<(&'static str, u8)> {
    match (t.cache, t.device) {
        (_, Some(d)) => Ok(("device", d)),
        (c, None) => Ok(("cache", selection::cache_or_selected(c)?)),
    }
}

async fn get(c: &Client, knob: Option<&str>, t: &KnobTarget) -> Result<Output> {
    let (kind, id) = target(t)?;
    let specs: Vec<&KnobSpec> = match (kind, knob) {
        ("cache", Some(k)) => vec![knobs::cache_knob(k)?],
        ("cache", None) => CACHE_KNOBS.iter().collect(),
        (_, Some(k)) => vec![knobs::device_knob(k)?],
        (_, None) => DEVICE_KNOBS.iter().collect(),
    };
    let mut values = Map::new();
    for k in specs {
        values.insert(k.name.to_string(), knobs::get(c, k, id).await?.into());
    }
    let text = match knob {
        Some(k) => values[k].to_string(),
        None => table(
            Some(&["KNOB", "VALUE"]),
            values
                .iter()
                .map(|(k, v)| vec![k.clone(), v.to_string()])
                .collect(),
        ),
    };
    Ok(Output {
        text,
        json: json!({ kind: id, "knobs": values }),
    })
}

async fn set(c: &Client, knob: &str, value: &str, t: &KnobTarget) -> Result<Output> {
    let (kind, id) = target(t)?;
    let what = format!("{kind} {id}");
    let k = if kind == "cache" {
        knobs::cache_knob(knob)?
    } else {
        knobs::device_knob(knob)?
    };
    let v = knobs::parse_value(k, value)?;
    knobs::set(c, k, id, v).await?;
    let now = knobs::get(c, k, id).await?;
    Ok(Output {
        text: format!("{what}: {knob} = {now}"),
        json: json!({ kind: id, "knobs": { knob: now } }),
    })
}

async fn flush(c: &Client, id: Option<u8>) -> Result<Output> {
    let id = selection::cache_or_selected(id)?;
    let what = format!("cache {id}");
    c.cache(id)
        .await?
        .flush_current_buffer()
        .await
        .map_err(c.lcd_err(&what))?;
    Ok(Output {
        text: format!("cache {id}: current segment sealed and written"),
        json: json!({ "flushed_cache": id }),
    })
}

async fn commit_super_block(c: &Client, id: Option<u8>) -> Result<Output> {
    let id = selection::cache_or_selected(id)?;
    let what = format!("cache {id}");
    c.cache(id)
        .await?
        .commit_super_block()
        .await
        .map_err(c.lcd_err(&what))?;
    Ok(Output {
        text: format!("cache {id}: superblock record committed"),
        json: json!({ "committed_cache": id }),
    })
}
