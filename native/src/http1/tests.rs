//! Framing-core tests: every fixture is exact wire bytes fed three ways (whole, byte by
//! byte, at seeded random split points) with identical events required; plus a proptest
//! that mutates a checked-in seed corpus (`fuzz-corpus/http1/`) and random bytes, feeds
//! them at random splits with random gaps, and requires no panic and bounded memory.
use super::*;
use crate::model::{Event, Side};
use proptest::prelude::*;

const C: Side = Side::Client;
const S: Side = Side::Server;

#[derive(Clone, Debug)]
enum St {
    D(Side, Vec<u8>, u64),
    Gap(Side, u64, u64),
    Close(u64),
}

fn d(side: Side, b: &[u8], ts: u64) -> St {
    St::D(side, b.to_vec(), ts)
}

/// A tiny deterministic generator for split points (no dependency needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn parser(midstream: bool) -> Http1Parser {
    Http1Parser::new(Config::new(2 * 1024 * 1024), midstream)
}

fn run_mode(steps: &[St], midstream: bool, mode: u8, seed: u64) -> (Vec<Event>, Http1Parser) {
    let mut p = parser(midstream);
    let mut rng = Lcg(seed);
    let mut out = Vec::new();
    for st in steps {
        match st {
            St::D(side, data, ts) => {
                let mut i = 0;
                while i < data.len() {
                    let n = match mode {
                        0 => data.len(),
                        1 => 1,
                        _ => 1 + rng.next(data.len() - i),
                    };
                    p.feed(*side, &data[i..i + n], *ts);
                    i += n;
                }
            }
            St::Gap(side, n, ts) => p.feed_gap(*side, *n, *ts),
            St::Close(ts) => p.close(*ts),
        }
        while let Some(ev) = p.next_event() {
            out.push(ev);
        }
    }
    assert_eq!(stat(&p, "internal_errors"), 0, "{out:?}");
    (out, p)
}

/// Feed whole, byte by byte and at random splits; all must give the same events.
fn three_ways(steps: &[St], midstream: bool) -> (Vec<Event>, Http1Parser) {
    let (whole, p) = run_mode(steps, midstream, 0, 0);
    let (bytes, _) = run_mode(steps, midstream, 1, 0);
    assert_eq!(bytes, whole, "byte-at-a-time feeding gave different events");
    for seed in 1..=5 {
        let (r, _) = run_mode(steps, midstream, 2, seed);
        assert_eq!(r, whole, "random split (seed {seed}) gave different events");
    }
    (whole, p)
}

fn stat(p: &Http1Parser, name: &str) -> u64 {
    p.stats()
        .iter()
        .find(|(k, _)| *k == name)
        .map_or(u64::MAX, |(_, v)| *v)
}

fn txs(events: &[Event]) -> Vec<&Transaction> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Transaction(t) => Some(t.as_ref()),
            Event::Error(_) => None,
        })
        .collect()
}

fn errs(events: &[Event]) -> Vec<&ParseError> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(e),
            Event::Transaction(_) => None,
        })
        .collect()
}

fn targets(events: &[Event]) -> Vec<String> {
    txs(events)
        .iter()
        .map(|t| String::from_utf8_lossy(t.request.target.as_deref().unwrap_or(b"")).into_owned())
        .collect()
}

const OK0: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

#[test]
fn keep_alive_pairs_and_times() {
    let (ev, _) = three_ways(
        &[
            d(C, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", 100),
            d(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200),
            d(C, b"GET /b HTTP/1.1\r\n\r\n", 300),
            d(
                S,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                400,
            ),
        ],
        false,
    );
    let t = txs(&ev);
    assert_eq!(t.len(), 2);
    assert!(errs(&ev).is_empty());
    assert_eq!(t[0].request.authority.as_deref(), Some(&b"h"[..]));
    let r = t[0].response.as_ref().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (Some(200), &b"ok"[..]));
    assert_eq!(r.reason.as_deref(), Some(&b"OK"[..]));
    assert_eq!((t[0].start_ns, t[0].end_ns), (100, 200));
    assert_eq!(t[1].response.as_ref().unwrap().status, Some(404));
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let req = b"PUT /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                5;name=value\r\nhello\r\n6 ; q = \"a \\\" b\"\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    let (ev, _) = three_ways(&[d(C, req, 1), d(S, OK0, 2)], false);
    assert!(errs(&ev).is_empty(), "{ev:?}");
    let t = txs(&ev);
    assert_eq!(t[0].request.body, b"hello world");
    assert_eq!(
        t[0].request.trailers,
        vec![(b"X-T".to_vec(), b"1".to_vec())]
    );
}

#[test]
fn head_204_304_and_close_delimited() {
    let (ev, _) = three_ways(
        &[
            d(C, b"HEAD / HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\nGET /e HTTP/1.0\r\n\r\n", 1),
            d(S, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\
                    HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.0 200 OK\r\n\r\nto the end", 2),
            St::Close(3),
        ],
        false,
    );
    let t = txs(&ev);
    assert_eq!(t.len(), 4);
    assert_eq!(t[3].response.as_ref().unwrap().body, b"to the end");
    assert!(t[3].response.as_ref().unwrap().complete);
}

#[test]
fn connect_has_no_body_and_a_pipelined_request_after_a_refusal_is_reported() {
    let (ev, p) = three_ways(
        &[
            d(
                C,
                b"CONNECT h:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /after HTTP/1.1\r\n\r\n",
                1,
            ),
            d(
                S,
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n",
                2,
            ),
            d(S, OK0, 3),
        ],
        false,
    );
    assert!(errs(&ev).is_empty(), "{ev:?}");
    assert_eq!(targets(&ev), vec!["h:443", "/after"]);
    assert!(!p.upgraded());
}

#[test]
fn connect_2xx_switches() {
    let (ev, p) = three_ways(
        &[
            d(C, b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01", 1),
            d(
                S,
                b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03",
                2,
            ),
        ],
        false,
    );
    assert!(txs(&ev)[0].upgraded && p.upgraded());
    assert_eq!(stat(&p, "upgraded_bytes_client"), 3);
    assert_eq!(stat(&p, "upgraded_bytes_server"), 3);
}

#[test]
fn bad_request_head_stops_the_client_stream() {
    for bad in [
        &b"GET /bad path HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nA: b\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
        b"\rZGET /evil: HTTP/1.1\r\n\r\n",
    ] {
        let mut c = bad.to_vec();
        c.extend_from_slice(b"GET /x HTTP/1.1\r\n\r\nZGET /evil: HTTP/1.1\r\n\r\n");
        let (ev, p) = three_ways(
            &[
                d(C, &c, 1),
                d(S, b"HTTP/1.1 400 Bad Request\r\n\r\n", 2),
                St::Close(3),
            ],
            false,
        );
        assert!(txs(&ev).is_empty(), "{ev:?}");
        assert_eq!(errs(&ev).len(), 1);
        assert_eq!(stat(&p, "rejected_requests"), 1);
    }
}

#[test]
fn any_token_method_and_utf8_targets_are_requests() {
    let (ev, _) = three_ways(
        &[
            d(
                C,
                "FOO /x HTTP/1.1\r\n\r\nGET /caf\u{e9} HTTP/1.1\r\n\r\n".as_bytes(),
                1,
            ),
            d(
                S,
                b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n",
                2,
            ),
            d(S, OK0, 3),
        ],
        false,
    );
    assert!(errs(&ev).is_empty(), "{ev:?}");
    assert_eq!(targets(&ev), vec!["/x", "/caf\u{e9}"]);
    assert_eq!(txs(&ev)[0].request.method.as_deref(), Some(&b"FOO"[..]));
}

#[test]
fn chunk_size_lines_follow_rfc9112() {
    for (line, ok) in [
        (&b"5"[..], true),
        (b"5;a", true),
        (b"5 ;a=b", true),
        (b"5;a=\"x y\"", true),
        (b"5 ", false),
        (b"5;", false),
        (b"5;a=", false),
        (b"5;a=\"x", false),
        (b"5;a=b c", false),
        (b"0x5", false),
        (b"", false),
        (b"12345678901234567", false),
    ] {
        assert_eq!(syntax::parse_chunk_size(line).is_ok(), ok, "{line:?}");
    }
    // Bare CR / LF in a chunk line, fed three ways, on the client: rejected, nothing after.
    for body in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
        b"5;a\n=b\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
    ] {
        let mut c = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        c.extend_from_slice(body);
        c.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n\r\n");
        let (ev, p) = three_ways(&[d(C, &c, 1), d(S, OK0, 2)], false);
        assert_eq!(targets(&ev), vec!["/"], "{ev:?}");
        assert_eq!(errs(&ev).len(), 1);
        assert_eq!(stat(&p, "parse_errors"), 1);
        assert!(!txs(&ev)[0].request.complete);
    }
}

#[test]
fn hunting_after_a_gap_matches_only_at_line_or_write_starts() {
    let (ev, _) = three_ways(
        &[
            d(C, b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 1),
            St::Gap(C, 30, 2),
            d(S, OK0, 3),
            d(C, b"xGET /mid HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n", 4),
            d(S, OK0, 5),
        ],
        false,
    );
    assert_eq!(targets(&ev), vec!["/", "/y"]);
}

#[test]
fn gap_inside_body_keeps_sync() {
    let (ev, p) = three_ways(
        &[
            d(C, b"GET / HTTP/1.1\r\n\r\n", 1),
            d(S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", 2),
            St::Gap(S, 3, 3),
            d(S, b"89", 4),
            d(C, b"GET /2 HTTP/1.1\r\n\r\n", 5),
            d(S, OK0, 6),
        ],
        false,
    );
    let t = txs(&ev);
    let r = t[0].response.as_ref().unwrap();
    assert_eq!(
        (r.body.as_slice(), r.body_size, r.body_truncated),
        (&b"01234"[..], 10, true)
    );
    assert_eq!(t.len(), 2);
    assert_eq!(stat(&p, "gap_bytes"), 3);
}

#[test]
fn pipelined_exchanges_are_capped_and_counted() {
    let mut cfg = Config::new(1024);
    cfg.max_pending = 8;
    let mut p = Http1Parser::new(cfg, false);
    let mut c = Vec::new();
    for i in 0..100 {
        c.extend_from_slice(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
    }
    p.feed(C, &c, 1);
    let mut n = 0;
    while let Some(ev) = p.next_event() {
        if matches!(ev, Event::Transaction(_)) {
            n += 1;
        }
    }
    assert!(p.core.order.len() <= 8);
    assert_eq!(n, 100 - p.core.order.len());
    assert_eq!(stat(&p, "pipeline_overflows"), 1);
    assert_eq!(stat(&p, "pairing_lost"), 1);
}

#[test]
fn stored_bytes_of_waiting_exchanges_are_capped_and_counted() {
    let mut cfg = Config::new(1024);
    cfg.max_queued_bytes = 4096;
    let mut p = Http1Parser::new(cfg, false);
    for _ in 0..20 {
        p.feed(C, b"POST /u HTTP/1.1\r\nContent-Length: 1000\r\n\r\n", 1);
        p.feed(C, &[b'b'; 1000], 1);
        assert!(p.core.queued_bytes <= 4096 + 1100);
    }
    assert_eq!(stat(&p, "pipeline_overflows"), 1);
    let mut n = 0;
    while let Some(ev) = p.next_event() {
        n += usize::from(matches!(ev, Event::Transaction(_)));
    }
    p.close(2);
    while let Some(ev) = p.next_event() {
        n += usize::from(matches!(ev, Event::Transaction(_)));
    }
    assert_eq!(n, 20);
}

#[test]
fn huge_header_and_held_bytes_stay_bounded() {
    let mut p = parser(false);
    p.feed(C, b"GET / HTTP/1.1\r\n", 1);
    for _ in 0..1000 {
        p.feed(C, &[b'a'; 10_000], 1);
        assert!(p.buffered(C) < 80 * 1024);
    }
    for _ in 0..1000 {
        p.feed(S, &[b'x'; 10_000], 2);
        p.feed_gap(S, 5, 2);
        assert!(p.buffered(S) < 700 * 1024);
    }
    assert!(p.core.sides[1].inp.gap_count() <= 1025);
    assert!(stat(&p, "held_bytes_dropped") > 0);
}

#[test]
fn the_table_has_every_reachable_state() {
    let mut reached = vec![State::Idle, State::Hunt];
    loop {
        let before = reached.len();
        for (s, i) in table::STATES
            .iter()
            .flat_map(|s| table::INPUTS.iter().map(move |i| (*s, *i)))
        {
            if reached.contains(&s) {
                if let Some(n) = next_state(s, i) {
                    if !reached.contains(&n) {
                        reached.push(n);
                    }
                }
            }
        }
        if reached.len() == before {
            break;
        }
    }
    assert_eq!(reached.len(), table::STATES.len());
}

// -- fuzzing -----------------------------------------------------------------------------

fn corpus() -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/http1");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fuzz-corpus/http1 is checked in")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|c| {
            let s = c.with_extension("s");
            (
                std::fs::read(c).unwrap_or_default(),
                std::fs::read(s).unwrap_or_default(),
            )
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Feed(bool, usize),
    Gap(bool, u64),
}

fn drive(c: &[u8], s: &[u8], ops: &[Op], midstream: bool, close: bool) {
    let mut cfg = Config::new(64);
    cfg.max_pending = 4;
    let mut p = Http1Parser::new(cfg, midstream);
    let (mut ci, mut si) = (0usize, 0usize);
    let mut ts = 0;
    for op in ops {
        ts += 1;
        match op {
            Op::Feed(server, n) => {
                let (buf, i) = if *server { (s, &mut si) } else { (c, &mut ci) };
                let end = (*i + n).min(buf.len());
                p.feed(if *server { S } else { C }, &buf[*i..end], ts);
                *i = end;
            }
            Op::Gap(server, n) => p.feed_gap(if *server { S } else { C }, *n, ts),
        }
        while let Some(ev) = p.next_event() {
            if let Event::Transaction(t) = ev {
                assert!(t.request.body.len() <= 64);
                assert!(t.request.body_size >= t.request.body.len() as u64);
                if let Some(r) = &t.response {
                    assert!(r.body.len() <= 64);
                }
            }
        }
        assert!(p.buffered(C) <= 400 * 1024 && p.buffered(S) <= 400 * 1024);
    }
    p.feed(C, &c[ci..], ts + 1);
    p.feed(S, &s[si..], ts + 2);
    if close {
        p.close(ts + 3);
        p.feed(C, b"after close", ts + 4);
    }
    while p.next_event().is_some() {}
    assert_eq!(stat(&p, "internal_errors"), 0);
}

fn mutate(mut data: Vec<u8>, muts: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, at, byte) in muts {
        if data.is_empty() {
            break;
        }
        let at = at % data.len();
        match kind % 5 {
            0 => data[at] ^= 1 << (byte % 8),
            1 => data[at] = byte,
            2 => data.insert(at, byte),
            3 => {
                data.remove(at);
            }
            _ => {
                let dup: Vec<u8> = data[at..(at + byte as usize % 32).min(data.len())].to_vec();
                data.splice(at..at, dup);
            }
        }
    }
    data
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            8 => (any::<bool>(), 1usize..40).prop_map(|(s, n)| Op::Feed(s, n)),
            1 => (any::<bool>(), 1u64..100).prop_map(|(s, n)| Op::Gap(s, n)),
        ],
        0..60,
    )
}

/// 512 cases per property in `cargo test`; `PROPTEST_CASES=100000` for a deep run.
fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_corpus_never_panics(
        pick in 0usize..64,
        muts_c in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..5),
        muts_s in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..5),
        ops in ops(),
        midstream in any::<bool>(),
        close in any::<bool>(),
    ) {
        let corpus = corpus();
        let (c, s) = corpus[pick % corpus.len()].clone();
        drive(&mutate(c, &muts_c), &mutate(s, &muts_s), &ops, midstream, close);
    }

    #[test]
    fn mutated_corpus_gives_the_same_events_however_it_is_split(
        pick in 0usize..64,
        muts_c in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
        muts_s in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
        gap in prop::option::of((any::<bool>(), 1u64..50)),
        midstream in any::<bool>(),
    ) {
        let corpus = corpus();
        let (c, s) = corpus[pick % corpus.len()].clone();
        let (c, s) = (mutate(c, &muts_c), mutate(s, &muts_s));
        let (c1, c2) = c.split_at(c.len() / 2);
        let mut steps = vec![d(C, c1, 1)];
        if let Some((server, n)) = gap {
            steps.push(St::Gap(if server { S } else { C }, n, 2));
        }
        steps.extend([d(C, c2, 3), d(S, &s, 4), St::Close(5)]);
        three_ways(&steps, midstream);
    }

    #[test]
    fn random_bytes_never_panic(
        c in prop::collection::vec(any::<u8>(), 0..400),
        s in prop::collection::vec(any::<u8>(), 0..400),
        ops in ops(),
        midstream in any::<bool>(),
        close in any::<bool>(),
    ) {
        drive(&c, &s, &ops, midstream, close);
    }
}

#[test]
fn corpus_is_parsed_three_ways_without_internal_errors() {
    for (c, s) in corpus() {
        three_ways(&[d(C, &c, 1), d(S, &s, 2), St::Close(3)], false);
        three_ways(&[d(C, &c, 1), d(S, &s, 2), St::Close(3)], true);
    }
}

#[test]
fn many_small_writes_behind_one_incomplete_message_keep_marks_bounded() {
    // One byte per write, each with its own timestamp, all inside one header section that
    // stays incomplete (under the 64 KiB header limit): the bytes are bounded by that
    // limit, and the chunk timestamps by MAX_MARKS, not by the number of writes.
    let mut p = parser(false);
    p.feed(C, b"GET / HTTP/1.1\r\nX-Slow: ", 1);
    let writes = 3 * crate::input::MAX_MARKS as u64;
    for i in 0..writes {
        p.feed(C, b"a", 2 + i);
        assert!(p.core.sides[0].inp.mark_count() <= crate::input::MAX_MARKS);
    }
    assert_eq!(p.core.sides[0].inp.mark_count(), crate::input::MAX_MARKS);
    p.feed(C, b"\r\n\r\n", 10_000_000);
    p.feed(S, b"HTTP/1.1 204 No Content\r\n\r\n", 10_000_001);
    let mut txs = Vec::new();
    while let Some(ev) = p.next_event() {
        if let Event::Transaction(t) = ev {
            txs.push(t);
        }
    }
    assert_eq!(txs.len(), 1);
    let h = &txs[0].request.headers;
    let slow = h
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"x-slow"))
        .unwrap();
    assert_eq!(slow.1.len() as u64, writes);
    // The request starts at its first write's timestamp, whatever was capped after it.
    assert_eq!(txs[0].request.first_ns, 1);
    // Consumed: the marks went with the bytes.
    assert!(p.core.sides[0].inp.mark_count() <= 1);
}
