//! `/ipnix/pathinfo/1.0.0`: asking peers "which path-info CID do you have for
//! store-path hash H?", and the DHT key under which holders of H announce
//! themselves. Also the shape every ipnix ask protocol shares ([`Question`],
//! [`Codec`], [`Response`], [`ask_behaviour`]): `/ipnix/source/1.0.0`
//! ([`crate::sourceshare`]) asks the same way with another question.
//!
//! Wire format (one request and one response per stream, as libp2p's
//! request-response does it): the request is the 32 nix32 characters of the
//! store-path hash part; the response is the binary CID of the path-info, or
//! nothing for "I don't have it". Both are read to the end of the stream with
//! a hard size cap, so a peer cannot make us buffer more than
//! [`MAX_RESPONSE_BYTES`].
//!
//! A CID from a peer is a pointer, not content: the path-info block is then
//! fetched over Bitswap (verified against the CID) and its store path checked
//! against H before anything is served; Nix checks signatures itself.

use cid::Cid;
use futures::prelude::*;
use ipnix_bridge::hash::check_hash_part;
use ipnix_store::block::{cid_for, DAG_CBOR, MAX_CID_BYTES, RAW};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::StreamProtocol;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipnix/pathinfo/1.0.0");
/// Store index namespace of store paths (owned by
/// [`ipnix_bridge::path_index`]); answers this protocol.
pub use ipnix_bridge::path_index::NAMESPACE as PATH_INDEX;
/// A hash part is 32 characters; anything longer is not a request.
const MAX_REQUEST_BYTES: usize = 32;
/// The longest CID the store accepts.
pub const MAX_RESPONSE_BYTES: usize = MAX_CID_BYTES;
/// What the DHT provider key of a hash part is derived from.
const KEY_DOMAIN: &[u8] = b"/ipnix/pathinfo/1.0.0/";
/// How long one request may take before it counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams of this protocol open at once per connection.
const MAX_CONCURRENT_STREAMS: usize = 64;

/// What a peer asked or answered.
pub type Behaviour = request_response::Behaviour<Codec<Request>>;
pub type Event = request_response::Event<Request, Response>;

/// The question of an ask protocol: a short message with a hard size cap,
/// parsed (and so checked) before anything looks it up.
pub trait Question: Sized + Send + 'static {
    /// The longest request body; longer is not a request.
    const MAX_BYTES: usize;
    /// Parses a request body.
    fn parse(data: &[u8]) -> Result<Self, String>;
    /// The request body.
    fn to_wire(&self) -> Vec<u8>;
}

/// "Which path-info do you have for this store-path hash part?"
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub hash_part: String,
}

/// The path-info CID, if the peer has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub pathinfo: Option<Cid>,
}

impl Question for Request {
    const MAX_BYTES: usize = MAX_REQUEST_BYTES;

    fn parse(data: &[u8]) -> Result<Self, String> {
        parse_request(data)
    }

    fn to_wire(&self) -> Vec<u8> {
        self.hash_part.as_bytes().to_vec()
    }
}

/// The request-response behaviour for this protocol, asking and answering.
pub fn behaviour() -> Behaviour {
    ask_behaviour(PROTOCOL)
}

/// A request-response behaviour for an ask protocol whose answer is a
/// path-info CID: this protocol's bounds and timeouts, asking and answering.
pub fn ask_behaviour<Q: Question>(
    protocol: StreamProtocol,
) -> request_response::Behaviour<Codec<Q>> {
    request_response::Behaviour::with_codec(
        Codec::default(),
        [(protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
    )
}

/// The CID whose DHT provider records say "I hold the path-info of this
/// hash part": a raw-codec CID of SHA-256 over a protocol-specific prefix
/// and the hash part, so it cannot collide with a real block's key.
pub fn provider_cid(hash_part: &str) -> Cid {
    let mut preimage = KEY_DOMAIN.to_vec();
    preimage.extend_from_slice(hash_part.as_bytes());
    cid_for(RAW, &preimage)
}

/// Reads a whole stream, refusing more than `limit` bytes.
async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut data).await?;
    if data.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message over {limit} bytes"),
        ));
    }
    Ok(data)
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// Parses a request body: a valid store-path hash part.
pub fn parse_request(data: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(data).map_err(|_| "hash part is not UTF-8".to_string())?;
    check_hash_part(text).map_err(|e| e.to_string())?;
    Ok(Request {
        hash_part: text.to_owned(),
    })
}

/// Parses a response body: empty, or a dag-cbor CID (what path-infos are).
pub fn parse_response(data: &[u8]) -> Result<Response, String> {
    if data.is_empty() {
        return Ok(Response { pathinfo: None });
    }
    let cid = Cid::try_from(data).map_err(|e| format!("not a CID: {e}"))?;
    // `Cid::try_from` ignores bytes after the CID, and the multihash crate
    // takes a hash code varint that overflows 64 bits: only canonical bytes.
    if cid.to_bytes() != data {
        return Err("not a canonical CID (trailing or overlong bytes)".into());
    }
    if cid.codec() != DAG_CBOR {
        return Err(format!("{cid} is not dag-cbor, so not a path-info"));
    }
    Ok(Response {
        pathinfo: Some(cid),
    })
}

/// The codec of an ask protocol with question `Q` (for [`PROTOCOL`]:
/// [`Request`]); the answer is always a [`Response`].
pub struct Codec<Q>(PhantomData<fn() -> Q>);

impl<Q> Default for Codec<Q> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<Q> Clone for Codec<Q> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Q> Copy for Codec<Q> {}

impl<Q> std::fmt::Debug for Codec<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec")
    }
}

impl<Q: Question> request_response::Codec for Codec<Q> {
    type Protocol = StreamProtocol;
    type Request = Q;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Q>
    where
        T: AsyncRead + Unpin + Send,
    {
        let data = read_capped(io, Q::MAX_BYTES).await?;
        Q::parse(&data).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let data = read_capped(io, MAX_RESPONSE_BYTES).await?;
        parse_response(&data).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Q,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.to_wire()).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if let Some(cid) = response.pathinfo {
            io.write_all(&cid.to_bytes()).await?;
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use request_response::Codec as _;

    const HASH: &str = "0c0nqwkbm1ng5rf7rvdmcd5pfjq5kvl7";

    #[tokio::test]
    async fn request_and_response_round_trip() {
        let mut codec = Codec::<Request>::default();
        let mut wire = Vec::new();
        codec
            .write_request(
                &PROTOCOL,
                &mut futures::io::Cursor::new(&mut wire),
                Request {
                    hash_part: HASH.into(),
                },
            )
            .await
            .expect("write");
        let request = codec
            .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&wire))
            .await
            .expect("read");
        assert_eq!(request.hash_part, HASH);

        let cid = cid_for(DAG_CBOR, b"\xa0");
        for pathinfo in [Some(cid), None] {
            let mut wire = Vec::new();
            codec
                .write_response(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(&mut wire),
                    Response { pathinfo },
                )
                .await
                .expect("write");
            let response = codec
                .read_response(&PROTOCOL, &mut futures::io::Cursor::new(&wire))
                .await
                .expect("read");
            assert_eq!(response.pathinfo, pathinfo);
        }
    }

    #[tokio::test]
    async fn oversized_and_malformed_messages_are_refused() {
        let mut codec = Codec::<Request>::default();
        let long = vec![b'a'; 4096];
        assert!(codec
            .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&long))
            .await
            .is_err());
        assert!(codec
            .read_response(&PROTOCOL, &mut futures::io::Cursor::new(&long))
            .await
            .is_err());
        for bad in [
            &b"../../etc/passwd"[..],
            b"0c0nqwkbm1ng5rf7rvdmcd5pfjq5kvlE",
            b"",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        // A raw CID is not a path-info.
        assert!(parse_response(&cid_for(RAW, b"x").to_bytes()).is_err());
        assert!(parse_response(b"\x01\x02garbage").is_err());
    }

    #[test]
    fn provider_cids_differ_per_hash_and_from_blocks() {
        let other = "1c0nqwkbm1ng5rf7rvdmcd5pfjq5kvl7";
        assert_ne!(provider_cid(HASH), provider_cid(other));
        assert_eq!(provider_cid(HASH), provider_cid(HASH));
        assert_ne!(provider_cid(HASH), cid_for(RAW, HASH.as_bytes()));
    }
}
