//! The `ipnix` command line. Every command except `init` and `daemon` runs
//! either in this process on the repo's store, or, when a daemon holds the
//! repo, inside that daemon through its control API (same code, see
//! `ipnix_node::http::api`), which also lets `cat` and `get` fetch from peers.

mod cli;

use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "ipnix",
    version,
    about = "An IPFS peer with a native Nix store bridge"
)]
pub struct Cli {
    /// Repo directory (default: $IPNIX_REPO, else $XDG_DATA_HOME/ipnix, else ~/.local/share/ipnix)
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the repo (identity key and empty store)
    Init,
    /// Run the peer: libp2p node, Bitswap, DHT, mDNS, HTTP API, gateway and Nix binary cache
    Daemon(DaemonArgs),
    /// Add a file or directory as UnixFS
    Add(AddArgs),
    /// Print a UnixFS file
    Cat { cid: String },
    /// Write a UnixFS file or directory to a path
    Get {
        cid: String,
        /// Where to write it
        #[arg(short = 'o', long = "output", value_name = "PATH")]
        output: PathBuf,
    },
    /// Raw blocks
    #[command(subcommand)]
    Block(BlockCommand),
    /// Pins keep blocks from garbage collection
    #[command(subcommand)]
    Pin(PinCommand),
    /// Remove every block not reachable from a pin
    Gc,
    /// The repo itself
    #[command(subcommand)]
    Repo(RepoCommand),
    /// DAGs as CAR files
    #[command(subcommand)]
    Dag(DagCommand),
    /// This node's peer id and addresses
    Id,
    /// Connected peers, one `/ip4/…/tcp/…/p2p/<id>` line each (needs the daemon)
    Peers,
    /// Bitswap blocks and bytes in and out, and the recent transfers (needs the daemon)
    Stats,
    /// Connect to a peer (needs the daemon)
    Connect { multiaddr: String },
    /// Announce a CID on the DHT (needs the daemon)
    Provide { cid: String },
    /// Find providers of a CID on the DHT (needs the daemon)
    Findprovs {
        cid: String,
        /// Stop after this many providers
        #[arg(short = 'n', long = "num-providers", default_value_t = 20)]
        num: usize,
    },
    /// Nix store paths as git-tree DAGs
    #[command(subcommand)]
    Nix(NixCommand),
    /// Source tarballs by content: pin nixpkgs' sources.json, serve them to Nix
    #[command(subcommand)]
    Sources(SourcesCommand),
    /// Software Heritage identifiers
    #[command(subcommand)]
    Swh(SwhCommand),
    /// The repo's settings (REPO/config, JSON), which daemon flags override
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory
    Man {
        /// Write ipnix.1, ipnix-add.1, ... into this directory
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting (defaults filled in) as JSON
    Show,
    /// Print one setting as JSON
    Get {
        /// A dotted key, e.g. Addresses.HTTP (`ipnix config keys` lists them)
        key: String,
    },
    /// Change one setting; the daemon reads it at its next start
    Set {
        /// A dotted key, e.g. Addresses.HTTP
        key: String,
        /// The value: true/false, a number, a string (`null` unsets), or for
        /// lists a JSON array or space-separated words
        value: String,
    },
    /// List the keys with what each does and the daemon flag that overrides it
    Keys,
}

#[derive(Debug, Subcommand)]
pub enum SwhCommand {
    /// Print the SWHID of a file or directory on disk (as `swh identify` does)
    #[command(after_help = "Example: ipnix swh id ./hello-2.10")]
    Id {
        /// Files or directories
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Ask Software Heritage which pinned sources it archives (POST /api/1/known/, 1000 a request)
    #[command(after_help = "Example: ipnix swh coverage nixpkgs-unstable --json")]
    Coverage {
        /// A pinned list (default: every list)
        name: Option<String>,
        #[command(flatten)]
        swh: SwhArgs,
    },
    /// Write the pinned sources Software Heritage lacks as a sources.json (version 1) its nixguix lister reads
    #[command(after_help = "Example: ipnix swh export nixpkgs-unstable -o missing.json")]
    Export {
        /// A pinned list (default: every list)
        name: Option<String>,
        /// Where to write it (default stdout)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        swh: SwhArgs,
    },
}

/// Software Heritage as the last fallback (and the API coverage asks).
#[derive(Debug, Clone, Default, Args)]
pub struct SwhArgs {
    /// Never ask Software Heritage (also: IPNIX_NO_SWH=1 unless --swh-url is given)
    #[arg(long)]
    pub no_swh: bool,
    /// Software Heritage API base URL (default https://archive.softwareheritage.org)
    #[arg(long, value_name = "URL")]
    pub swh_url: Option<String>,
    /// Send this bearer token to the SWH API (raises its rate limit); the file holds the token
    #[arg(long, value_name = "FILE")]
    pub swh_token_file: Option<PathBuf>,
    /// First wait between SWH vault polls, in milliseconds (default 5000)
    #[arg(long, value_name = "MS", hide = true)]
    pub swh_poll_ms: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Fetch, verify and pin every entry of a nixpkgs sources.json (file or URL)
    #[command(
        after_help = "Example: ipnix sources pin sources.json --name nixpkgs-unstable --jobs 8"
    )]
    Pin {
        /// sources.json: a path or an http(s) URL
        file: String,
        /// Pin name (default nixpkgs-<revision>)
        #[arg(long)]
        name: Option<String>,
        /// Entries fetched at once
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// Take entries whose fixed-output path is in the local Nix store from there first
        #[arg(long)]
        from_store: bool,
        /// Largest source accepted, in bytes (default 8 GiB)
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// Also trust this CA certificate (PEM) for HTTPS
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        #[command(flatten)]
        swh: SwhArgs,
    },
    /// Pin one source by hand: from URLs (mirrors, in order) or a local file
    #[command(
        after_help = "Example: ipnix sources add https://example.org/x-1.0.tar.gz --hash sha256-..."
    )]
    Add {
        /// Where to download it (alternatives for the same bytes)
        urls: Vec<String>,
        /// Take the bytes from this file instead of downloading
        #[arg(long, value_name = "PATH", conflicts_with = "urls")]
        file: Option<PathBuf>,
        /// Expected hash: SRI (sha256-...) or algo:digest
        #[arg(long)]
        hash: String,
        /// The hash is of the unpacked tree (fetchzip), not of the file
        #[arg(long)]
        unpack: bool,
        /// List to add it to (default "added")
        #[arg(long)]
        name: Option<String>,
        /// Also trust this CA certificate (PEM) for HTTPS
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
    },
    /// Counts per pinned list: ok, failed by reason, skipped, bytes, last attempt
    Status { name: Option<String> },
    /// One line per entry: hash, size, status, first URL, CID, store path
    Ls { name: Option<String> },
    /// Write a source by its hash (SRI, algo:digest or hex), verified
    #[command(after_help = "Example: ipnix sources get sha256-MeBmE3qW... -o hello-2.10.tar.gz")]
    Get {
        hash: String,
        /// Where to write it (must not exist)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Also trust this CA certificate (PEM) for HTTPS
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        #[command(flatten)]
        swh: SwhArgs,
    },
    /// Remove a list's pin (then `ipnix gc` frees what nothing else pins)
    Unpin { name: String },
    /// Store a tarball as its unpacked tree plus a small recipe that rebuilds it byte for byte
    #[command(after_help = "Example: ipnix sources disassemble hello-2.10.tar.gz --json")]
    Disassemble {
        /// The tarball (tar, tar.gz, tar.bz2, tar.xz, tar.zst)
        file: PathBuf,
    },
    /// Rebuild a tarball from its recipe and tree, verified before the file appears
    #[command(
        after_help = "Example: ipnix sources reassemble sha256-MeBmE3qW... -o hello-2.10.tar.gz"
    )]
    Reassemble {
        /// A recipe CID, or the tarball's hash (SRI, algo:digest, hex or nix32)
        what: String,
        /// Where to write it (must not exist)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// libp2p listen address (repeatable; default: config Addresses.Swarm, /ip4/0.0.0.0/tcp/4801 and /ip4/0.0.0.0/udp/4801/quic-v1)
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// HTTP address for the gateway, Nix binary cache, metrics and status page, and for the control API when it is loopback (default: config Addresses.HTTP, 127.0.0.1:4880)
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Do not discover LAN peers with mDNS
    #[arg(long)]
    pub no_mdns: bool,
    /// Peers to connect to at start (repeatable)
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Also join the public Amino DHT (/ipfs/kad/1.0.0) with its bootstrap peers
    #[arg(long)]
    pub public: bool,
    /// Private network: only peers holding this key (Kubo swarm.key format) connect; TCP only
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// Sign narinfos served by the binary cache with this Nix secret key (name:base64)
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// How long a narinfo or hashed-mirror request this node cannot answer waits for peers, in milliseconds (default: config Timeouts.PeerMs, 100)
    #[arg(long, value_name = "MS")]
    pub peer_timeout: Option<u64>,
    /// How long one block may take to arrive from peers before a read (cat, get, gateway, binary cache) fails, in seconds (default: config Timeouts.FetchSecs, 60)
    #[arg(long, value_name = "SECS")]
    pub fetch_timeout: Option<u64>,
    /// Control API address, loopback only (default: the --http listener when that is loopback, else 127.0.0.1 on a free port; the repo's `api` file names it)
    #[arg(long, value_name = "ADDR")]
    pub api: Option<String>,
    /// Also sign (--sign-key) paths whose upstream signature verifies against one of these keys (name:base64, as Nix's trusted-public-keys; space-separated or repeated)
    #[arg(long = "trusted-public-keys", value_name = "KEY", num_args = 1.., value_delimiter = ' ')]
    pub trusted_public_keys: Vec<String>,
    /// Read more such keys from a file (whitespace-separated; `#` starts a comment)
    #[arg(long, value_name = "FILE")]
    pub trusted_public_keys_file: Option<PathBuf>,
    /// Tell peers which Nix store paths this node holds (/ipnix/pathinfo/1.0.0 answers, DHT announcements); always on with --swarm-key
    #[arg(long)]
    pub share_paths: bool,
    /// Kubo RPC API address (/api/v0: kubo-rpc-client, ipfs-cluster), loopback only, or `off` (default 127.0.0.1:5001, Kubo's port; when that is taken the daemon starts without it and warns)
    #[arg(long, value_name = "ADDR|off")]
    pub rpc: Option<String>,
    /// Largest request body the Kubo RPC API accepts, in bytes (default 32 GiB)
    #[arg(long, value_name = "BYTES")]
    pub rpc_max_body: Option<u64>,
    /// Software Heritage for the hashed mirror and the fixed-output narinfos of pinned lists' failed entries
    #[command(flatten)]
    pub swh: SwhArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Add directories recursively
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Print only the root CID
    #[arg(short = 'Q', long)]
    pub quieter: bool,
    /// DAG layout: unixfs-v1-2025 (CIDv1, raw leaves, 1 MiB chunks) or unixfs-v0-2015 (Kubo's legacy CIDv0)
    #[arg(long, default_value = "unixfs-v1-2025")]
    pub profile: String,
    /// Pin the result (--pin=false to leave it unpinned)
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pin: bool,
    /// File or directory; `-` reads a file from stdin
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BlockCommand {
    /// Store a block read from FILE (or stdin) and print its CID
    Put {
        file: Option<PathBuf>,
        /// Codec of the block: raw, dag-pb, dag-cbor, git-raw
        #[arg(long = "cid-codec", default_value = "raw")]
        codec: String,
    },
    /// Write a block's bytes to stdout
    Get { cid: String },
    /// Size of a block
    Stat { cid: String },
    /// Delete blocks (pinned ones are refused)
    Rm {
        #[arg(required = true)]
        cids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PinCommand {
    /// Pin a DAG (recursive) or one block (--recursive=false)
    Add {
        cid: String,
        #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        recursive: bool,
        /// A name for the pin
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a pin
    Rm { cid: String },
    /// List pins
    Ls,
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Blocks, bytes and disk use
    Stat,
    /// Check the whole repo: every block against its CID, every pin's DAG
    /// complete, the block index against the pack files, running totals and
    /// the nix-path index; exits non-zero on any inconsistency
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum DagCommand {
    /// Write a CAR v1 of the DAG under CID to stdout
    Export { cid: String },
    /// Import every block of a CAR file (`-` for stdin) and pin its roots
    Import {
        file: PathBuf,
        /// Pin the roots named in the CAR header
        #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        pin_roots: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NixCommand {
    /// Import store paths as git-tree DAGs with path-info
    Import {
        /// Also import every path they reference, dependencies first
        #[arg(long)]
        closure: bool,
        /// Read narinfo and NAR from this binary cache (file:// or http://) instead of the local store
        #[arg(long, value_name = "URL")]
        from_cache: Option<String>,
        #[arg(required = true, value_name = "STOREPATH")]
        paths: Vec<String>,
    },
    /// Write a store path back as a NAR or a directory
    Export {
        /// A store path (or its hash part) or a path-info CID
        path: String,
        /// Write the NAR to this file (`-` for stdout)
        #[arg(long, value_name = "FILE", conflicts_with = "dir")]
        nar: Option<PathBuf>,
        /// Materialise the tree under this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Path-info CID, root CID, SWHID, NAR hash and size, references
    Info { path: String },
    /// Every indexed store path: status (pinned, source, unpinned, missing), path-info CID, origin
    Ls,
}

fn main() {
    std::process::exit(cli::main());
}
