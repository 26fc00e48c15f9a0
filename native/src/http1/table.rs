//! Per-direction framing states of the HTTP/1 observer and the transition table.
//!
//! Every state change of a side goes through [`next_state`]; an input that is not in the
//! table for the current state is a bug in the parser (the test suite walks every pair,
//! from Rust and through `plaintap._core.http1_table()` from Python).

/// Framing state of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Discarding until a start line (mid-stream join, capture loss, server error).
    Hunt,
    /// At a message boundary or inside a header section.
    Idle,
    /// Content-Length body.
    BodyLength,
    /// Expecting a chunk-size line.
    ChunkSize,
    ChunkData,
    /// Expecting CRLF after chunk data.
    ChunkEnd,
    /// After the last chunk: trailer fields, then CRLF.
    Trailers,
    /// Response body delimited by the connection close.
    BodyEof,
    /// Client: waiting for the answer to Upgrade/CONNECT.
    Blocked,
    /// Protocol switched: bytes are counted, not parsed.
    Switched,
    /// Server: pairing lost for good, responses are discarded.
    Ignore,
    /// Client: a request was rejected (bad head or body framing); a server answers 400 and
    /// closes, so nothing after it is parsed.
    Rejected,
    Closed,
}

/// What happens to a side; the table says where each leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Sync,
    HeadNoBody,
    HeadLength,
    HeadChunked,
    HeadEof,
    HeadSwitch,
    Block,
    BodyDone,
    ChunkSizeLine,
    LastChunk,
    ChunkDataDone,
    ChunkEndLine,
    TrailersDone,
    Error,
    Reject,
    Unpaired,
    Overflow,
    GapKept,
    GapLost,
    Resume,
    Switch,
    PairingLost,
    Close,
}

pub const STATES: [State; 13] = [
    State::Hunt,
    State::Idle,
    State::BodyLength,
    State::ChunkSize,
    State::ChunkData,
    State::ChunkEnd,
    State::Trailers,
    State::BodyEof,
    State::Blocked,
    State::Switched,
    State::Ignore,
    State::Rejected,
    State::Closed,
];

pub const INPUTS: [Input; 23] = [
    Input::Sync,
    Input::HeadNoBody,
    Input::HeadLength,
    Input::HeadChunked,
    Input::HeadEof,
    Input::HeadSwitch,
    Input::Block,
    Input::BodyDone,
    Input::ChunkSizeLine,
    Input::LastChunk,
    Input::ChunkDataDone,
    Input::ChunkEndLine,
    Input::TrailersDone,
    Input::Error,
    Input::Reject,
    Input::Unpaired,
    Input::Overflow,
    Input::GapKept,
    Input::GapLost,
    Input::Resume,
    Input::Switch,
    Input::PairingLost,
    Input::Close,
];

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Hunt => "hunt",
            State::Idle => "idle",
            State::BodyLength => "body_length",
            State::ChunkSize => "chunk_size",
            State::ChunkData => "chunk_data",
            State::ChunkEnd => "chunk_end",
            State::Trailers => "trailers",
            State::BodyEof => "body_eof",
            State::Blocked => "blocked",
            State::Switched => "switched",
            State::Ignore => "ignore",
            State::Rejected => "rejected",
            State::Closed => "closed",
        }
    }
}

impl Input {
    pub fn name(self) -> &'static str {
        match self {
            Input::Sync => "sync",
            Input::HeadNoBody => "head_no_body",
            Input::HeadLength => "head_length",
            Input::HeadChunked => "head_chunked",
            Input::HeadEof => "head_eof",
            Input::HeadSwitch => "head_switch",
            Input::Block => "block",
            Input::BodyDone => "body_done",
            Input::ChunkSizeLine => "chunk_size",
            Input::LastChunk => "last_chunk",
            Input::ChunkDataDone => "chunk_data_done",
            Input::ChunkEndLine => "chunk_end",
            Input::TrailersDone => "trailers_done",
            Input::Error => "error",
            Input::Reject => "reject",
            Input::Unpaired => "unpaired",
            Input::Overflow => "overflow",
            Input::GapKept => "gap_kept",
            Input::GapLost => "gap_lost",
            Input::Resume => "resume",
            Input::Switch => "switch",
            Input::PairingLost => "pairing_lost",
            Input::Close => "close",
        }
    }
}

/// The next state, or None when `(state, input)` is not in the table.
pub fn next_state(state: State, input: Input) -> Option<State> {
    use Input as I;
    use State as S;
    let next = match (state, input) {
        // Close applies everywhere; a switch and giving up on pairing apply to every live
        // state that is not already terminal for parsing.
        (_, I::Close) => S::Closed,
        (S::Closed | S::Switched | S::Ignore | S::Rejected, I::Switch | I::PairingLost) => {
            return None
        }
        (_, I::Switch) => S::Switched,
        (_, I::PairingLost) => S::Ignore,

        (S::Hunt, I::Sync) => S::Idle,
        (S::Hunt, I::GapKept) => S::Hunt,
        (S::Hunt, I::Overflow) => S::Hunt,
        (S::Idle, I::HeadNoBody) => S::Idle,
        (S::Idle, I::HeadLength) => S::BodyLength,
        (S::Idle, I::HeadChunked) => S::ChunkSize,
        (S::Idle, I::HeadEof) => S::BodyEof,
        (S::Idle, I::HeadSwitch) => S::Switched,
        (S::Idle, I::Block) => S::Blocked,
        (S::Idle, I::Error) => S::Hunt,
        (S::Idle, I::Reject) => S::Rejected,
        (S::Idle, I::Unpaired) => S::Hunt,
        (S::Idle, I::Overflow) => S::Hunt,
        (S::Idle, I::GapLost) => S::Hunt,
        (S::BodyLength, I::BodyDone) => S::Idle,
        (S::BodyLength, I::GapKept) => S::BodyLength,
        (S::BodyLength, I::GapLost) => S::Hunt,
        (S::ChunkSize, I::ChunkSizeLine) => S::ChunkData,
        (S::ChunkSize, I::LastChunk) => S::Trailers,
        (S::ChunkSize, I::Error) => S::Hunt,
        (S::ChunkSize, I::Reject) => S::Rejected,
        (S::ChunkSize, I::GapLost) => S::Hunt,
        (S::ChunkData, I::ChunkDataDone) => S::ChunkEnd,
        (S::ChunkData, I::GapKept) => S::ChunkData,
        (S::ChunkData, I::GapLost) => S::Hunt,
        (S::ChunkEnd, I::ChunkEndLine) => S::ChunkSize,
        (S::ChunkEnd, I::Error) => S::Hunt,
        (S::ChunkEnd, I::Reject) => S::Rejected,
        (S::ChunkEnd, I::GapLost) => S::Hunt,
        (S::Trailers, I::TrailersDone) => S::Idle,
        (S::Trailers, I::Error) => S::Hunt,
        (S::Trailers, I::Reject) => S::Rejected,
        (S::Trailers, I::GapLost) => S::Hunt,
        (S::BodyEof, I::GapKept) => S::BodyEof,
        (S::Blocked, I::Resume) => S::Idle,
        (S::Blocked, I::Overflow) => S::Hunt,
        (S::Switched, I::GapKept) => S::Switched,
        (S::Ignore, I::GapKept) => S::Ignore,
        (S::Rejected, I::GapKept) => S::Rejected,
        _ => return None,
    };
    Some(next)
}

/// Every `(state, input) -> next` entry of the table, by name (for the Python table walk).
pub fn table() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for s in STATES {
        for i in INPUTS {
            if let Some(n) = next_state(s, i) {
                out.push((s.name(), i.name(), n.name()));
            }
        }
    }
    out
}
