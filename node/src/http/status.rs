//! The status page, `GET /`: one read-only HTML page (inline CSS, no
//! script, a meta refresh) with the node's identity and addresses, its
//! peers, the repo's size and pins, the indexed Nix paths and the pinned
//! sources lists with their counts, Bitswap's bytes in and out and the
//! recent transfers. Every figure comes from the functions the CLI prints
//! (`ipnix id`, `peers`, `repo stat`, `sources status`, `nix ls`, `stats`),
//! so the two never disagree; every text from the store or from peers is
//! HTML-escaped.

use crate::bitswap::{Direction, Transfer};
use crate::net::{NodeHandle, NodeStats, PeerInfo};
use crate::summary::{self, ListSummary, NixPath, NixPathStatus};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ipnix_store::{RepoStat, Store};
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

/// Rows of the Nix path table (the counts cover every path).
const NIX_ROWS: usize = 100;
/// Rows of the peer table (the count covers every peer).
const PEER_ROWS: usize = 200;
/// Seconds between reloads.
const REFRESH_SECS: u32 = 10;

/// What the page reads.
#[derive(Clone)]
pub struct StatusState {
    pub store: Arc<Store>,
    /// `None` when the daemon runs offline.
    pub node: Option<NodeHandle>,
}

impl std::fmt::Debug for StatusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusState")
            .field("online", &self.node.is_some())
            .finish_non_exhaustive()
    }
}

/// `GET /` (and `HEAD /`).
pub fn router(state: StatusState) -> Router {
    Router::new().route("/", get(page)).with_state(state)
}

/// Everything on the page, read at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub peer_id: Option<String>,
    pub listen: Vec<String>,
    pub peers: Vec<PeerInfo>,
    pub net: Option<NodeStats>,
    pub repo: Option<RepoStat>,
    pub lists: Vec<ListSummary>,
    pub nix_paths: Vec<NixPath>,
    /// Store paths of the first [`NIX_ROWS`] Nix paths.
    pub nix_names: Vec<Option<String>>,
    /// What could not be read, in words.
    pub errors: Vec<String>,
}

async fn page(State(state): State<StatusState>) -> Response {
    let snapshot = collect(&state).await;
    let mut response = (StatusCode::OK, render(&snapshot, SystemTime::now())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Nothing but the inline style: no script, image, frame or form.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Reads the node (over its command channel) and the store (on the blocking pool).
pub async fn collect(state: &StatusState) -> Snapshot {
    let mut snapshot = Snapshot::default();
    if let Some(node) = &state.node {
        snapshot.peer_id = Some(node.peer_id().to_string());
        match node.listen_addrs().await {
            Ok(addrs) => snapshot.listen = addrs.iter().map(|a| a.to_string()).collect(),
            Err(e) => snapshot.errors.push(format!("listen addresses: {e}")),
        }
        match node.peers().await {
            Ok(peers) => snapshot.peers = peers,
            Err(e) => snapshot.errors.push(format!("peers: {e}")),
        }
        match node.stats().await {
            Ok(stats) => snapshot.net = Some(stats),
            Err(e) => snapshot.errors.push(format!("node counters: {e}")),
        }
    }
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || read_store(&store)).await;
    match read {
        Ok(store_part) => {
            snapshot.repo = store_part.repo;
            snapshot.lists = store_part.lists;
            snapshot.nix_paths = store_part.nix_paths;
            snapshot.nix_names = store_part.nix_names;
            snapshot.errors.extend(store_part.errors);
        }
        Err(e) => snapshot.errors.push(format!("store: {e}")),
    }
    snapshot
}

#[derive(Default)]
struct StorePart {
    repo: Option<RepoStat>,
    lists: Vec<ListSummary>,
    nix_paths: Vec<NixPath>,
    nix_names: Vec<Option<String>>,
    errors: Vec<String>,
}

fn read_store(store: &Store) -> StorePart {
    let mut part = StorePart::default();
    match store.stat() {
        Ok(stat) => part.repo = Some(stat),
        Err(e) => part.errors.push(format!("repo stat: {e}")),
    }
    let mut sources = HashSet::new();
    match summary::sources_lists(store, None, Some(&mut sources)) {
        Ok(lists) => part.lists = lists,
        Err(e) => part.errors.push(format!("sources lists: {e}")),
    }
    match summary::nix_paths(store, &sources) {
        Ok(paths) => {
            part.nix_names = paths
                .iter()
                .take(NIX_ROWS)
                .map(|p| summary::store_path_of(store, &p.pathinfo))
                .collect();
            part.nix_paths = paths;
        }
        Err(e) => part.errors.push(format!("nix paths: {e}")),
    }
    part
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes in binary units, beside the exact figure the page also shows.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn ago(now: SystemTime, then_unix: u64) -> String {
    let now = unix_secs(now);
    if then_unix == 0 {
        return "never".into();
    }
    let secs = now.saturating_sub(then_unix);
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.3em 0}td,th{padding:.15em .6em;text-align:left;vertical-align:top}\
th{background:#eee}tr:nth-child(even) td{background:#f2f2f2}.n{text-align:right;font-variant-numeric:tabular-nums}\
code,.mono{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}\
.muted{color:#777}.bad{color:#a00}.ok{color:#070}section{max-width:70em}";

/// The page for `snapshot`, as of `now`.
pub fn render(s: &Snapshot, now: SystemTime) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
<meta name=\"viewport\" content=\"width=device-width\">\
<title>ipnix status</title><style>{STYLE}</style></head><body>\n"
    );
    let _ = writeln!(
        h,
        "<h1>ipnix {}</h1><p class=\"muted\">Read-only status; reloads every {REFRESH_SECS} s. \
The same figures as <code>ipnix id</code>, <code>peers</code>, <code>repo stat</code>, \
<code>nix ls</code>, <code>sources status</code> and <code>stats</code>.</p>",
        escape(env!("CARGO_PKG_VERSION"))
    );
    for error in &s.errors {
        let _ = writeln!(h, "<p class=\"bad\">Could not read {}</p>", escape(error));
    }
    identity(&mut h, s);
    peers(&mut h, s);
    repo(&mut h, s);
    nix(&mut h, s);
    sources(&mut h, s, now);
    bandwidth(&mut h, s, now);
    h.push_str("</body></html>\n");
    h
}

fn identity(h: &mut String, s: &Snapshot) {
    h.push_str("<section id=\"identity\"><h2>Identity</h2>");
    match &s.peer_id {
        Some(peer) => {
            let _ = write!(
                h,
                "<p>Peer ID <code id=\"peer-id\">{}</code></p>",
                escape(peer)
            );
        }
        None => h.push_str("<p class=\"muted\" id=\"peer-id\">offline: no libp2p node</p>"),
    }
    let _ = write!(
        h,
        "<p>Listen addresses (<span id=\"listen-count\">{}</span>):</p><ul>",
        s.listen.len()
    );
    for addr in &s.listen {
        let _ = write!(
            h,
            "<li><code class=\"listen-addr\">{}</code></li>",
            escape(addr)
        );
    }
    h.push_str("</ul></section>\n");
}

fn peers(h: &mut String, s: &Snapshot) {
    let _ = write!(
        h,
        "<section id=\"peers\"><h2>Peers</h2><p><span id=\"peers-count\">{}</span> connected",
        s.peers.len()
    );
    if let Some(net) = &s.net {
        let _ = write!(
            h,
            " over <span id=\"connections-count\">{}</span> connections",
            net.connections
        );
    }
    h.push_str(".</p>");
    if !s.peers.is_empty() {
        h.push_str("<table><tr><th>Address</th><th>Agent</th></tr>");
        for peer in s.peers.iter().take(PEER_ROWS) {
            let _ = write!(
                h,
                "<tr><td class=\"mono peer-addr\">{}</td><td>{}</td></tr>",
                escape(&summary::peer_address(peer)),
                escape(peer.agent.as_deref().unwrap_or("-"))
            );
        }
        h.push_str("</table>");
        if s.peers.len() > PEER_ROWS {
            let _ = write!(
                h,
                "<p class=\"muted\">… and {} more (<code>ipnix peers</code>)</p>",
                s.peers.len() - PEER_ROWS
            );
        }
    }
    h.push_str("</section>\n");
}

fn number_row(h: &mut String, label: &str, id: &str, value: u64, bytes: bool) {
    let human = if bytes {
        format!(" <span class=\"muted\">({})</span>", human_bytes(value))
    } else {
        String::new()
    };
    let _ = write!(
        h,
        "<tr><td>{label}</td><td class=\"n\" id=\"{id}\">{value}</td><td>{human}</td></tr>"
    );
}

fn repo(h: &mut String, s: &Snapshot) {
    h.push_str("<section id=\"repo\"><h2>Repo</h2>");
    let Some(r) = &s.repo else {
        h.push_str("<p class=\"bad\">unknown</p></section>\n");
        return;
    };
    h.push_str("<table>");
    number_row(h, "Blocks", "repo-blocks", r.blocks, false);
    number_row(h, "Block bytes", "repo-block-bytes", r.block_bytes, true);
    number_row(h, "On disk", "repo-disk-bytes", r.disk_bytes, true);
    number_row(
        h,
        "Reclaimable by GC",
        "repo-reclaimable-bytes",
        r.pack_dead_bytes,
        true,
    );
    number_row(h, "Pins", "repo-pins", r.pins, false);
    number_row(
        h,
        "Recursive pins",
        "repo-recursive-pins",
        r.recursive_pins,
        false,
    );
    number_row(h, "Direct pins", "repo-direct-pins", r.direct_pins, false);
    h.push_str("</table></section>\n");
}

fn nix(h: &mut String, s: &Snapshot) {
    let counts = summary::count_by_status(&s.nix_paths);
    let local = s.nix_paths.iter().filter(|p| p.local_nix).count();
    let _ = write!(
        h,
        "<section id=\"nix\"><h2>Nix store paths</h2><p><span id=\"nix-total\">{}</span> indexed \
(<span id=\"nix-local\">{local}</span> imported from this machine's Nix store).</p><table>",
        s.nix_paths.len()
    );
    for status in [
        NixPathStatus::Pinned,
        NixPathStatus::Source,
        NixPathStatus::Unpinned,
        NixPathStatus::Missing,
    ] {
        let name = status.as_str();
        number_row(
            h,
            name,
            &format!("nix-{name}"),
            counts.get(&status).copied().unwrap_or(0),
            false,
        );
    }
    h.push_str("</table>");
    if !s.nix_paths.is_empty() {
        h.push_str("<table><tr><th>Store path</th><th>Status</th><th>Path-info</th></tr>");
        for (path, name) in s.nix_paths.iter().zip(&s.nix_names) {
            let shown = name.clone().unwrap_or_else(|| path.hash_part.clone());
            let class = if path.status == NixPathStatus::Missing {
                "bad"
            } else {
                "ok"
            };
            let _ = write!(
                h,
                "<tr><td class=\"mono\">{}</td><td class=\"{class}\">{}</td><td class=\"mono\">{}</td></tr>",
                escape(&shown),
                path.status.as_str(),
                escape(&path.pathinfo.to_string())
            );
        }
        h.push_str("</table>");
        if s.nix_paths.len() > s.nix_names.len() {
            let _ = write!(
                h,
                "<p class=\"muted\">… and {} more (<code>ipnix nix ls</code>)</p>",
                s.nix_paths.len() - s.nix_names.len()
            );
        }
    }
    h.push_str("</section>\n");
}

fn sources(h: &mut String, s: &Snapshot, now: SystemTime) {
    let _ = write!(
        h,
        "<section id=\"sources\"><h2>Sources lists</h2><p><span id=\"sources-count\">{}</span> pinned.</p>",
        s.lists.len()
    );
    if s.lists.is_empty() {
        h.push_str("</section>\n");
        return;
    }
    h.push_str(
        "<table><tr><th>List</th><th>Entries</th><th>Ok</th><th>Bytes</th><th>Failed</th>\
<th>Skipped</th><th>Last attempt</th></tr>",
    );
    for list in &s.lists {
        let name = escape(&list.name);
        let _ = write!(
            h,
            "<tr class=\"list\" data-list=\"{name}\"><td><b>{name}</b><br><span class=\"mono muted\">{}</span></td>\
<td class=\"n total\">{}</td><td class=\"n ok\">{}</td><td class=\"n bytes\">{}</td>\
<td class=\"n failed\">{}</td><td class=\"n skipped\">{}</td>\
<td><span class=\"last-attempt\">{}</span> <span class=\"muted\">({})</span></td></tr>",
            escape(&list.cid.to_string()),
            list.total,
            list.ok,
            list.bytes,
            list.failed(),
            list.skipped(),
            list.last_attempt,
            ago(now, list.last_attempt),
        );
        for (kind, reasons) in [("failed", &list.failures), ("skipped", &list.skips)] {
            for (reason, n) in reasons {
                let reason = escape(reason);
                let _ = write!(
                    h,
                    "<tr class=\"reason\" data-list=\"{name}\" data-kind=\"{kind}\" data-reason=\"{reason}\">\
<td></td><td colspan=\"3\">{kind}: {reason}</td><td class=\"n count\">{n}</td><td colspan=\"2\"></td></tr>"
                );
            }
        }
    }
    h.push_str("</table></section>\n");
}

fn bandwidth(h: &mut String, s: &Snapshot, now: SystemTime) {
    h.push_str("<section id=\"bandwidth\"><h2>Bandwidth (Bitswap blocks)</h2>");
    let Some(net) = &s.net else {
        h.push_str("<p class=\"muted\">offline</p></section>\n");
        return;
    };
    let b = &net.bitswap;
    h.push_str("<table><tr><th></th><th>Blocks</th><th>Bytes</th><th></th></tr>");
    let _ = write!(
        h,
        "<tr><td>In</td><td class=\"n\" id=\"bw-in-blocks\">{}</td><td class=\"n\" id=\"bw-in-bytes\">{}</td>\
<td class=\"muted\">{}</td></tr>",
        b.blocks_received,
        b.block_bytes_received,
        human_bytes(b.block_bytes_received)
    );
    let _ = write!(
        h,
        "<tr><td>Out</td><td class=\"n\" id=\"bw-out-blocks\">{}</td><td class=\"n\" id=\"bw-out-bytes\">{}</td>\
<td class=\"muted\">{}</td></tr></table>",
        b.blocks_sent,
        b.block_bytes_sent,
        human_bytes(b.block_bytes_sent)
    );
    let _ = write!(
        h,
        "<h2>Recent transfers</h2><p class=\"muted\">Runs of blocks to or from one peer; the last \
{} are kept.</p>",
        crate::bitswap::TRANSFERS_KEPT
    );
    if net.transfers.is_empty() {
        h.push_str("<p id=\"transfers-none\">none yet</p></section>\n");
        return;
    }
    h.push_str(
        "<table id=\"transfers\"><tr><th>When</th><th>Way</th><th>Peer</th><th>First block</th>\
<th>Blocks</th><th>Bytes</th></tr>",
    );
    for t in &net.transfers {
        transfer_row(h, t, now);
    }
    h.push_str("</table></section>\n");
}

fn transfer_row(h: &mut String, t: &Transfer, now: SystemTime) {
    let way = match t.direction {
        Direction::In => "in",
        Direction::Out => "out",
    };
    let _ = write!(
        h,
        "<tr class=\"transfer\" data-way=\"{way}\"><td>{}</td><td>{way}</td><td class=\"mono\">{}</td>\
<td class=\"mono\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        ago(now, unix_secs(t.last)),
        escape(&t.peer.to_string()),
        escape(&t.first.to_string()),
        t.blocks,
        t.bytes
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_is_escaped() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        let snapshot = Snapshot {
            peers: vec![PeerInfo {
                peer_id: libp2p::PeerId::random(),
                addrs: Vec::new(),
                agent: Some("<img src=x onerror=alert(1)>".into()),
                protocols: Vec::new(),
            }],
            lists: vec![ListSummary {
                name: "a\"<b>".into(),
                cid: cid::Cid::try_from("bafkqaaa").expect("cid"),
                revision: None,
                total: 1,
                ok: 0,
                bytes: 0,
                failures: [("<x>".to_string(), 1)].into_iter().collect(),
                skips: Default::default(),
                last_attempt: 0,
            }],
            ..Snapshot::default()
        };
        let page = render(&snapshot, SystemTime::now());
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>\""), "{page}");
        assert!(!page.contains("<x>"), "{page}");
        assert!(page.contains("&lt;img src=x"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
