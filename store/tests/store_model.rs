//! Property test: random sequences of put / get / delete / pin / unpin / gc /
//! sessions / reopen against a plain in-memory model of what the store must
//! hold. The block pool mixes inline and packed raw leaves (around the 16 KiB
//! boundary) with dag-cbor and dag-pb nodes linking them.

use ipld_core::ipld::Ipld;
use ipld_dagpb::{PbLink, PbNode};
use ipnix_store::block::{cid_for, DAG_CBOR, DAG_PB, RAW};
use ipnix_store::{Cid, PinMode, Store, StoreError, INLINE_LIMIT};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::OnceLock;

struct PoolBlock {
    cid: Cid,
    data: Vec<u8>,
    links: Vec<usize>,
}

fn raw_leaf(seed: u8, len: usize) -> PoolBlock {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed))
        .collect();
    PoolBlock {
        cid: cid_for(RAW, &data),
        data,
        links: vec![],
    }
}

fn cbor(pool: &[PoolBlock], links: &[usize], pad: usize) -> PoolBlock {
    let mut map = BTreeMap::new();
    map.insert(
        "l".to_string(),
        Ipld::List(links.iter().map(|&i| Ipld::Link(pool[i].cid)).collect()),
    );
    map.insert("pad".to_string(), Ipld::Bytes(vec![1; pad]));
    let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encodable");
    PoolBlock {
        cid: cid_for(DAG_CBOR, &data),
        data,
        links: links.to_vec(),
    }
}

fn pb(pool: &[PoolBlock], links: &[usize]) -> PoolBlock {
    let data = PbNode {
        links: links
            .iter()
            .map(|&i| PbLink {
                cid: pool[i].cid,
                name: Some(format!("{i}")),
                size: Some(pool[i].data.len() as u64),
            })
            .collect(),
        data: Some(vec![8u8, 1].into()),
    }
    .into_bytes();
    PoolBlock {
        cid: cid_for(DAG_PB, &data),
        data,
        links: links.to_vec(),
    }
}

fn pool() -> &'static [PoolBlock] {
    static POOL: OnceLock<Vec<PoolBlock>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = vec![
            raw_leaf(1, 10),
            raw_leaf(2, INLINE_LIMIT),
            raw_leaf(3, INLINE_LIMIT + 1),
            raw_leaf(4, 40_000),
            raw_leaf(5, 3000),
            raw_leaf(6, 0),
        ];
        pool.push(cbor(&pool, &[0, 1], 0)); // 6
        pool.push(cbor(&pool, &[2, 3], 0)); // 7
        pool.push(pb(&pool, &[6, 4])); // 8
        pool.push(cbor(&pool, &[8, 7, 5], 0)); // 9
        pool.push(cbor(&pool, &[9, 3], 20_000)); // 10: a packed node
        pool.push(cbor(&pool, &[], 0)); // 11
        pool
    })
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize),
    Get(usize),
    Delete(usize),
    PinRecursive(usize),
    PinDirect(usize),
    Unpin(usize),
    Gc,
    Reopen,
    Session {
        puts: Vec<usize>,
        pin: Option<usize>,
        abandon: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let n = pool().len();
    prop_oneof![
        4 => (0..n).prop_map(Op::Put),
        2 => (0..n).prop_map(Op::Get),
        2 => (0..n).prop_map(Op::Delete),
        2 => (0..n).prop_map(Op::PinRecursive),
        1 => (0..n).prop_map(Op::PinDirect),
        2 => (0..n).prop_map(Op::Unpin),
        2 => Just(Op::Gc),
        1 => Just(Op::Reopen),
        2 => (
            proptest::collection::vec(0..n, 0..6),
            proptest::option::of(0..n),
            proptest::bool::weighted(0.2)
        )
            .prop_map(|(puts, pin, abandon)| Op::Session { puts, pin, abandon }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    stored: BTreeSet<usize>,
    pins: BTreeMap<usize, PinMode>,
}

impl Model {
    /// Blocks reachable from `root` through stored blocks; `None` if one is
    /// missing.
    fn dag(&self, root: usize, stored: &BTreeSet<usize>) -> Option<HashSet<usize>> {
        let mut seen = HashSet::from([root]);
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            if !stored.contains(&i) {
                return None;
            }
            for &link in &pool()[i].links {
                if seen.insert(link) {
                    stack.push(link);
                }
            }
        }
        Some(seen)
    }

    fn live(&self) -> HashSet<usize> {
        let mut live = HashSet::new();
        let mut stack = Vec::new();
        for (&i, mode) in &self.pins {
            live.insert(i);
            if *mode == PinMode::Recursive {
                stack.push(i);
            }
        }
        let mut walked = HashSet::new();
        while let Some(i) = stack.pop() {
            if !walked.insert(i) || !self.stored.contains(&i) {
                continue;
            }
            for &link in &pool()[i].links {
                live.insert(link);
                stack.push(link);
            }
        }
        live
    }
}

fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let cids: BTreeSet<Cid> = store.cids().expect("cids").into_iter().collect();
    let expected: BTreeSet<Cid> = model.stored.iter().map(|&i| pool()[i].cid).collect();
    prop_assert_eq!(&cids, &expected);
    let stat = store.stat().expect("stat");
    let sizes: Vec<usize> = model.stored.iter().map(|&i| pool()[i].data.len()).collect();
    prop_assert_eq!(stat.blocks, sizes.len() as u64);
    prop_assert_eq!(stat.block_bytes, sizes.iter().sum::<usize>() as u64);
    prop_assert_eq!(
        stat.inline_blocks,
        sizes.iter().filter(|&&s| s <= INLINE_LIMIT).count() as u64
    );
    prop_assert_eq!(stat.temp_pins, 0);
    let pins: BTreeMap<Cid, PinMode> = store
        .pins()
        .expect("pins")
        .into_iter()
        .map(|p| (p.cid, p.mode))
        .collect();
    let expected: BTreeMap<Cid, PinMode> = model
        .pins
        .iter()
        .map(|(&i, &m)| (pool()[i].cid, m))
        .collect();
    prop_assert_eq!(pins, expected);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(dir.path()).expect("open");
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Put(i) => {
                let block = &pool()[i];
                let new = store.put(&block.cid, &block.data).expect("put");
                prop_assert_eq!(new, model.stored.insert(i));
            }
            Op::Get(i) => {
                let block = &pool()[i];
                let got = store.get(&block.cid).expect("get");
                let expected = model.stored.contains(&i).then_some(block.data.as_slice());
                prop_assert_eq!(got.as_deref(), expected);
            }
            Op::Delete(i) => match store.delete(&pool()[i].cid) {
                Err(StoreError::Pinned(_)) => prop_assert!(model.pins.contains_key(&i)),
                Ok(removed) => {
                    prop_assert!(!model.pins.contains_key(&i));
                    prop_assert_eq!(removed, model.stored.remove(&i));
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            },
            Op::PinRecursive(i) => {
                let result = store.pin(&pool()[i].cid, PinMode::Recursive, None);
                let complete = model.dag(i, &model.stored).is_some();
                prop_assert_eq!(result.is_ok(), complete, "{:?}", result);
                if complete {
                    model.pins.insert(i, PinMode::Recursive);
                } else {
                    prop_assert!(matches!(result, Err(StoreError::Missing(_))));
                }
            }
            Op::PinDirect(i) => {
                let result = store.pin(&pool()[i].cid, PinMode::Direct, Some("d"));
                prop_assert_eq!(result.is_ok(), model.stored.contains(&i));
                if result.is_ok() {
                    model.pins.insert(i, PinMode::Direct);
                }
            }
            Op::Unpin(i) => {
                let removed = store.unpin(&pool()[i].cid).expect("unpin");
                prop_assert_eq!(removed, model.pins.remove(&i).is_some());
            }
            Op::Gc => {
                let stats = store.gc().expect("gc");
                let live = model.live();
                let before = model.stored.len();
                model.stored.retain(|i| live.contains(i));
                prop_assert_eq!(stats.blocks_removed, (before - model.stored.len()) as u64);
            }
            Op::Reopen => {
                drop(store);
                store = Store::open(dir.path()).expect("reopen");
            }
            Op::Session { puts, pin, abandon } => {
                let mut session = store.session();
                let mut after = model.stored.clone();
                for &i in &puts {
                    let block = &pool()[i];
                    let new = session.put(block.cid, &block.data).expect("session put");
                    prop_assert_eq!(new, after.insert(i));
                }
                if abandon {
                    drop(session);
                } else {
                    let pin_arg = pin.map(|i| (pool()[i].cid, PinMode::Recursive, None));
                    let result = session.finish(pin_arg);
                    let complete = pin.is_none_or(|i| model.dag(i, &after).is_some());
                    prop_assert_eq!(result.is_ok(), complete, "{:?}", result);
                    if complete {
                        model.stored = after;
                        if let Some(i) = pin {
                            model.pins.insert(i, PinMode::Recursive);
                        }
                    }
                }
            }
        }
        check(&store, &model)?;
    }
    // Whatever happened, a final GC leaves exactly the live blocks, readable.
    store.gc().expect("final gc");
    let live = model.live();
    model.stored.retain(|i| live.contains(i));
    check(&store, &model)?;
    for &i in &model.stored {
        let block = &pool()[i];
        let got = store.get(&block.cid).expect("get");
        prop_assert_eq!(got.as_deref(), Some(block.data.as_slice()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
