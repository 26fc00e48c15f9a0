//! Scenario tests with wire bytes built here (a tiny HPACK encoder: literals, incremental
//! indexing and indexed references), each fed whole, byte by byte and at fixed splits.
use super::*;

const C: Side = Side::Client;
const S: Side = Side::Server;

fn frame(t: u8, flags: u8, sid: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut v = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, t, flags];
    v.extend(sid.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// HPACK literal with incremental indexing, new name (no Huffman).
fn lit(out: &mut Vec<u8>, n: &str, v: &str) {
    out.push(0x40);
    out.push(n.len() as u8);
    out.extend(n.as_bytes());
    out.push(v.len() as u8);
    out.extend(v.as_bytes());
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        lit(&mut b, n, v);
    }
    b
}

fn headers(sid: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
    frame(HEADERS, flags, sid, &block(fields))
}

fn data(sid: u32, payload: &[u8], end_stream: bool) -> Vec<u8> {
    frame(
        DATA,
        if end_stream { FLAG_END_STREAM } else { 0 },
        sid,
        payload,
    )
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[])
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "https".into()),
        (":authority", "example.com".into()),
        (":path", path.into()),
    ]
}

fn req_headers(sid: u32, path: &str, es: bool) -> Vec<u8> {
    let f = get(path);
    let f: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers(sid, &f, es)
}

type Steps = Vec<(Option<Side>, Vec<u8>, u64)>;

fn run(steps: &Steps, mode: usize, midstream: bool) -> (Vec<Event>, Vec<(&'static str, u64)>) {
    let mut p = Http2Parser::new(1 << 20, midstream);
    let mut evs = Vec::new();
    for (side, bytes, ts) in steps {
        match side {
            Some(s) => {
                let step = match mode {
                    0 => bytes.len().max(1),
                    1 => 1,
                    m => m,
                };
                for piece in bytes.chunks(step) {
                    p.feed(*s, piece, *ts);
                }
            }
            None => p.close(*ts),
        }
        while let Some(e) = p.next_event() {
            evs.push(e);
        }
    }
    (evs, p.stats())
}

fn three_ways(steps: &Steps, midstream: bool) -> Vec<Event> {
    let (whole, _) = run(steps, 0, midstream);
    for mode in [1, 2, 3, 7, 10, 64] {
        assert_eq!(run(steps, mode, midstream).0, whole, "split {mode}");
    }
    whole
}

fn txs(evs: &[Event]) -> Vec<&Transaction> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Transaction(t) => Some(&**t),
            _ => None,
        })
        .collect()
}

fn start() -> Steps {
    let mut c = PREFACE.to_vec();
    c.extend(settings());
    vec![(Some(C), c, 1), (Some(S), settings(), 2)]
}

#[test]
fn simple_get_with_body() {
    let mut steps = start();
    steps.push((Some(C), req_headers(1, "/x", true), 10));
    let mut s = headers(
        1,
        &[(":status", "200"), ("content-type", "text/plain")],
        false,
    );
    s.extend(data(1, b"hello", true));
    steps.push((Some(S), s, 20));
    let evs = three_ways(&steps, false);
    let t = txs(&evs);
    assert_eq!(t.len(), 1);
    let tx = t[0];
    assert_eq!(tx.request.method.as_deref(), Some(&b"GET"[..]));
    assert_eq!(tx.request.target.as_deref(), Some(&b"/x"[..]));
    assert_eq!(tx.request.authority.as_deref(), Some(&b"example.com"[..]));
    let resp = tx.response.as_ref().unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (Some(200), &b"hello"[..])
    );
    assert_eq!((tx.start_ns, tx.end_ns, tx.headers_known), (10, 20, true));
}

#[test]
fn dynamic_table_references_across_streams() {
    let mut steps = start();
    steps.push((Some(C), req_headers(1, "/a", true), 10));
    // Stream 3 re-uses the four entries stream 1 inserted (62..65, newest first).
    steps.push((
        Some(C),
        frame(HEADERS, 5, 3, &[0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62]),
        11,
    ));
    steps.push((Some(S), headers(1, &[(":status", "204")], true), 20));
    steps.push((Some(S), frame(HEADERS, 5, 3, &[0x80 | 62]), 21));
    let evs = three_ways(&steps, false);
    let t = txs(&evs);
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].request.target.as_deref(), Some(&b"/a"[..]));
    assert_eq!(t[1].response.as_ref().unwrap().status, Some(204));
}

#[test]
fn grpc_call_counts_messages() {
    let mut steps = start();
    let mut c = headers(
        1,
        &[
            (":method", "POST"),
            (":path", "/pkg.Svc/Do"),
            ("content-type", "application/grpc"),
        ],
        false,
    );
    c.extend(data(1, &[0, 0, 0, 0, 2, 8, 1], true));
    steps.push((Some(C), c, 10));
    let mut s = headers(
        1,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    );
    s.extend(data(1, &[0, 0, 0, 0, 1, 9, 0, 0, 0, 0, 0], false));
    s.extend(headers(
        1,
        &[("grpc-status", "5"), ("grpc-message", "not%20found")],
        true,
    ));
    steps.push((Some(S), s, 20));
    let evs = three_ways(&steps, false);
    let g = txs(&evs)[0].grpc.clone().unwrap();
    assert_eq!(g.service.as_deref(), Some("pkg.Svc"));
    assert_eq!(g.method.as_deref(), Some("Do"));
    assert_eq!(
        (g.status_code, g.status_message.as_deref()),
        (Some(5), Some("not found"))
    );
    assert_eq!((g.request_messages, g.response_messages), (1, 2));
    assert_eq!((g.request_bytes, g.response_bytes), (2, 1));
}

#[test]
fn streams_are_bounded_and_evictions_counted() {
    let mut p = Http2Parser::with_max_streams(1024, false, 4);
    let mut c = PREFACE.to_vec();
    for k in 0..10u32 {
        c.extend(req_headers(2 * k + 1, "/", false));
    }
    p.feed(C, &c, 1);
    assert_eq!(p.streams.len(), 4);
    let stats: std::collections::HashMap<_, _> = p.stats().into_iter().collect();
    assert_eq!(stats["streams_evicted"], 6);
    let mut n = 0;
    while let Some(Event::Transaction(t)) = p.next_event() {
        assert_eq!(t.error.as_deref(), Some("too many open streams"));
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn continuation_flood_is_capped_and_other_streams_still_parse() {
    let mut p = Http2Parser::new(1024, false);
    let mut c = PREFACE.to_vec();
    c.extend(frame(SETTINGS, 0, 0, &[]));
    p.feed(C, &c, 1);
    // A server that allows 16 MiB frames; the client floods one header block.
    p.feed(S, &frame(SETTINGS, 0, 0, &[0, 5, 0, 0xff, 0xff, 0xff]), 2);
    p.feed(C, &frame(HEADERS, 0, 1, &block(&[(":method", "GET")])), 3);
    let chunk = vec![0x20u8; 16384]; // size updates to 0: valid, tiny, endless
    for _ in 0..100 {
        p.feed(C, &frame(CONTINUATION, 0, 1, &chunk), 4);
    }
    assert!(p.dirs[0].block.is_none());
    p.feed(C, &frame(CONTINUATION, FLAG_END_HEADERS, 1, &[0x20]), 4);
    assert!(p.dirs[0].discarding.is_none());
    let stats: std::collections::HashMap<_, _> = p.stats().into_iter().collect();
    assert_eq!(stats["oversized_header_blocks"], 1);
    assert_eq!(stats["parse_errors"], 1);
    // A later stream still works (HPACK state lost, but these literals need none).
    p.feed(C, &req_headers(3, "/ok", true), 5);
    p.feed(S, &headers(3, &[(":status", "200")], true), 6);
    let mut got = Vec::new();
    while let Some(e) = p.next_event() {
        got.push(e);
    }
    let t = txs(&got);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].request.target.as_deref(), Some(&b"/ok"[..]));
    // A single huge HEADERS frame is skipped, not buffered.
    let mut huge = vec![0u8; 9];
    let n = 4 << 20;
    huge[..3].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    huge[3] = HEADERS;
    huge[4] = FLAG_END_HEADERS;
    huge[8] = 5;
    p.feed(C, &huge, 7);
    for _ in 0..(n / 65536) {
        p.feed(C, &[0x20u8; 65536], 8);
        assert!(p.dirs[0].inp.buf.len() <= 65536 + 9);
    }
    assert_eq!(p.dirs[0].state, Reader::Frame);
}

#[test]
fn huge_header_table_size_is_capped_then_partial() {
    let mut p = Http2Parser::new(1024, false);
    let mut c = PREFACE.to_vec();
    c.extend(settings());
    p.feed(C, &c, 1);
    // The server lets the client's encoder use a 1 GiB table; the client does.
    p.feed(S, &frame(SETTINGS, 0, 0, &[0, 1, 0x40, 0, 0, 0]), 2);
    let mut b = vec![0x3f, 0xe1, 0xff, 0xff, 0xff, 0x03]; // size update ~1 GiB
    lit(&mut b, ":method", "GET");
    lit(&mut b, ":path", "/big");
    p.feed(C, &frame(HEADERS, 5, 1, &b), 3);
    p.feed(S, &headers(1, &[(":status", "200")], true), 4);
    let mut got = Vec::new();
    while let Some(e) = p.next_event() {
        got.push(e);
    }
    let t = txs(&got);
    assert_eq!(t.len(), 1, "{got:?}");
    assert!(t[0].headers_known);
    let stats: std::collections::HashMap<_, _> = p.stats().into_iter().collect();
    assert_eq!(stats["hpack_table_capped"], 1);
    assert!(!p.dirs[0].dec.is_exact());
}

#[test]
fn midstream_join_hunts_frames() {
    let mut c = req_headers(3, "/mid", true);
    c.extend(frame(PING, 0, 0, &[0; 8]));
    let mut s = b"tail of something".to_vec();
    s.extend(headers(3, &[(":status", "200")], true));
    s.extend(frame(PING, 1, 0, &[0; 8]));
    let steps: Steps = vec![(Some(C), c, 10), (Some(S), s, 20)];
    let evs = three_ways(&steps, true);
    let t = txs(&evs);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].request.target.as_deref(), Some(&b"/mid"[..]));
}

#[test]
fn body_budget_is_shared_and_counted() {
    // Body limit 10 MiB: the connection may store 20 MiB; three 8 MiB bodies.
    let mut p = Http2Parser::new(10 << 20, false);
    assert_eq!(p.budget, 20 << 20);
    let mut c = PREFACE.to_vec();
    for sid in [1, 3, 5] {
        c.extend(req_headers(sid, "/", true));
    }
    p.feed(C, &c, 1);
    let chunk = vec![7u8; 16384];
    for sid in [1, 3, 5] {
        p.feed(S, &headers(sid, &[(":status", "200")], false), 2);
        for _ in 0..512 {
            p.feed(S, &data(sid, &chunk, false), 3);
        }
    }
    assert_eq!(p.used, 20 << 20);
    let stats: std::collections::HashMap<_, _> = p.stats().into_iter().collect();
    assert_eq!(stats["body_bytes_over_budget"], 4 << 20);
    for sid in [1, 3, 5] {
        p.feed(S, &data(sid, b"", true), 4);
    }
    assert_eq!(p.used, 0);
    let mut sizes = Vec::new();
    while let Some(e) = p.next_event() {
        if let Event::Transaction(t) = e {
            let r = t.response.unwrap();
            sizes.push((r.body.len(), r.body_size, r.body_truncated));
        }
    }
    assert_eq!(
        sizes,
        vec![
            (8 << 20, 8 << 20, false),
            (8 << 20, 8 << 20, false),
            (4 << 20, 8 << 20, true)
        ]
    );
}

// -- property tests: nothing panics, and feeding is split-invariant ---------------------

use proptest::prelude::*;

/// Valid conversations (client bytes, server bytes) the mutations start from: the seed
/// corpus checked in under `fuzz-corpus/http2/` (`NAME.c` / `NAME.s`, written by a real
/// HPACK encoder: Huffman strings, dynamic table) plus the ones built here. Covers
/// padding, priority, CONTINUATION, trailers, 1xx, gRPC, push, RST, GOAWAY, CONNECT
/// tunnels and dynamic-table references.
fn corpus() -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/http2");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz-corpus/http2 is checked in")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    names.sort();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .iter()
        .map(|c| {
            (
                std::fs::read(c).unwrap_or_default(),
                std::fs::read(c.with_extension("s")).unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        out.len() >= 5,
        "fuzz-corpus/http2 holds the seed conversations"
    );
    // GET with a padded, prioritised HEADERS split over CONTINUATION; padded DATA.
    let mut c = PREFACE.to_vec();
    c.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x20, 0]));
    let b = block(&[
        (":method", "GET"),
        (":path", "/x"),
        ("a", "bbbbbbbbbbbbbbbbbb"),
    ]);
    let mut first = vec![4u8, 0, 0, 0, 0, 15];
    first.extend(&b[..6]);
    first.extend([0; 4]);
    c.extend(frame(
        HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        1,
        &first,
    ));
    c.extend(frame(CONTINUATION, 0, 1, &b[6..12]));
    c.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, &b[12..]));
    c.extend(frame(HEADERS, 5, 3, &[0x80 | 64, 0x80 | 63, 0x80 | 62]));
    let mut s = settings();
    s.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
    s.extend(headers(1, &[(":status", "200"), ("c", "d")], false));
    s.extend(frame(
        DATA,
        FLAG_PADDED,
        1,
        &[3, b'b', b'o', b'd', b'y', 0, 0, 0],
    ));
    s.extend(data(1, b"", true));
    s.extend(frame(HEADERS, 5, 3, &[0x80 | 63]));
    out.push((c, s));
    // gRPC with trailers, a reset stream, a push and GOAWAY.
    let mut c = PREFACE.to_vec();
    c.extend(settings());
    let ct = ("content-type", "application/grpc");
    c.extend(headers(
        1,
        &[(":method", "POST"), (":path", "/p.S/M"), ct],
        false,
    ));
    c.extend(data(1, &[0, 0, 0, 0, 3, b'r', b'e', b'q'], true));
    c.extend(headers(
        3,
        &[(":method", "POST"), (":path", "/p.S/N"), ct],
        false,
    ));
    c.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
    let mut s = settings();
    s.extend(headers(1, &[(":status", "200"), ct], false));
    s.extend(data(1, &[0, 0, 0, 0, 4, b'r', b'e', b's', b'p'], false));
    s.extend(headers(1, &[("grpc-status", "0")], true));
    let mut pp = vec![0, 0, 0, 2];
    pp.extend(block(&[(":method", "GET"), (":path", "/push")]));
    s.extend(frame(PUSH_PROMISE, FLAG_END_HEADERS, 1, &pp));
    s.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    out.push((c, s));
    // CONNECT tunnel, window updates, pings.
    let mut c = PREFACE.to_vec();
    c.extend(settings());
    c.extend(headers(
        1,
        &[(":method", "CONNECT"), (":authority", "h:1")],
        false,
    ));
    c.extend(data(1, b"tunnel", false));
    c.extend(frame(PING, 0, 0, &[1; 8]));
    let mut s = settings();
    s.extend(headers(1, &[(":status", "200")], false));
    s.extend(data(1, b"x", true));
    s.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
    s.extend(frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 9]));
    out.push((c, s));
    out
}

#[derive(Clone, Debug)]
enum Op {
    Feed(bool, Vec<u8>),
    Gap(bool, u64),
    Close,
}

/// Drives a parser through `ops`; asserts the invariants every event must keep.
fn drive(ops: &[Op], midstream: bool, body_limit: usize) {
    let mut p = Http2Parser::new(body_limit, midstream);
    let mut ts = 0;
    for op in ops {
        ts += 1;
        match op {
            Op::Feed(client, b) => p.feed(if *client { C } else { S }, b, ts),
            Op::Gap(client, n) => p.feed_gap(if *client { C } else { S }, *n, ts),
            Op::Close => p.close(ts),
        }
        while let Some(e) = p.next_event() {
            if let Event::Transaction(t) = e {
                assert!(t.request.body.len() <= body_limit);
                assert!(t.request.body_size >= t.request.body.len() as u64);
                if let Some(r) = &t.response {
                    assert!(r.body.len() <= body_limit);
                }
            }
        }
        assert!(p.streams.len() <= MAX_STREAMS);
        assert!(p.used <= p.budget);
        for d in &p.dirs {
            assert!(d.dec.held() <= crate::hpack::TABLE_CAP);
            assert!(d
                .block
                .as_ref()
                .is_none_or(|b| b.data.len() <= MAX_HEADER_BLOCK));
        }
    }
    p.close(ts + 1);
    p.feed(C, b"after close", ts + 2);
    while p.next_event().is_some() {}
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(c, b)| Op::Feed(c, b)),
        1 => (any::<bool>(), 1u64..100).prop_map(|(c, n)| Op::Gap(c, n)),
        1 => Just(Op::Close),
    ];
    proptest::collection::vec(op, 0..12)
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Byte(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutate(data: &mut Vec<u8>, m: &Mutation) {
    if data.is_empty() {
        return;
    }
    let at = |p: usize| p % data.len();
    match m {
        Mutation::Flip(p, bit) => {
            let i = at(*p);
            data[i] ^= 1 << (bit % 8);
        }
        Mutation::Byte(p, b) => {
            let i = at(*p);
            data[i] = *b;
        }
        Mutation::Insert(p, b) => {
            let i = at(*p);
            data.splice(i..i, b.iter().copied());
        }
        Mutation::Delete(p, n) => {
            let i = at(*p);
            let j = (i + n).min(data.len());
            data.drain(i..j);
        }
        Mutation::Truncate(p) => {
            let i = at(*p);
            data.truncate(i);
        }
    }
}

fn mutation_strategy() -> impl Strategy<Value = (bool, Mutation)> {
    let m = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Delete(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ];
    (any::<bool>(), m)
}

/// Interleaves both sides' bytes as `cuts` say, with optional gaps.
fn schedule(c: &[u8], s: &[u8], cuts: &[(bool, u16, u8)]) -> Vec<Op> {
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::new();
    for &(client, n, gap) in cuts {
        let (buf, pos) = if client { (c, &mut i) } else { (s, &mut j) };
        let end = (*pos + n as usize % 64 + 1).min(buf.len());
        if *pos < end {
            ops.push(Op::Feed(client, buf[*pos..end].to_vec()));
            *pos = end;
        }
        if gap % 23 == 0 {
            ops.push(Op::Gap(client, 1 + gap as u64 % 40));
        }
    }
    ops.push(Op::Feed(true, c[i..].to_vec()));
    ops.push(Op::Feed(false, s[j..].to_vec()));
    ops
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(ops in ops_strategy(), midstream in any::<bool>()) {
        drive(&ops, midstream, 64);
    }

    #[test]
    fn mutated_corpus_never_panics(
        pick in 0usize..64,
        muts in proptest::collection::vec(mutation_strategy(), 0..5),
        cuts in proptest::collection::vec((any::<bool>(), any::<u16>(), any::<u8>()), 0..40),
        midstream in any::<bool>(),
    ) {
        let mut all = corpus();
        let (mut c, mut s) = all.swap_remove(pick % all.len());
        for (client, m) in &muts {
            mutate(if *client { &mut c } else { &mut s }, m);
        }
        drive(&schedule(&c, &s, &cuts), midstream, 64);
    }

    #[test]
    fn corpus_events_do_not_depend_on_chunking(
        pick in 0usize..64,
        splits in proptest::collection::vec(1usize..40, 1..20),
    ) {
        let mut all = corpus();
        let (c, s) = all.swap_remove(pick % all.len());
        let whole: Steps = vec![(Some(C), c.clone(), 1), (Some(S), s.clone(), 2), (None, vec![], 3)];
        let (expected, _) = run(&whole, 0, false);
        prop_assert!(!txs(&expected).is_empty());
        let mut p = Http2Parser::new(1 << 20, false);
        for (side, bytes, ts) in [(C, &c, 1), (S, &s, 2)] {
            let mut i = 0;
            let mut k = 0;
            while i < bytes.len() {
                let n = splits[k % splits.len()].min(bytes.len() - i);
                p.feed(side, &bytes[i..i + n], ts);
                i += n;
                k += 1;
            }
        }
        p.close(3);
        let mut got = Vec::new();
        while let Some(e) = p.next_event() {
            got.push(e);
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn hpack_never_panics(block in proptest::collection::vec(any::<u8>(), 0..200), exact in any::<bool>()) {
        let mut d = crate::hpack::Decoder::new(exact);
        d.set_max_allowed(1 << 30);
        let _ = d.decode(&block);
        let _ = d.decode(&block);
        prop_assert!(d.held() <= crate::hpack::TABLE_CAP);
    }
}

#[test]
fn corpus_is_clean() {
    for (k, (c, s)) in corpus().into_iter().enumerate() {
        let steps: Steps = vec![(Some(C), c, 1), (Some(S), s, 2), (None, vec![], 3)];
        let evs = three_ways(&steps, false);
        let errs: Vec<_> = evs
            .iter()
            .filter(|e| matches!(e, Event::Error(_)))
            .collect();
        assert!(errs.is_empty(), "corpus {k}: {errs:?}");
        assert!(!txs(&evs).is_empty());
    }
}
