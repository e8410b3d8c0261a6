//! Every class of malformed NAR gets its own precise error, from the reader
//! and from the importer, and the importer writes no path-info for it.

use ipnix_bridge::nar::{validate, NameError, NarError, MAX_DEPTH};
use ipnix_bridge::{import_nar, ImportError, PathMeta};
use ipnix_store::MemoryBlocks;

/// Builds NARs token by token, including broken ones.
#[derive(Default)]
struct Nar(Vec<u8>);

impl Nar {
    fn new() -> Self {
        Nar::default().s(b"nix-archive-1")
    }
    fn s(mut self, token: &[u8]) -> Self {
        self.0
            .extend_from_slice(&(token.len() as u64).to_le_bytes());
        self.0.extend_from_slice(token);
        self.0.resize(self.0.len().div_ceil(8) * 8, 0);
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn file(self, contents: &[u8]) -> Self {
        self.s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"contents")
            .s(contents)
            .s(b")")
    }
    fn dir(self) -> Self {
        self.s(b"(").s(b"type").s(b"directory")
    }
    fn entry_file(self, name: &[u8]) -> Self {
        self.s(b"entry")
            .s(b"(")
            .s(b"name")
            .s(name)
            .s(b"node")
            .file(b"x")
            .s(b")")
    }
    fn end(self) -> Self {
        self.s(b")")
    }
}

fn err(nar: &Nar) -> NarError {
    validate(nar.0.as_slice()).expect_err("must be refused")
}

fn import_err(nar: &Nar) -> ImportError {
    let mut blocks = MemoryBlocks::new();
    let e = import_nar(
        &mut blocks,
        nar.0.as_slice(),
        PathMeta::new("/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-bad"),
    )
    .expect_err("must be refused");
    assert!(blocks
        .iter()
        .all(|(cid, _)| cid.codec() != ipnix_store::block::DAG_CBOR));
    e
}

#[test]
fn valid_baseline_passes() {
    let nar = Nar::new().dir().entry_file(b"a").entry_file(b"b").end();
    validate(nar.0.as_slice()).expect("valid");
}

#[test]
fn bad_magic() {
    assert!(matches!(
        err(&Nar::default().s(b"nix-archive-2").file(b"")),
        NarError::BadMagic
    ));
    assert!(matches!(
        err(&Nar::default().raw(b"garbage!garbage!garbage!")),
        NarError::BadMagic
    ));
    assert!(matches!(err(&Nar::default()), NarError::BadMagic));
}

#[test]
fn bad_tokens() {
    let e = err(&Nar::new().s(b"(").s(b"type").s(b"fifo").s(b")"));
    assert!(
        matches!(e, NarError::UnexpectedToken { expected, ref found, .. } if expected.contains("regular") && found == "fifo"),
        "{e}"
    );
    let e = err(&Nar::new().s(b"[").s(b"type"));
    assert!(
        matches!(e, NarError::UnexpectedToken { offset: 24, .. }),
        "{e}"
    );
    let e = err(&Nar::new()
        .s(b"(")
        .s(b"type")
        .s(b"regular")
        .s(b"executable")
        .s(b"x"));
    assert!(matches!(e, NarError::UnexpectedToken { .. }), "{e}");
    let e = err(&Nar::new().dir().s(b"entri"));
    assert!(matches!(e, NarError::UnexpectedToken { .. }), "{e}");
    // A token longer than any keyword is refused before it is read.
    let e = err(&Nar::new().raw(&u64::MAX.to_le_bytes()));
    assert!(matches!(e, NarError::TooLong { len: u64::MAX, .. }), "{e}");
}

#[test]
fn unsorted_and_duplicate_entries() {
    let e = err(&Nar::new().dir().entry_file(b"b").entry_file(b"a").end());
    assert!(
        matches!(e, NarError::Unsorted { ref previous, ref name, .. } if previous == "b" && name == "a"),
        "{e}"
    );
    let e = err(&Nar::new().dir().entry_file(b"a").entry_file(b"a").end());
    assert!(
        matches!(e, NarError::Duplicate { ref name, .. } if name == "a"),
        "{e}"
    );
    assert!(matches!(
        import_err(&Nar::new().dir().entry_file(b"a").entry_file(b"a").end()),
        ImportError::Nar(NarError::Duplicate { .. })
    ));
}

#[test]
fn bad_names() {
    for (name, reason) in [
        (&b""[..], NameError::Empty),
        (b".", NameError::Dot),
        (b"..", NameError::DotDot),
        (b"a/b", NameError::Slash),
        (b"/", NameError::Slash),
        (b"a\0b", NameError::Nul),
    ] {
        let e = err(&Nar::new().dir().entry_file(name).end());
        assert!(
            matches!(e, NarError::BadName { reason: r, .. } if r == reason),
            "{name:?}: {e}"
        );
        assert!(matches!(
            import_err(&Nar::new().dir().entry_file(name).end()),
            ImportError::Nar(NarError::BadName { .. })
        ));
    }
    let long = vec![b'n'; 256];
    let e = err(&Nar::new().dir().entry_file(&long).end());
    assert!(matches!(e, NarError::TooLong { len: 256, .. }), "{e}");
}

#[test]
fn non_zero_padding() {
    let mut nar = Nar::new().file(b"abc");
    // The 5 padding bytes after "abc" sit just before the closing `)` token (16 bytes).
    let pos = nar.0.len() - 16 - 5;
    nar.0[pos] = 1;
    let e = err(&nar);
    assert!(
        matches!(e, NarError::NonZeroPadding { offset } if offset == pos as u64),
        "{e}"
    );
    // Padding of a token.
    let mut nar = Nar::new().dir().entry_file(b"abc").end();
    let pos = nar.0.windows(3).position(|w| w == b"abc").expect("name") + 3;
    nar.0[pos] = 7;
    assert!(matches!(err(&nar), NarError::NonZeroPadding { .. }));
}

#[test]
fn lengths_beyond_the_input() {
    let full = Nar::new().file(b"0123456789abcdef");
    for cut in [30, full.0.len() - 9, full.0.len() - 1] {
        let e = validate(&full.0[..cut]).expect_err("truncated");
        assert!(matches!(e, NarError::Truncated { .. }), "cut {cut}: {e}");
    }
    // A file claiming far more bytes than the input has.
    let e = err(&Nar::new()
        .s(b"(")
        .s(b"type")
        .s(b"regular")
        .s(b"contents")
        .raw(&(1u64 << 40).to_le_bytes())
        .raw(b"short"));
    assert!(matches!(e, NarError::Truncated { .. }), "{e}");
    let e = import_err(
        &Nar::new()
            .s(b"(")
            .s(b"type")
            .s(b"regular")
            .s(b"contents")
            .raw(&(5u64 << 20).to_le_bytes())
            .raw(&[0u8; 4096]),
    );
    assert!(
        matches!(e, ImportError::Nar(NarError::Truncated { .. })),
        "{e}"
    );
}

#[test]
fn trailing_garbage() {
    let e = err(&Nar::new().file(b"x").raw(b"\0"));
    assert!(matches!(e, NarError::TrailingData { .. }), "{e}");
    let e = err(&Nar::new().file(b"x").file(b"y"));
    assert!(matches!(e, NarError::TrailingData { .. }), "{e}");
}

#[test]
fn absurd_nesting_depth() {
    let mut nar = Nar::new();
    for _ in 0..=MAX_DEPTH {
        nar = nar.dir().s(b"entry").s(b"(").s(b"name").s(b"d").s(b"node");
    }
    let e = err(&nar);
    assert!(
        matches!(e, NarError::TooDeep { max, .. } if max == MAX_DEPTH),
        "{e}"
    );
}

#[test]
fn bad_symlink_targets() {
    let link = |t: &[u8]| {
        Nar::new()
            .s(b"(")
            .s(b"type")
            .s(b"symlink")
            .s(b"target")
            .s(t)
            .s(b")")
    };
    assert!(matches!(err(&link(b"")), NarError::BadTarget { .. }));
    assert!(matches!(err(&link(b"a\0b")), NarError::BadTarget { .. }));
    assert!(matches!(
        err(&link(&[b'x'; 5000])),
        NarError::TooLong { .. }
    ));
}
