//! The transport stack under the swarm: TCP (optionally wrapped in a libp2p
//! private network), Noise, Yamux, and QUIC v1 (with a fix for go-libp2p's
//! one-shot streams); plus reading Kubo's `swarm.key` files.

use super::NetError;
use futures::future::Either;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent};
use libp2p::core::transport::{Boxed, OrTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{noise, quic, tcp, yamux, Multiaddr, PeerId, Transport};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Yamux streams per connection. Set so that 256 KiB (yamux's initial window)
/// times this equals yamux's 1 GiB connection budget, leaving nothing for
/// window auto-tuning: every stream's receive window stays at 256 KiB.
/// Why: js-yamux 8 (Helia) sends data frames as large as the window it was
/// granted, while rust-yamux refuses frames over 1 MiB and kills the whole
/// connection ("FrameTooLarge"); grown windows broke Helia -> ipnix transfers.
const MAX_YAMUX_STREAMS: usize = 4096;
/// Unacknowledged bytes QUIC lets a peer send on one stream / one connection:
/// large enough for several 2 MiB blocks in flight on a loopback or LAN path.
const QUIC_MAX_STREAM_DATA: u32 = 16 * 1024 * 1024;
const QUIC_MAX_CONNECTION_DATA: u32 = 32 * 1024 * 1024;

/// Whether `addr` is a QUIC address (the rest of the node's transports are TCP).
pub(crate) fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

/// Which transports a node ends up with (QUIC is dropped in a private network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transports {
    pub quic: bool,
}

/// Builds the boxed transport. `dns` resolves `/dns*` and `/dnsaddr` addresses
/// and is only switched on for the public network.
pub(crate) fn build(
    keypair: &Keypair,
    swarm_key: Option<PreSharedKey>,
    dns: bool,
) -> Result<(Boxed<(PeerId, StreamMuxerBox)>, Transports), NetError> {
    let noise = noise::Config::new(keypair).map_err(|e| NetError::Transport(e.to_string()))?;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(MAX_YAMUX_STREAMS);
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));

    let tcp = match swarm_key {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };

    let quic_enabled = swarm_key.is_none();
    if !quic_enabled {
        tracing::info!(
            "private network (swarm key {}): QUIC is off, libp2p pnet only protects TCP",
            swarm_key
                .map(|k| k.fingerprint().to_string())
                .unwrap_or_default()
        );
    }
    let transport = if quic_enabled {
        let mut config = quic::Config::new(keypair);
        config.max_stream_data = QUIC_MAX_STREAM_DATA;
        config.max_connection_data = QUIC_MAX_CONNECTION_DATA;
        let quic = quic::tokio::Transport::new(config)
            .map(|(peer, conn), _| (peer, StreamMuxerBox::new(StopTolerant(conn))));
        OrTransport::new(quic, tcp)
            .map(|either, _| match either {
                Either::Left(out) | Either::Right(out) => out,
            })
            .boxed()
    } else {
        tcp
    };

    let transport = if dns {
        libp2p::dns::tokio::Transport::system(transport)
            .map_err(|e| NetError::Transport(format!("DNS resolver: {e}")))?
            .boxed()
    } else {
        transport
    };
    Ok((transport, Transports { quic: quic_enabled }))
}

/// QUIC muxer wrapper for go-libp2p peers: Kubo sends a one-shot message
/// (e.g. the Bitswap blocks it serves) by opening a stream, writing protocol
/// and message at once, and closing it both ways, which on QUIC includes
/// STOP_SENDING. rust-libp2p's multistream listener then fails to write its
/// confirmation and drops the stream, message and all, though every byte of
/// it has arrived. On streams the *remote* opened, writes after the remote
/// stopped reading are therefore discarded instead of failing: it said it
/// will not read them, and the inbound side still gets the data. Streams we
/// open keep reporting the error.
struct StopTolerant<M>(M);

impl<M> StreamMuxer for StopTolerant<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: AsyncRead + AsyncWrite + Unpin,
{
    type Substream = TolerantStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.0)
            .poll_inbound(cx)
            .map_ok(|inner| TolerantStream {
                inner,
                inbound: true,
                stopped: false,
            })
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.0)
            .poll_outbound(cx)
            .map_ok(|inner| TolerantStream {
                inner,
                inbound: false,
                stopped: false,
            })
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.0).poll(cx)
    }
}

struct TolerantStream<S> {
    inner: S,
    inbound: bool,
    /// The remote sent STOP_SENDING on this inbound stream.
    stopped: bool,
}

impl<S> TolerantStream<S> {
    /// quinn reports STOP_SENDING as `ConnectionReset` on write.
    fn absorbs(&mut self, error: &std::io::Error) -> bool {
        if self.inbound && error.kind() == std::io::ErrorKind::ConnectionReset {
            self.stopped = true;
        }
        self.stopped
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TolerantStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TolerantStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.stopped {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if self.absorbs(&e) => Poll::Ready(Ok(buf.len())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.stopped {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) if self.absorbs(&e) => Poll::Ready(Ok(())),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.stopped {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_close(cx) {
            Poll::Ready(Err(e)) if self.absorbs(&e) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

/// Parses Kubo's swarm key format:
/// `/key/swarm/psk/1.0.0/\n/base16/\n<64 hex digits>`.
pub fn parse_swarm_key(text: &str) -> Result<PreSharedKey, String> {
    // libp2p-pnet slices the key text by byte offsets and panics inside a
    // multi-byte character; a key file is ASCII anyway.
    if !text.is_ascii() {
        return Err("not ASCII (expected /key/swarm/psk/1.0.0/, /base16/, 64 hex digits)".into());
    }
    text.trim_start()
        .parse::<PreSharedKey>()
        .map_err(|e| format!("{e} (expected /key/swarm/psk/1.0.0/, /base16/, 64 hex digits)"))
}

/// Reads and parses a swarm key file (Kubo's `swarm.key`).
pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, NetError> {
    let text = std::fs::read_to_string(path).map_err(|e| NetError::SwarmKey {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_swarm_key(&text).map_err(|reason| NetError::SwarmKey {
        path: path.display().to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubo_swarm_key_parses_and_rejects_garbage() {
        let text = "/key/swarm/psk/1.0.0/\n/base16/\n\
                    1111111111111111111111111111111111111111111111111111111111111111\n";
        let key = parse_swarm_key(text).expect("kubo format");
        assert_eq!(key, PreSharedKey::new([0x11; 32]));
        assert!(parse_swarm_key("/key/swarm/psk/1.0.0/\n/base64/\nAAAA").is_err());
        assert!(parse_swarm_key("/key/swarm/psk/1.0.0/\n/base16/\n11").is_err());
        assert!(parse_swarm_key("").is_err());
        // Found by fuzzing (fuzz/regressions/swarm_key): used to panic in libp2p-pnet.
        assert!(parse_swarm_key(&text.replacen("11", "\u{39a}", 1)).is_err());
    }
}
